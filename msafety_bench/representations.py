"""Pooled internal representations of prompts, read with forward hooks (no generation).

Three kinds per decoder layer, named as in ``models.adapters``:
- ``mlp_in``: the MLP input (output of the post-attention norm), d_model wide;
- ``neuron``: the input of down_proj, act(gate(x)) * up(x), d_ff wide;
- ``resid``: the residual stream after the layer, d_model wide.
Pooling ``last`` takes the last prompt token under the chat template (the position the answer is
generated from; with left padding it is the final position), ``mean`` averages the prompt's tokens.

A read is one forward pass: prompts sorted by token length (little padding), only the requested
layers hooked, the pass stopped after the deepest of them, and every pooled row copied into one
preallocated tensor (a view would keep the batch's whole activation tensor alive). ``ActivationCache``
keeps reads on disk, so a refit, a sweep, the random control and other editors read nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

KINDS = ("mlp_in", "neuron", "resid")
POOLINGS = ("last", "mean")
CACHE_FORMAT = "1"


class _StopForward(Exception):
    """Raised by a hook after the deepest requested layer: the rest of the model is not needed."""


def collect(loaded, prompts: list[str], layers, kinds=KINDS, pooling: str = "last", batch_size: int = 32,
            system_prompt: str | None = None, progress: bool = False, cache: "ActivationCache | None" = None,
            fingerprint: str | None = None) -> dict:
    """{kind: float32 tensor (n_prompts, n_layers, width)} on the CPU, rows in prompt order.

    With ``cache``, ``fingerprint`` must name the model's weights as they are now (edits included)."""
    from msafety_bench.generation import render_prompt

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers, kinds = [int(i) for i in layers], tuple(kinds)
    rendered = [render_prompt(loaded.tokenizer, p, system_prompt) for p in prompts]
    if cache is None:
        return _read(loaded, rendered, layers, kinds, pooling, batch_size, progress)
    if not fingerprint:
        raise ValueError("an activation cache needs the fingerprint of the model's current weights")
    request = CacheRequest(fingerprint, tokenizer_identity(loaded.tokenizer), [prompt_key(t) for t in rendered],
                           pooling, layers, kinds)
    found = cache.load(request)
    if found is not None:
        return found
    acts = _read(loaded, rendered, layers, kinds, pooling, batch_size, progress)
    cache.store(request, acts)
    return acts


def _read(loaded, rendered: list[str], layers: list[int], kinds: tuple, pooling: str, batch_size: int,
          progress: bool) -> dict:
    import torch
    from tqdm.auto import tqdm

    model, tok, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    n = len(rendered)
    out: dict = {kind: None for kind in kinds}  # allocated on first sight, when the width is known
    batch: dict = {}

    def keep(kind, j, t):
        if pooling == "last":
            pooled = t[:, -1, :]
        else:
            m = batch["mask"].to(torch.float32).unsqueeze(-1)
            pooled = (t.float() * m).sum(1) / m.sum(1)
        if out[kind] is None:
            out[kind] = torch.empty(n, len(layers), t.shape[-1], dtype=torch.float32)
        out[kind][batch["rows"], j] = pooled.detach().to("cpu", torch.float32)  # index assignment copies

    def hook(kind, j):
        def pre(module, args):
            keep(kind, j, args[0])

        def post(module, args, output):
            keep(kind, j, output[0] if isinstance(output, tuple) else output)

        return post if kind == "resid" else pre

    def stop(module, args, output):
        raise _StopForward

    handles = []
    try:
        for j, i in enumerate(layers):
            if "mlp_in" in kinds:
                handles.append(adapter.mlp(model, i).register_forward_pre_hook(hook("mlp_in", j)))
            if "neuron" in kinds:
                handles.append(adapter.down_proj(model, i).register_forward_pre_hook(hook("neuron", j)))
            if "resid" in kinds:
                handles.append(adapter.layer(model, i).register_forward_hook(hook("resid", j)))
        if layers:  # registered last, so it runs after the deepest layer's own hooks
            handles.append(adapter.layer(model, max(layers)).register_forward_hook(stop))
        lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in rendered]
        order = sorted(range(n), key=lengths.__getitem__)
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc="reading activations", disable=not progress,
                              unit="batch"):
                rows = order[start:start + batch_size]
                enc = tok([rendered[i] for i in rows], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(loaded.device)
                batch.update(rows=torch.tensor(rows), mask=enc["attention_mask"])
                try:
                    model(**enc, use_cache=False, logits_to_keep=1)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {kind: (t if t is not None else torch.empty(n, len(layers), 0)) for kind, t in out.items()}


# -- the cache on disk --------------------------------------------------------------------------------
def prompt_key(rendered: str) -> str:
    return hashlib.sha256(rendered.encode()).hexdigest()[:24]


def tokenizer_identity(tok) -> str:
    return f"{type(tok).__name__}:{len(tok)}:{tok.padding_side}"


class CacheRequest:
    """What a read depends on: weights, tokenizer, rendered prompts, pooling, layers, kinds."""

    def __init__(self, fingerprint: str, tokenizer: str, prompts: list[str], pooling: str, layers: list[int],
                 kinds: tuple):
        self.fingerprint, self.tokenizer, self.prompts = fingerprint, tokenizer, prompts
        self.pooling, self.layers, self.kinds = pooling, layers, kinds

    def file_name(self) -> str:
        payload = json.dumps([CACHE_FORMAT, self.fingerprint, self.tokenizer, self.prompts, self.pooling,
                              self.layers, list(self.kinds)])
        return f"{self.prefix()}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.safetensors"

    def prefix(self) -> str:
        """Shared by every entry of the same weights, tokenizer and pooling: where a superset may be."""
        ident = json.dumps([CACHE_FORMAT, self.fingerprint, self.tokenizer, self.pooling])
        return hashlib.sha256(ident.encode()).hexdigest()[:16]


class ActivationCache:
    """Pooled activations on disk, one safetensors file per read (tensor ``kind`` of shape
    (n_prompts, n_layers, width); prompts, layers and kinds in the header). A request is served from
    its own entry, else from any entry of the same weights, tokenizer and pooling that holds all its
    prompts, layers and kinds (so steering's English read comes out of sparse's full one)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def load(self, request: CacheRequest) -> dict | None:
        own = self.folder / request.file_name()
        candidates = [own] if own.is_file() else []
        candidates += sorted(p for p in self.folder.glob(f"{request.prefix()}-*.safetensors") if p != own)
        for path in candidates:
            found = self._load_from(path, request)
            if found is not None:
                return found
        return None

    @staticmethod
    def _load_from(path: Path, request: CacheRequest) -> dict | None:
        import torch
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if [meta.get(k) for k in ("format", "fingerprint", "tokenizer", "pooling")] != [
                        CACHE_FORMAT, request.fingerprint, request.tokenizer, request.pooling]:
                    return None
                row_of = {key: i for i, key in enumerate(json.loads(meta["prompts"]))}
                layer_of = {layer: j for j, layer in enumerate(json.loads(meta["layers"]))}
                if (not all(k in row_of for k in request.prompts) or not all(i in layer_of for i in request.layers)
                        or not set(request.kinds) <= set(json.loads(meta["kinds"]))):
                    return None
                rows = torch.tensor([row_of[k] for k in request.prompts], dtype=torch.long)
                everything = rows.tolist() == list(range(len(row_of))) and request.layers == list(layer_of)
                out = {}
                for kind in request.kinds:
                    if everything:
                        out[kind] = f.get_tensor(kind)
                    else:  # one layer at a time: never the whole stored tensor in memory
                        sl = f.get_slice(kind)
                        out[kind] = torch.stack([sl[:, layer_of[i]:layer_of[i] + 1, :][:, 0][rows]
                                                 for i in request.layers], dim=1)
                return out
        except (OSError, ValueError, KeyError, SafetensorError):
            return None  # unreadable or foreign file: read the activations again

    def store(self, request: CacheRequest, acts: dict) -> Path:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / request.file_name()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {"format": CACHE_FORMAT, "fingerprint": request.fingerprint, "tokenizer": request.tokenizer,
                "pooling": request.pooling, "layers": json.dumps(request.layers),
                "kinds": json.dumps(list(request.kinds)), "prompts": json.dumps(request.prompts)}
        try:
            save_file({kind: t.contiguous() for kind, t in acts.items()}, str(tmp), metadata=meta)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
