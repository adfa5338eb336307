"""Model organisms: small offline models built by the project's own editors to have a known property.

``smollm2-en-safe`` is SmolLM2-135M-Instruct taught to refuse harmful requests in English only (LoRA
via the ``sft`` editor: English harmful prompts -> English refusals, harmless prompts in every
Latin-script language -> the base model's own answers). It has the gap the product measures: safety in
English, little elsewhere. It is built on first use and cached as a merged safetensors folder under a
key of (base model, recipe, calibration data); the same recipe and seed give the same weights.

Importing this module is cheap (no torch), so model names resolve at plugin start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Organism:
    name: str
    base: str  # a model alias or folder
    editor: str
    editor_opts: tuple[str, ...]
    description: str
    recipe_version: int = 1  # bump when the build procedure changes in a way the options do not show


ORGANISMS = {
    "smollm2-en-safe": Organism(
        name="smollm2-en-safe",
        base="smollm2",
        editor="sft",
        editor_opts=("languages=en", "harmless_languages=latin", "harmless_per_language=48", "steps=200",
                     "rank=16", "batch_size=8", "max_length=96", "answer_tokens=64", "seed=0"),
        description="SmolLM2-135M-Instruct + English-only refusal LoRA (built on first use, ~20 min on 2 CPU cores)",
    ),
}


def _base_identity(base: str, cache_dir: Path) -> str:
    """A stamp of the base weights that needs no model load."""
    from msafety_bench.models import builtin, resolve_model

    spec = resolve_model(base)
    if spec.kind == "smollm2":
        return builtin.smollm2_folder(cache_dir).name
    if spec.kind == "tiny-qwen2":
        return f"tiny-qwen2-seed{builtin.TINY_QWEN2_SEED}"
    return spec.source


def _calibration_digest() -> str:
    from msafety_bench.data import load_msb_core

    rows = [(r.id, r.lang, r.label, r.prompt) for r in load_msb_core() if r.split == "calibration"]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def organism_key(organism: Organism, cache_dir: Path) -> str:
    """Everything the weights depend on (base, recipe, calibration data) and nothing they do not."""
    recipe = [organism.base, organism.editor, list(organism.editor_opts), organism.recipe_version]
    payload = json.dumps([recipe, _base_identity(organism.base, cache_dir), _calibration_digest()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def organism_folder(organism: Organism, cache_dir: Path, *, progress: bool = True, device: str = "auto") -> Path:
    """The organism's merged model folder, built first if the cache does not hold it."""
    folder = Path(cache_dir) / "models" / f"{organism.name}-{organism_key(organism, cache_dir)}"
    if (folder / "organism.json").is_file():
        return folder
    from msafety_bench.export import export_edited
    from msafety_bench.pipeline import BenchRun, RunOptions

    print(f"msafety-bench: building model organism {organism.name} once ({organism.description})",
          file=sys.stderr, flush=True)
    started = time.time()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    run = BenchRun(RunOptions(model=organism.base, editor=organism.editor, editor_opts=list(organism.editor_opts),
                              cache_dir=str(cache_dir), device=device, progress=progress))
    card = export_edited(run, tmp)
    card["organism"] = {**asdict(organism), "build_seconds": round(time.time() - started, 1)}
    (tmp / "organism.json").write_text(json.dumps(card, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder
