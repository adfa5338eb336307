"""``hf``: transformers ``generate`` in process, greedy, left-padded batches sorted by length."""

from __future__ import annotations

from dataclasses import asdict


def text_settings(settings) -> dict:
    """Settings that change the text produced; the batch size only changes speed. Shared by every
    engine that runs the weights itself (hf, vllm), so their cache keys agree."""
    fields = asdict(settings)
    fields.pop("batch_size")
    return fields


class HfEngine:
    name = "hf"

    def __init__(self, loaded, model_fingerprint: str):
        self.loaded = loaded
        self.model_fingerprint = model_fingerprint

    def render(self, prompt: str, system_prompt: str | None) -> str:
        from msafety_bench.generation import render_prompt

        return render_prompt(self.loaded.tokenizer, prompt, system_prompt)

    def cache_fields(self, settings) -> dict:
        return text_settings(settings)

    def batches(self, rendered: list[str], settings) -> list[list[str]]:
        tok = self.loaded.tokenizer
        ordered = sorted(rendered, key=lambda r: -len(tok(r, add_special_tokens=False).input_ids))
        return [ordered[i : i + settings.batch_size] for i in range(0, len(ordered), settings.batch_size)]

    def generate(self, rendered: list[str], settings) -> list[str]:
        import torch

        tok, model = self.loaded.tokenizer, self.loaded.model
        torch.manual_seed(settings.seed)
        # The chat template already holds any BOS token, so the tokenizer must not add one more.
        enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(self.loaded.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]

    def apply(self, edit):
        return edit.apply(self.loaded.model)

    def weights_restored(self) -> bool:
        from msafety_bench.models.fingerprint import model_fingerprint

        return model_fingerprint(self.loaded.model) == self.model_fingerprint

    def close(self) -> None:
        pass  # the model belongs to the run, which keeps using it

    def describe(self) -> dict:
        import transformers

        dtype = str(next(self.loaded.model.parameters()).dtype).replace("torch.", "")
        return {"name": self.name, "version": transformers.__version__, "device": self.loaded.device, "dtype": dtype}


def generate_responses(
    loaded,
    prompts: list[str],
    settings,
    cache,
    model_fp: str,
    editor_fp: str,
    progress: bool = True,
    stats=None,
) -> list[str]:
    """Answers for ``prompts`` (plain user messages), in order, from transformers in process."""
    from msafety_bench.generation import render_prompt

    rendered = [render_prompt(loaded.tokenizer, p, settings.system_prompt) for p in prompts]
    return generate_rendered(loaded, rendered, settings, cache, model_fp, editor_fp, progress, stats)


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
