"""Where msafety-bench keeps its caches (converted models, responses, edit artifacts)."""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$MSB_CACHE_DIR`` if set, else the XDG cache folder of the user."""
    if os.environ.get("MSB_CACHE_DIR"):
        return Path(os.environ["MSB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "msafety-bench"
