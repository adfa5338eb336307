"""Fingerprints of model weights.

- ``model_fingerprint(model)``: a hash of every weight as it is in memory now (blake2b over name,
  dtype, shape, bytes). Exact, but it reads every byte: about 140 GB for a 70B model.
- ``base_fingerprint(loaded, cache_dir)``: what the caches know an unedited model by. For a model
  loaded from a folder of safetensors files it is a hash of the folder's weight and config files'
  content hashes plus the loaded tensors' names, dtypes and shapes (so a float32 and a bfloat16 load
  of the same files differ); each file's content hash is cached on disk by (absolute path, size,
  mtime_ns), so a warm run reads no weight byte. Models that exist only in memory keep
  ``model_fingerprint``.
- ``tensor_digests(model, names)``: per-tensor hashes of just the tensors an edit touches, for the
  bit-exact revert check.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

# Files that make up a model: the weights and what decides how they are read and what the model is fed.
CONFIG_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
FILE_HASH_DIR = "file-hashes"
FORMAT = "files-v1"  # changes every fingerprint when the recipe below changes
# A file modified less than this many seconds ago is hashed but its hash is not cached: a rewrite of
# the same size within the file system's timestamp granularity would otherwise go unseen.
RACY_SECONDS = 2.0
_CHUNK = 1 << 24


def _tensor_bytes(tensor) -> bytes:
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_fingerprint(model) -> str:
    import torch

    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def tensor_digests(model, names=None) -> dict[str, str]:
    """blake2b of each named parameter or buffer (every state-dict tensor when ``names`` is None)."""
    import torch

    state = model.state_dict() if names is None else None
    if names is None:
        names = sorted(state)
    else:
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    digests = {}
    with torch.no_grad():
        for name in names:
            t = (state if state is not None else tensors)[name].detach()
            h = hashlib.blake2b(f"{t.dtype}|{tuple(t.shape)}|".encode(), digest_size=16)
            h.update(_tensor_bytes(t))
            digests[name] = h.hexdigest()
    return digests


def _hash_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_content_hash(path: str | Path, cache_dir: str | Path | None) -> str:
    """The content hash of a file, taken from ``<cache_dir>/file-hashes/`` when the file's absolute
    path, size and mtime_ns match what was recorded; otherwise computed (and recorded)."""
    from msafety_bench.safeio import atomic_write_text

    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = None
    if cache_dir is not None:
        entry = Path(cache_dir) / FILE_HASH_DIR / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
        try:
            recorded = json.loads(entry.read_text(encoding="utf-8"))
            if isinstance(recorded, dict) and {k: recorded.get(k) for k in key} == key \
                    and isinstance(recorded.get("sha256"), str):
                return recorded["sha256"]
        except (OSError, ValueError):
            pass  # missing or damaged: computed again and rewritten
    digest = _hash_file(path)
    after = path.stat()
    stable = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    if entry is not None and stable and time.time() - st.st_mtime_ns / 1e9 >= RACY_SECONDS:
        try:
            atomic_write_text(entry, json.dumps({**key, "sha256": digest}))
        except OSError:
            pass  # a read-only cache only costs the hash next time
    return digest


def model_files(folder: str | Path) -> list[Path] | None:
    """The files a folder-loaded model is made of, or None when the folder holds no safetensors
    weights (then only the in-memory hash knows the weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    weights = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not weights:
        return None
    return weights + [folder / name for name in CONFIG_FILES if (folder / name).is_file()]


def folder_fingerprint(model, folder: str | Path, cache_dir: str | Path | None) -> str | None:
    """The file-based fingerprint of ``model`` loaded from ``folder``; None when ``folder`` is not a
    safetensors model folder."""
    files = model_files(folder)
    if files is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(FORMAT.encode())
    for path in files:
        digest.update(f"|{path.name}={file_content_hash(path, cache_dir)}".encode())
    # What was loaded from the files: names, dtypes and shapes (no bytes), so a load in another dtype,
    # or one that drops or adds tensors, is another model.
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
    return digest.hexdigest()


def resolve_folder(source: str | None) -> Path | None:
    """The local folder of a model source: a folder as is; a hub id through the local hub cache
    (never the network); None otherwise."""
    if not source:
        return None
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not a hub id, or not in the local hub cache
        return None


def base_fingerprint(loaded, cache_dir: str | Path | None) -> str:
    """What caches and results know the unedited, just-loaded model by (see the module docstring)."""
    folder = resolve_folder(getattr(loaded, "folder", None))
    fp = folder_fingerprint(loaded.model, folder, cache_dir) if folder is not None else None
    return fp if fp is not None else model_fingerprint(loaded.model)
