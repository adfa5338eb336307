"""How the project writes files and stores addresses: never half a file, never outside the folder the
user named, never a credential.

Every file is written to a temporary file in the target's own folder and renamed over the target, so
a crash (or kill -9) leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from msafety_bench.errors import UsageError

_SECRET_QUERY_KEYS = re.compile(r"key|token|secret|password|passwd|sig|auth", re.IGNORECASE)


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    With ``overwrite=False`` an existing file is never replaced (FileExistsError), even when another
    process creates it at the same moment: the temporary file is hard-linked into place."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot write '{path}': '{folder}' is a file, not a folder") from None
    if path.is_dir():
        raise UsageError(f"cannot write '{path}': it is a folder; name a file")
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def child_path(folder: str | Path, name: str, suffix: str = "") -> Path:
    """``folder/name+suffix`` for a ``name`` taken from data (a run id, say), refused when it could
    point anywhere else: empty, ``.``/``..``, absolute, or holding a path separator or NUL."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or os.path.isabs(name) or (os.altsep and os.altsep in name))
    if bad:
        raise UsageError(f"refusing to write '{name}{suffix}': the name must be a plain file name inside "
                         f"'{folder}' (no '/', '\\', '..' or absolute path)")
    return Path(folder) / f"{name}{suffix}"


def redact_url(url: str | None) -> str | None:
    """The URL with any user name, password or secret-looking query value replaced by ``***``; scheme,
    host, port and path are kept so the endpoint stays recognisable."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
