"""``msafety-bench cache verify|clear``: check every entry of the cache folder, or remove what is rebuilt
on use (responses, edit artifacts, unedited utility scores; converted models only when asked)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

RESPONSES = "responses.sqlite"


def verify_cache(cache: Path) -> tuple[list[str], int]:
    """(one line per entry checked, number of damaged entries)."""
    lines, damaged = [], 0
    if not cache.is_dir():
        return [f"{cache}: no cache folder yet (nothing to check)"], 0
    db = cache / RESPONSES
    if db.is_file():
        problem, rows = _check_sqlite(db)
        damaged += problem is not None
        lines.append(f"damaged: {db} ({problem})" if problem else f"ok: {db} ({rows} answers)")
    edits = cache / "edits"
    for folder in sorted(edits.iterdir()) if edits.is_dir() else []:
        if ".damaged-" in folder.name:
            lines.append(f"set aside earlier: {folder} (removed by cache clear)")
            continue
        problem = _check_artifact(folder)
        damaged += problem is not None
        lines.append(f"damaged: {folder} ({problem})" if problem else f"ok: {folder}")
    utility = cache / "utility"
    for path in sorted(utility.glob("*.json")) if utility.is_dir() else []:
        try:
            ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            ok = False
        damaged += not ok
        lines.append(f"ok: {path}" if ok else f"damaged: {path} (not a JSON object; recomputed on use)")
    return lines, damaged


def _check_sqlite(db: Path) -> tuple[str | None, int]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            result = con.execute("PRAGMA integrity_check").fetchall()
            if result != [("ok",)]:
                return "; ".join(str(r[0]) for r in result[:3]), 0
            return None, con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc), 0


def _check_artifact(folder: Path) -> str | None:
    from msafety_bench.editing import DamagedArtifact, _load_artifact

    if not (folder / "edit.json").is_file():
        return "no edit.json: an interrupted fit, refitted on use"
    try:
        _load_artifact(folder)
    except DamagedArtifact as exc:
        return str(exc)
    return None


def clear_cache(cache: Path, models: bool = False) -> list[str]:
    """Remove the response database (with its journal files), edit artifacts and utility scores; with
    ``models`` also converted models and organisms. Returns one line per removed entry."""
    removed = []
    targets = [cache / name for name in (RESPONSES, RESPONSES + "-wal", RESPONSES + "-shm", "edits", "utility")]
    if models:
        targets.append(cache / "models")
    for path in targets:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(f"removed {path}")
    return removed or [f"{cache}: nothing to remove"]
