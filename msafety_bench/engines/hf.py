"""``hf``: transformers in process, greedy.

Uncached inputs are sorted by token length and cut into batches of similar length (a long prompt
does not pad short ones); each batch runs a greedy decoding loop over the model's forward pass with
a KV cache, and a row leaves the batch (its cache rows dropped) as soon as it has produced the EOS
token, so the batch shrinks instead of running every row until the longest answer ends. Per row
this computes what ``model.generate(do_sample=False)`` computes; ``tests/test_generation.py`` checks
the text against ``model.generate`` one prompt at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict

# A batch is cut where a prompt is shorter than this share of the batch's longest one: the rows'
# left padding is computed at every step, so mixing a 236-token prompt with 44-token ones costs
# several times the work (measured on SmolLM2, see the README's Performance section).
BUCKET_RATIO = 0.6


def text_settings(settings) -> dict:
    """Settings that change the text produced; the batch size only changes speed. Shared by every
    engine that runs the weights itself (hf, vllm), so their cache keys agree."""
    fields = asdict(settings)
    fields.pop("batch_size")
    return fields


def length_buckets(lengths: list[int], batch_size: int, ratio: float = BUCKET_RATIO) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into batches of at most ``batch_size`` whose
    shortest prompt is at least ``ratio`` times the longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] >= ratio * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def greedy_generate(model, input_ids, attention_mask, max_new_tokens: int, eos_token_id: int | None) -> list[list[int]]:
    """Greedy continuations of a left-padded batch; a row leaves the batch once it produced EOS (which
    is kept, as ``generate`` keeps it). Returns the new token ids per row."""
    import inspect

    import torch
    from transformers import DynamicCache

    # transformers 5 names the KV cache argument ``cache`` (``past_key_values`` is deprecated).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    n = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    rows = torch.arange(n, device=input_ids.device)  # original index of each row still in the batch
    cache = DynamicCache(config=model.config)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    step_ids, mask = input_ids, attention_mask
    with torch.no_grad():
        for step in range(max_new_tokens):
            logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{cache_arg: cache}).logits[:, -1, :]
            nxt = logits.argmax(-1)
            for r, t in zip(rows.tolist(), nxt.tolist()):
                out[r].append(t)
            if step == max_new_tokens - 1:
                break
            keep = nxt != eos_token_id if eos_token_id is not None else torch.ones_like(nxt, dtype=torch.bool)
            if not bool(keep.all()):
                if not bool(keep.any()):
                    break
                index = keep.nonzero().squeeze(-1)
                cache.batch_select_indices(index)
                rows, nxt, mask, positions = rows[index], nxt[index], mask[index], positions[index]
            step_ids = nxt.unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
    return out


class HfEngine:
    name = "hf"

    def __init__(self, loaded, model_fingerprint: str):
        self.loaded = loaded
        self.model_fingerprint = model_fingerprint
        self._restored = True

    def render(self, prompt: str, system_prompt: str | None) -> str:
        from msafety_bench.generation import render_prompt

        return render_prompt(self.loaded.tokenizer, prompt, system_prompt)

    def cache_fields(self, settings) -> dict:
        return text_settings(settings)

    def batches(self, rendered: list[str], settings) -> list[list[str]]:
        tok = self.loaded.tokenizer
        lengths = [len(tok(r, add_special_tokens=False).input_ids) for r in rendered]
        return [[rendered[i] for i in batch] for batch in length_buckets(lengths, settings.batch_size)]

    def generate(self, rendered: list[str], settings) -> list[str]:
        import torch

        tok, model = self.loaded.tokenizer, self.loaded.model
        torch.manual_seed(settings.seed)
        # The chat template already holds any BOS token, so the tokenizer must not add one more.
        enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(self.loaded.device)
        new = greedy_generate(model, enc["input_ids"], enc["attention_mask"], settings.max_new_tokens,
                              tok.eos_token_id)
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    @contextlib.contextmanager
    def apply(self, edit):
        """The edit on the in-process model. The revert check digests only what the edit writes (all
        weights when the edit does not say) before entering and after leaving, bit for bit, and
        counts the model's forward hooks (a hook edit must remove all it added)."""
        from msafety_bench.models.fingerprint import tensor_digests

        model = self.loaded.model
        names = edit.touched_parameters()
        before, hooks = tensor_digests(model, names), _hook_count(model)
        try:
            with edit.apply(model):
                yield self
        finally:
            self._restored = tensor_digests(model, names) == before and _hook_count(model) == hooks

    def weights_restored(self) -> bool:
        return self._restored

    def close(self) -> None:
        pass  # the model belongs to the run, which keeps using it

    def describe(self) -> dict:
        import transformers

        dtype = str(next(self.loaded.model.parameters()).dtype).replace("torch.", "")
        return {"name": self.name, "version": transformers.__version__, "device": self.loaded.device, "dtype": dtype,
                "attention": getattr(self.loaded.model.config, "_attn_implementation", None)}


def generate_responses(loaded, prompts: list[str], settings, *args, **kwargs) -> list[str]:
    """Answers for ``prompts`` (plain user messages), in order, from transformers in process; the
    other arguments are ``generate_rendered``'s."""
    from msafety_bench.generation import render_prompt

    rendered = [render_prompt(loaded.tokenizer, p, settings.system_prompt) for p in prompts]
    return generate_rendered(loaded, rendered, settings, *args, **kwargs)


def generate_rendered(
    loaded,
    rendered: list[str],
    settings,
    cache,
    model_fp: str,
    editor_fp: str,
    progress: bool = True,
    stats=None,
    desc: str = "generating",
) -> list[str]:
    """Continuations of already-rendered model inputs (model judges render their own templates)."""
    from msafety_bench.engines import generate_cached

    return generate_cached(HfEngine(loaded, model_fp), rendered, settings, cache, editor_fp, progress=progress,
                           stats=stats, desc=desc)
