"""Methods mixed into every vLLM worker (``worker_extension_cls``), called through ``collective_rpc``."""

from __future__ import annotations

import hashlib


def pack(tensor) -> tuple[str, list[int], bytes]:
    """A tensor as (dtype name, shape, raw bytes), bit for bit (bfloat16 included)."""
    import torch

    t = tensor.detach().cpu().contiguous()
    return str(t.dtype).removeprefix("torch."), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()


def unpack(dtype: str, shape: list[int], data: bytes):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape)


class WeightPush:
    def msb_packed_modules(self) -> dict[str, list[str]]:
        """The model's fused modules, e.g. gate_up_proj: [gate_proj, up_proj]."""
        return dict(getattr(self.model_runner.get_model(), "packed_modules_mapping", {}) or {})

    def msb_threads(self) -> int:
        """The torch threads this worker computes with (the engine's CPU binding, seen from inside)."""
        import torch

        return torch.get_num_threads()

    def msb_load_weights(self, weights: list) -> None:
        """Load (Hugging Face name, dtype, shape, bytes) items with vLLM's in-place reload: the model's
        own loader shards and fuses them, and the platform's weight processing (e.g. the CPU's packed
        GEMM weights) runs again for the layers written."""
        tensors = [(name, unpack(dtype, shape, data)) for name, dtype, shape, data in weights]
        self.model_runner.reload_weights(weights_iterator=iter(tensors))

    def msb_digests(self, hf_names: list[str]) -> dict[str, str]:
        """blake2b of the weight each named tensor's engine module computes with, read back through
        the module itself: a linear layer whose weight the platform packed into a kernel is applied to
        the identity matrix (exact: every output is one product), otherwise its parameter is read."""
        import torch

        model = self.model_runner.get_model()
        fused = {part: whole for whole, parts in self.msb_packed_modules().items() for part in parts}
        digests = {}
        for hf_name in hf_names:
            module_path, _, kind = hf_name.rpartition(".")
            parent, _, leaf = module_path.rpartition(".")
            engine_path = f"{parent}.{fused.get(leaf, leaf)}" if parent else fused.get(leaf, leaf)
            if engine_path in digests:
                continue
            module = model.get_submodule(engine_path)
            tensor = getattr(module, kind)
            if kind == "weight" and hasattr(module, "cpu_linear"):
                width = getattr(module, "input_size_per_partition", None) or tensor.shape[1]
                eye = torch.eye(width, dtype=module.params_dtype if hasattr(module, "params_dtype") else tensor.dtype)
                with torch.no_grad():
                    tensor = module.cpu_linear(eye, module.weight, None).T
            t = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digests[engine_path + "." + kind] = hashlib.blake2b(t.numpy().tobytes(), digest_size=16).hexdigest()
        return digests
