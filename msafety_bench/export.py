"""Write an edited model as a plain transformers folder (safetensors) plus an ``editor.json`` card.

Used by ``msafety-bench export`` and by the model organisms, which are exported edits of a base model.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def export_edited(run, out: Path) -> dict:
    """Fit (or load) the run's edit, merge it into the loaded weights and save; returns the card."""
    from msafety_bench import __version__
    from msafety_bench.models.fingerprint import model_fingerprint

    loaded = run.load()
    edit = run.fit_edit()
    edit.merge_into(loaded.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    card = {"msafety_bench": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": {"name": run.options.model, "source": loaded.spec.source,
                           "fingerprint": run.base_fingerprint},
            "editor": edit.describe(), "merged_fingerprint": model_fingerprint(loaded.model)}
    (out / "editor.json").write_text(json.dumps(card, indent=1, default=str))
    return card
