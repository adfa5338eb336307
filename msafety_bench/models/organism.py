"""Model organisms: small offline models built by the project's own editors to have a known property.

``smollm2-en-safe`` is SmolLM2-135M-Instruct taught to refuse harmful requests in English only (LoRA
via the ``sft`` editor: English harmful prompts -> English refusals, harmless prompts in every
Latin-script language -> the base model's own answers). It has the gap the product measures: safety in
English, little elsewhere.

The LoRA adapter ships with the package (``data/organisms/<name>/``: factors in float16 plus
``recipe.json`` with the recipe's digest), written by ``msafety-bench organism build``
(``msafety_bench.organisms``, which runs the pipeline). Here an organism alias only becomes a model
folder: the base weights plus the merged adapter, saved once under ``<cache>/models/`` (seconds).

Importing this module is cheap (no torch), so model names resolve at plugin start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from msafety_bench.errors import UsageError

SHIPPED_ADAPTERS = Path(__file__).resolve().parents[1] / "data" / "organisms"
ADAPTER_FILE, RECIPE_FILE = "adapter.safetensors", "recipe.json"


@dataclass(frozen=True)
class Organism:
    name: str
    base: str  # a model alias or folder
    editor: str
    editor_opts: tuple[str, ...]
    description: str
    recipe_version: int = 1  # bump when the build procedure changes in a way the options do not show
    adapter_dir: Path | None = None  # None: the adapter shipped with the package

    @property
    def adapter_folder(self) -> Path:
        return Path(self.adapter_dir) if self.adapter_dir else SHIPPED_ADAPTERS / self.name


ORGANISMS = {
    "smollm2-en-safe": Organism(
        name="smollm2-en-safe",
        base="smollm2",
        editor="sft",
        editor_opts=("languages=en", "harmless_languages=latin", "harmless_per_language=48", "steps=200",
                     "rank=16", "batch_size=8", "max_length=96", "answer_tokens=64", "seed=0"),
        description="SmolLM2-135M-Instruct + English-only refusal LoRA (shipped adapter, merged on first use)",
    ),
}


def _base_identity(base: str) -> str:
    """A stamp of the base weights that needs no model load (and no conversion)."""
    from msafety_bench.models import builtin, resolve_model

    spec = resolve_model(base)
    if spec.kind == "smollm2":
        return builtin.smollm2_folder_name()
    if spec.kind == "tiny-qwen2":
        return f"tiny-qwen2-seed{builtin.TINY_QWEN2_SEED}"
    return spec.source


def _calibration_digest() -> str:
    from msafety_bench.data import load_msb_core

    rows = [(r.id, r.lang, r.label, r.prompt) for r in load_msb_core() if r.split == "calibration"]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def recipe_digest(organism: Organism) -> str:
    """Everything the adapter depends on (base, recipe, calibration data) and nothing it does not."""
    recipe = [organism.base, organism.editor, list(organism.editor_opts), organism.recipe_version]
    payload = json.dumps([recipe, _base_identity(organism.base), _calibration_digest()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def read_recipe(organism: Organism) -> dict:
    """The adapter's recipe card, checked against the recipe as it is now."""
    folder = organism.adapter_folder
    card_path, adapter = folder / RECIPE_FILE, folder / ADAPTER_FILE
    if not (card_path.is_file() and adapter.is_file()):
        raise UsageError(f"organism {organism.name} has no adapter in {folder}: build it with "
                         f"`msafety-bench organism build {organism.name}` (about 20 min on 2 CPU cores)")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    now = recipe_digest(organism)
    if card.get("recipe_digest") != now:
        raise UsageError(f"the adapter of organism {organism.name} was built from another recipe or calibration set "
                         f"(digest {card.get('recipe_digest')}, now {now}): rebuild it with "
                         f"`msafety-bench organism build {organism.name}`")
    return card


def merge_lora(model, adapter_path: Path, scaling: float) -> None:
    """W += scaling * B @ A for every module of the adapter file (tensors ``A::<module>``, ``B::<module>``)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_path))
    with torch.no_grad():
        for key in sorted(k for k in tensors if k.startswith("A::")):
            name = key[3:]
            a, b = tensors[key].double(), tensors[f"B::{name}"].double()
            weight = model.get_submodule(name).weight
            weight += ((b @ a) * scaling).to(device=weight.device, dtype=weight.dtype)


def organism_folder(organism: Organism, cache_dir: Path) -> Path:
    """The organism as a plain model folder: base + merged adapter, written once into the cache."""
    from msafety_bench.models import load_model
    from msafety_bench.models.fingerprint import model_fingerprint

    card = read_recipe(organism)
    adapter = organism.adapter_folder / ADAPTER_FILE
    adapter_digest = hashlib.sha256(adapter.read_bytes()).hexdigest()[:8]
    folder = Path(cache_dir) / "models" / f"{organism.name}-{card['recipe_digest']}-{adapter_digest}"
    if (folder / "organism.json").is_file():
        return folder
    base = load_model(organism.base, cache_dir=cache_dir, device="cpu", dtype="float32")
    base_fingerprint = model_fingerprint(base.model)
    merge_lora(base.model, adapter, card["scaling"])
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    base.model.save_pretrained(tmp)
    base.tokenizer.save_pretrained(tmp)
    merged = {"organism": card, "adapter_sha256_8": adapter_digest, "base_fingerprint": base_fingerprint,
              "merged_fingerprint": model_fingerprint(base.model)}
    (tmp / "organism.json").write_text(json.dumps(merged, indent=1), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder
