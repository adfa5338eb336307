"""Pooled internal representations of prompts, read with forward hooks (no generation).

Three kinds per decoder layer, named as in ``models.adapters``:
- ``mlp_in``: the MLP input (output of the post-attention norm), d_model wide;
- ``neuron``: the input of down_proj, act(gate(x)) * up(x), d_ff wide;
- ``resid``: the residual stream after the layer, d_model wide.
Pooling ``last`` takes the last prompt token under the chat template (the position the answer is
generated from; with left padding it is the final position), ``mean`` averages the prompt's tokens.
"""

from __future__ import annotations

KINDS = ("mlp_in", "neuron", "resid")
POOLINGS = ("last", "mean")


def collect(loaded, prompts: list[str], layers: list[int], kinds=KINDS, pooling: str = "last",
            batch_size: int = 32, system_prompt: str | None = None, progress: bool = False) -> dict:
    """{kind: float32 tensor (n_prompts, n_layers, width)} on the CPU, rows in prompt order."""
    import torch
    from tqdm.auto import tqdm

    from msafety_bench.generation import render_prompt

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model, tok, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    out = {kind: [] for kind in kinds}
    current: dict = {}
    mask_box: list = []

    def pool(t):
        t = t.float()
        if pooling == "last":
            return t[:, -1, :]
        m = mask_box[0].to(t.dtype).unsqueeze(-1)
        return (t * m).sum(1) / m.sum(1)

    def grab(kind, i):
        def pre(module, args):
            current[(kind, i)] = pool(args[0]).cpu()

        def post(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            current[(kind, i)] = pool(hidden).cpu()

        return post if kind == "resid" else pre

    handles = []
    for i in layers:
        if "mlp_in" in kinds:
            handles.append(adapter.mlp(model, i).register_forward_pre_hook(grab("mlp_in", i)))
        if "neuron" in kinds:
            handles.append(adapter.down_proj(model, i).register_forward_pre_hook(grab("neuron", i)))
        if "resid" in kinds:
            handles.append(adapter.layer(model, i).register_forward_hook(grab("resid", i)))
    rendered = [render_prompt(tok, p, system_prompt) for p in prompts]
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(rendered), batch_size), desc="reading activations",
                              disable=not progress, unit="batch"):
                enc = tok(rendered[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(loaded.device)
                mask_box[:] = [enc["attention_mask"]]
                current.clear()
                model(**enc, use_cache=False, logits_to_keep=1)  # only hidden states are needed
                for kind in kinds:
                    out[kind].append(torch.stack([current[(kind, i)] for i in layers], dim=1))
    finally:
        for h in handles:
            h.remove()
    return {kind: torch.cat(chunks) for kind, chunks in out.items()}
