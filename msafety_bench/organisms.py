"""Building a model organism's adapter: a use of the pipeline, so it lives above it.

``build_adapter`` fits the organism's recipe (the ``sft`` editor on the base model, calibration split)
and writes the LoRA factors in float16 with a ``recipe.json`` beside them into the organism's adapter
folder (the package's own, or another one). The model folder is then the base with that adapter
merged (``models.organism.organism_folder``), so a fresh machine gets the organism in seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from msafety_bench.errors import UsageError
from msafety_bench.models.organism import ADAPTER_FILE, RECIPE_FILE, Organism, recipe_digest


def build_adapter(organism: Organism, cache_dir: Path, *, device: str = "auto", progress: bool = True) -> dict:
    """Fit the recipe and write ``adapter.safetensors`` + ``recipe.json``; returns the recipe card."""
    from safetensors.torch import save_file

    from msafety_bench import __version__
    from msafety_bench.pipeline import BenchRun, RunOptions

    if organism.editor != "sft":
        raise UsageError(f"organism {organism.name}: only sft (LoRA) recipes ship as adapters, not '{organism.editor}'")
    started = time.time()
    run = BenchRun(RunOptions(model=organism.base, editor=organism.editor, editor_opts=list(organism.editor_opts),
                              cache_dir=str(cache_dir), device=device, progress=progress))
    run.load()
    edit = run.fit_edit()
    tensors = {}
    for name, (a, b) in sorted(edit.factors.items()):
        tensors[f"A::{name}"], tensors[f"B::{name}"] = a.half().contiguous(), b.half().contiguous()
    folder = organism.adapter_folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{ADAPTER_FILE}.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    tmp.replace(folder / ADAPTER_FILE)
    card = {"organism": organism.name, "recipe": {k: v for k, v in asdict(organism).items() if k != "adapter_dir"},
            "recipe_digest": recipe_digest(organism), "scaling": edit.scaling, "dtype": "float16",
            "base_fingerprint": run.base_fingerprint, "fit": edit.info, "msafety_bench": __version__,
            "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.time() - started, 1)}
    tmp = folder / f".{RECIPE_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(folder / RECIPE_FILE)
    return card
