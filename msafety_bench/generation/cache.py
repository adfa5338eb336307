"""SQLite response cache: one row per (model, editor, rendered prompt, generation settings).

Rows are committed batch by batch, so an interrupted run resumes where it stopped and a rerun with a
warm cache makes no model calls. ``path=None`` keeps the cache in memory (``--no-cache``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path

from msafety_bench.errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model_fingerprint TEXT NOT NULL,
    editor_fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model_fp: str, editor_fp: str, rendered_prompt: str, settings: dict) -> str:
    payload = json.dumps([model_fp, editor_fp, rendered_prompt, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard():
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=60)
            if self.path:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            self._db.commit()

    @contextlib.contextmanager
    def _guard(self):
        """A damaged database file (truncated, overwritten pages) becomes one UsageError naming the
        file and the fix; a busy one (another run writing) is left to SQLite's own wait."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise damaged_cache_error(self.path, exc) from None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._guard():
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk)
                found.update(rows.fetchall())
        return found

    def put_many(self, rows: list[tuple[str, str, str, dict, str, str]]) -> None:
        """Store (key, model_fp, editor_fp, settings, prompt, response) rows and commit them at once."""
        now = time.time()
        with self._guard():
            self._db.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, m, e, json.dumps(s, sort_keys=True), p, r, now) for k, m, e, s, p, r in rows],
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._guard():
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def damaged_cache_error(path: Path | None, exc: Exception) -> UsageError:
    folder = path.parent if path else "."
    return UsageError(f"response cache '{path}' is damaged ({exc}): `msafety-bench cache verify --cache-dir "
                      f"{folder}` shows what is wrong, `msafety-bench cache clear --cache-dir {folder}` removes it "
                      "(answers are then generated again)")
