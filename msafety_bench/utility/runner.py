"""Run lm-eval tasks on the in-memory model and measure drift against the unedited weights.

Both take the fitted edit and switch it on and off themselves: the unedited model is the same
object with the edit's context left, so no second copy of the model is ever held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path


def _main_metric(entry: dict) -> tuple[str, float]:
    for key, value in entry.items():
        if "," in key and not key.split(",")[0].endswith("_stderr") and isinstance(value, (int, float)):
            return key, float(value)
    raise ValueError(f"no metric in lm-eval result {sorted(entry)}")


def task_manager(tasks: list[str], include_path: Path | None):
    """lm-eval's task index for ``tasks``: the local folder alone when it holds them all (indexing
    lm-eval's thousands of built-in configs takes ~5 s a time on 2 cores), else the built-ins too."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def run_lm_eval(loaded, tasks: list[str], limit: int | None, include_path: Path | None,
                batch_size: int = 16, seed: int = 0) -> dict[str, dict]:
    """{task: {"metric", "score", "n"}} from one ``lm_eval.simple_evaluate`` call."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=loaded.device)
    manager = task_manager(tasks, include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        from msafety_bench.errors import UsageError

        raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}: use lm-eval task or group names, "
                         "or msb_arith_<lang> / msb_mc_<lang>")
    out = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, random_seed=seed,
                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                          apply_chat_template=bool(getattr(loaded.tokenizer, "chat_template", None)),
                          log_samples=False, verbosity="ERROR")
    scores = {}
    for task in tasks:
        entry = out["results"].get(task) or out.get("groups", {}).get(task)
        metric, score = _main_metric(entry)
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        scores[task] = {"metric": metric, "score": score, "n": n}
    return scores


def cached_base_scores(cache_dir: Path | None, base_fp: str, tasks: list[str], limit, compute,
                       files: dict[str, str] | None = None) -> dict:
    """Scores of the unedited model, kept per (base fingerprint, task, limit, and the content of a
    task's local data file) so reruns skip them."""
    from msafety_bench.safeio import atomic_write_text, child_path

    digests = {t: hashlib.sha256(Path(f).read_bytes()).hexdigest() for t, f in (files or {}).items()}

    def path(task):
        parts = [base_fp, task, limit] + ([digests[task]] if task in digests else [])
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
        return child_path(Path(cache_dir) / "utility", f"{task}-{key}", ".json") if cache_dir else None

    def cached(task):  # a damaged entry counts as missing and is computed (and written) again
        try:
            return json.loads(path(task).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    found = {t: cached(t) for t in tasks if path(t) and path(t).is_file()}
    found = {t: v for t, v in found.items() if isinstance(v, dict)}
    missing = [t for t in tasks if t not in found]
    if missing:
        fresh = compute(missing)
        for task, value in fresh.items():
            if path(task):
                atomic_write_text(path(task), json.dumps(value))
        found.update(fresh)
    return {t: found[t] for t in tasks}


def drift(loaded, edit, texts: dict[str, list[str]], batch_size: int = 16) -> dict[str, dict]:
    """Per language: mean next-token KL(unedited || edited) in nats, and the perplexity ratio."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "right"
    results = {}
    try:
        for lang, items in texts.items():
            kl_sum, nll_base, nll_edit, count = 0.0, 0.0, 0.0, 0
            for start in range(0, len(items), batch_size):
                enc = tok(items[start:start + batch_size], return_tensors="pt", padding=True).to(loaded.device)
                with torch.no_grad():
                    base = torch.log_softmax(model(**enc).logits.float()[:, :-1], -1)
                    if edit.fingerprint == "none":
                        edited = base  # the identity edit: one forward pass is enough
                    else:
                        with edit.apply(model):
                            edited = torch.log_softmax(model(**enc).logits.float()[:, :-1], -1)
                valid = enc["attention_mask"][:, 1:].bool()
                nxt = enc["input_ids"][:, 1:].unsqueeze(-1)
                kl = (base.exp() * (base - edited)).sum(-1)
                kl_sum += float(kl[valid].double().sum())
                nll_base -= float(base.gather(-1, nxt).squeeze(-1)[valid].double().sum())
                nll_edit -= float(edited.gather(-1, nxt).squeeze(-1)[valid].double().sum())
                count += int(valid.sum())
            ppl_base, ppl_edit = math.exp(nll_base / count), math.exp(nll_edit / count)
            results[lang] = {"kl": kl_sum / count, "ppl_base": ppl_base, "ppl_edited": ppl_edit,
                             "ppl_ratio": ppl_edit / ppl_base, "tokens": count, "texts": len(items)}
    finally:
        tok.padding_side = old_side
    return results
