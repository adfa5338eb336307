"""``vllm``: vLLM's offline ``LLM`` engine in this process, all uncached prompts in one ``generate`` call.

Edits run inside the engine: the edit's weight form (full edited matrices by Hugging Face name, plus
the unedited parts of the same fused module) is pushed into every worker through ``collective_rpc``
and vLLM's in-place reload, whose model loader shards and fuses them (gate/up, q/k/v); leaving the
block pushes the original tensors back. The touched modules' weights are read back from the engine
and digested before the edit; the edit must change them and the revert must give them back bit for
bit, which is this backend's version of the fingerprint check. The transformers copy of the model (``loaded``) gives the tokenizer, the
fingerprint, the original tensors and the editors' fitting.
"""

from __future__ import annotations

import contextlib
import os

from msafety_bench.engines.hf import text_settings
from msafety_bench.errors import UsageError

WORKER_EXTENSION = "msafety_bench.engines.vllm_worker.WeightPush"


class VllmEngine:
    name = "vllm"

    def __init__(self, loaded, model_fingerprint: str, options: dict | None = None, seed: int = 0):
        if loaded.folder is None:
            raise UsageError(f"--backend vllm loads a model folder or hub id; '{loaded.spec.name}' exists only in "
                             "memory: use --backend hf")
        try:
            import vllm
        except ImportError:
            raise UsageError("--backend vllm needs vLLM: `make vllm` installs its CPU build, on GPUs "
                             "pip install 'msafety-bench[vllm]'") from None
        self.loaded = loaded
        self.model_fingerprint = model_fingerprint
        dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
        # The engine computes in the dtype the originals have, so pushed tensors need no cast.
        self.options = {"dtype": dtype, **(options or {})}
        self.cpu_bind = _bind_all_cpus(self.options)
        try:
            self.llm = vllm.LLM(model=loaded.folder, tokenizer=loaded.folder, seed=seed,
                                worker_extension_cls=WORKER_EXTENSION, **self.options)
        except TypeError as exc:  # an unknown --engine-opt
            raise UsageError(f"vLLM rejected an --engine-opt: {exc} (see vllm.EngineArgs for the names)") from None
        self.version = vllm.__version__
        self._restored = True
        self._packed = None  # the model's fused modules, asked from the engine once

    def render(self, prompt: str, system_prompt: str | None) -> str:
        from msafety_bench.generation import render_prompt

        return render_prompt(self.loaded.tokenizer, prompt, system_prompt)

    def cache_fields(self, settings) -> dict:
        return text_settings(settings)

    def batches(self, rendered: list[str], settings) -> list[list[str]]:
        return [rendered]  # the engine schedules and batches itself

    def generate(self, rendered: list[str], settings) -> list[str]:
        from vllm import SamplingParams

        tok = self.loaded.tokenizer
        # Token ids, not text: the chat template already holds any BOS token, as in the hf backend.
        prompts = [{"prompt_token_ids": tok(r, add_special_tokens=False).input_ids} for r in rendered]
        params = SamplingParams(temperature=0, max_tokens=settings.max_new_tokens, seed=settings.seed,
                                stop_token_ids=[tok.eos_token_id])
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [tok.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() for o in outputs]

    def _push(self, weights: list) -> None:
        """Load (HF name, tensor) pairs into every worker. Tensors travel as (dtype, shape, raw bytes):
        the engine's message encoding passes bytes through unchanged but not a tensor nested in a list."""
        from msafety_bench.engines.vllm_worker import pack

        self.llm.collective_rpc("msb_load_weights", args=([(n, *pack(t)) for n, t in weights],))

    def _digests(self, names: list[str]) -> list[dict]:
        return self.llm.collective_rpc("msb_digests", args=(names,))

    def _with_fused_siblings(self, names, params: dict) -> list[str]:
        """The edited names plus the unedited parts the engine fuses with them (an edited gate_proj
        brings its up_proj): vLLM reloads a fused layer only when all its parts arrive."""
        if self._packed is None:
            self._packed = self.llm.collective_rpc("msb_packed_modules")[0]
        groups = [parts for parts in self._packed.values()]
        out = list(names)
        for name in names:
            module_path, _, kind = name.rpartition(".")
            parent, _, leaf = module_path.rpartition(".")
            for parts in groups:
                if leaf in parts:
                    out += [f"{parent}.{p}.{kind}" for p in parts if f"{parent}.{p}.{kind}" in params]
        return list(dict.fromkeys(out))

    @contextlib.contextmanager
    def apply(self, edit):
        params = dict(self.loaded.model.named_parameters())
        edited = edit.weight_form(lambda name: params[name])  # a hook edit stops here with one line
        if not edited:
            yield self
            return
        names = self._with_fused_siblings(list(edited), params)
        originals = [(name, params[name]) for name in names]
        before = self._digests(names)
        try:
            self._push([(name, edited.get(name, params[name])) for name in names])
            if self._digests(names) == before:
                raise RuntimeError(f"editor {edit.editor}: pushing the edit left vLLM's weights unchanged")
            yield self
        finally:
            self._push(originals)
            self._restored = self._digests(names) == before

    def weights_restored(self) -> bool:
        return self._restored

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit, when logging has gone."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def describe(self) -> dict:
        described = {"name": self.name, "version": self.version, "options": self.options}
        if self.cpu_bind:
            described["cpu_threads_bind"] = self.cpu_bind
        return described


def _bind_all_cpus(options: dict) -> str | None:
    """On a CPU build with one worker, let that worker compute on every core this process may use.

    vLLM's CPU default keeps one core per worker for its scheduler, so on a small machine the model
    runs on half of it (measured on 2 cores: 81 tok/s by default, 125 with both cores bound). A
    ``VLLM_CPU_OMP_THREADS_BIND`` the user set is left alone, and several workers keep vLLM's own plan.
    Returns the binding set here, for the results file, or None."""
    from vllm.platforms import current_platform

    workers = 1
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        workers *= int(options.get(key, 1))
    if not current_platform.is_cpu() or workers != 1:
        return None
    binding = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    if os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", binding) != binding:
        return None  # the user's own binding
    return binding
