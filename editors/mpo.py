"""``mpo``: Multilingual reward-gap Preference Optimization (Zhao et al., ACL 2025, arXiv 2505.16869),
the baseline the sparse edit is compared against in its paper. Written from the paper's formulas.

Objective. The reward gap of a (prompt, chosen, rejected) triple under a model is the mean per-token
log-probability of the chosen answer minus that of the rejected one. A LoRA adapter is trained so that
``beta`` times the policy's gap on a target-language triple matches the frozen reference's gap on the
parallel English triple (squared difference, mean over the batch), while the English representation
stays where it was: the mean over tokens of the last-layer hidden state of the English prompt, policy
against reference (mean squared error). Loss = gap term + retain term. The reference is the same model
with the adapter switched off (no second copy in memory); its values never change, so they are computed
once before training.

Data: the harmful prompts of msb-core's calibration split, parallel across its 13 languages (English is
the source and never a target).

- chosen: a refusal in the prompt's language (``data/refusals.yaml``, shared with ``sft``);
- rejected: the unedited model's own greedy answer to that very prompt when the ``refusal`` judge reads
  it as compliance (verdict ``unsafe``), otherwise a short compliant answer from ``data/compliant.yaml``
  (written for this project, English: a willing opening and a generic outline without harmful content).

Why: the gap should be measured against what the model itself writes when it complies (on-policy text,
in whatever language it really answers), which is what the edit has to make less likely. A model that
refuses (the organism in English) or writes no usable text in a language (echoes, loops; the judge's
``invalid``) has no such answer, and an echo as "rejected" would teach it to avoid echoes instead of
compliance; there the written answer stands in. It stays English in every language because nothing
offline translates it. How many of each were used, per language, is recorded in the edit's info.

The artifact is the LoRA factors (``sft.LoraEdit``): applied as forward hooks (leaving the block is
exact), merged into the weights by export.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache

from msafety_bench.editing import Editor, EditorConfig
from msafety_bench.editors.sft import (LoraEdit, batch_indices, encode_answer, lora_factors, lora_model, pad_right,
                                       refusal_for)
from msafety_bench.errors import UsageError

SOURCE = "en"


@dataclass(frozen=True)
class MpoConfig(EditorConfig):
    languages: str = "all"  # target languages: all, latin, tiers or codes (English, the source, is left out)
    beta: float = 1.0  # policy gap * beta is pulled onto the reference's English gap
    steps: int = 100
    rank: int = 16
    alpha: float = 32.0
    lr: float = 2e-4
    batch_size: int = 8  # prompts per step; each gives a target triple and its English triple
    max_length: int = 160  # tokens of prompt + answer
    harmful_per_language: int = 48  # harmful calibration prompts per target language (msb-core has 48)
    answer_tokens: int = 48  # length of the model's own answers read as rejected candidates
    target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    seed: int = 0

    def __post_init__(self):
        from msafety_bench.data import check_language_spec

        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.harmful_per_language < 1:
            raise ValueError("steps, rank, batch_size and harmful_per_language must be >= 1")
        if self.lr <= 0 or self.answer_tokens < 1 or self.max_length < 8:
            raise ValueError("lr must be > 0, answer_tokens >= 1 and max_length >= 8")
        check_language_spec(self.languages)


@dataclass(frozen=True)
class Triple:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Pair:
    """A target-language triple and the parallel English triple of the same prompt id."""

    lang: str
    target: Triple
    source: Triple


@lru_cache(maxsize=1)
def compliant_answers() -> list[str]:
    import yaml

    from msafety_bench.data import MSB_CORE_DIR

    return yaml.safe_load((MSB_CORE_DIR.parent / "compliant.yaml").read_text(encoding="utf-8"))["en"]


def compliant_for(record) -> str:
    """A written compliant answer, stable per prompt id (the same one in every language)."""
    options = compliant_answers()
    return options[zlib.crc32(record.id.encode()) % len(options)]


# -- the objective -------------------------------------------------------------------------------------

def _decode(lm, input_ids, mask):
    """Last-layer hidden states (after the final norm, what the LM head reads)."""
    return lm.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state


def answer_logprobs(lm, rows, pad_id, device):
    """Mean per-token log-probability of each row's answer (the tokens whose label is not -100) given
    everything before it. Logits are formed only at answer positions (a 150k vocabulary times every
    prompt position would not fit)."""
    import torch

    input_ids, mask, labels = pad_right(rows, pad_id, device)
    hidden = _decode(lm, input_ids, mask)
    targets = labels[:, 1:]
    answer = targets != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][answer]).float()
    token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[answer].unsqueeze(-1)).squeeze(-1)
    row = answer.nonzero()[:, 0]
    total = torch.zeros(len(rows), dtype=token_logp.dtype, device=token_logp.device).index_add(0, row, token_logp)
    return total / answer.sum(dim=1).clamp(min=1)


def prompt_hidden_means(lm, rows, pad_id, device):
    """Mean last-layer hidden state over each row's tokens (rows are prompts only)."""
    input_ids, mask, _ = pad_right(rows, pad_id, device)
    hidden = _decode(lm, input_ids, mask).float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def reward_gaps(lm, triples, pad_id, device):
    """RG per (prompt, chosen, rejected) encoded triple: mean log p(chosen) - mean log p(rejected)."""
    logp = answer_logprobs(lm, [t[0] for t in triples] + [t[1] for t in triples], pad_id, device)
    return logp[: len(triples)] - logp[len(triples):]


def mpo_loss(policy_gap, reference_gap, beta: float, policy_hidden, reference_hidden):
    """(total, gap term, retain term): mean (beta * RG_policy(target) - RG_ref(English))^2 plus the mean
    squared difference of the English hidden-state means."""
    gap = ((beta * policy_gap - reference_gap) ** 2).mean()
    retain = ((policy_hidden - reference_hidden) ** 2).mean()
    return gap + retain, gap, retain


class Objective:
    """The MPO loss over a fixed list of pairs, tokenised once. ``reference(peft_model)`` computes the
    frozen model's English gaps and hidden means with the adapter disabled; ``loss(peft_model, batch)``
    the policy's side with the adapter on."""

    def __init__(self, tok, pairs: list[Pair], beta: float, max_length: int, device, chunk: int = 8):
        self.beta, self.device, self.pad, self.chunk = beta, device, tok.pad_token_id, chunk

        def triple(t: Triple):
            return (encode_answer(tok, t.prompt, t.chosen, max_length),
                    encode_answer(tok, t.prompt, t.rejected, max_length))

        self.target = [triple(p.target) for p in pairs]
        self.source = [triple(p.source) for p in pairs]
        self.source_prompt = []
        for p in pairs:
            ids, labels = encode_answer(tok, p.source.prompt, "", max_length)
            n_prompt = sum(1 for x in labels if x == -100)
            self.source_prompt.append((ids[:n_prompt], labels[:n_prompt]))
        self.reference_gap = None
        self.reference_hidden = None

    def reference(self, peft_model) -> None:
        import torch

        lm = peft_model.base_model.model
        gaps, hidden = [], []
        with torch.no_grad(), peft_model.disable_adapter():
            for start in range(0, len(self.source), self.chunk):
                part = slice(start, start + self.chunk)
                gaps.append(reward_gaps(lm, self.source[part], self.pad, self.device))
                hidden.append(prompt_hidden_means(lm, self.source_prompt[part], self.pad, self.device))
        self.reference_gap, self.reference_hidden = torch.cat(gaps), torch.cat(hidden)

    def backward(self, peft_model, batch: list[int], pairs_per_pass: int = 2):
        """The batch's loss, with its gradient accumulated a few pairs at a time: both terms are means
        over the batch, so each slice's loss weighted by its share sums to the batch's, and only one
        slice's activations are held (the whole batch in one pass took ~9 GB on SmolLM2)."""
        totals = [0.0, 0.0, 0.0]
        for start in range(0, len(batch), pairs_per_pass):
            part = batch[start:start + pairs_per_pass]
            terms = self.loss(peft_model, part)
            (terms[0] * (len(part) / len(batch))).backward()
            totals = [t + term.item() * len(part) / len(batch) for t, term in zip(totals, terms)]
        return tuple(totals)

    def loss(self, peft_model, batch: list[int]):
        if self.reference_gap is None:
            raise RuntimeError("Objective.reference() must run before loss()")
        lm = peft_model.base_model.model
        policy_gap = reward_gaps(lm, [self.target[i] for i in batch], self.pad, self.device)
        policy_hidden = prompt_hidden_means(lm, [self.source_prompt[i] for i in batch], self.pad, self.device)
        return mpo_loss(policy_gap, self.reference_gap[batch], self.beta, policy_hidden, self.reference_hidden[batch])


# -- the editor ----------------------------------------------------------------------------------------

class MpoEditor(Editor):
    name = "mpo"
    Config = MpoConfig

    edit_class = LoraEdit

    def fit_new(self, loaded, calibration, config: MpoConfig, context, fingerprint) -> LoraEdit:
        pairs, sources = build_pairs(loaded, calibration, config, context)
        return self.train(loaded, pairs, config, context, fingerprint, {"rejected_source": sources})

    def train(self, loaded, pairs: list[Pair], config: MpoConfig, context, fingerprint, info: dict) -> LoraEdit:
        import torch
        from tqdm.auto import tqdm

        objective = Objective(loaded.tokenizer, pairs, config.beta, config.max_length, loaded.device)
        rng = random.Random(config.seed)
        history = []
        with lora_model(loaded.model, config) as peft_model:
            objective.reference(peft_model)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
            batches = batch_indices(len(pairs), config.batch_size, rng)
            bar = tqdm(range(config.steps), desc="mpo (LoRA)", disable=not context.progress)
            for _ in bar:
                history.append(objective.backward(peft_model, next(batches)))
                optimizer.step()
                optimizer.zero_grad()
                bar.set_postfix(loss=f"{history[-1][0]:.4f}")
            factors = lora_factors(peft_model)
        last = history[-10:]
        info.update({
            "n_pairs": len(pairs), "languages": sorted({p.lang for p in pairs}),
            "reference_gap_mean": objective.reference_gap.mean().item(),
            "loss_first": history[0][0], "loss_last": history[-1][0],
            "loss_mean_last10": sum(h[0] for h in last) / len(last),
            "gap_first": history[0][1], "gap_mean_last10": sum(h[1] for h in last) / len(last),
            "retain_mean_last10": sum(h[2] for h in last) / len(last),
        })
        return LoraEdit(self.name, config, fingerprint, factors, config.alpha / config.rank, info)


def build_pairs(loaded, calibration, config: MpoConfig, context) -> tuple[list[Pair], dict]:
    """Target/English pairs of the harmful calibration prompts, and per language how many rejected
    answers are the model's own (``own``) or written (``written``)."""
    from msafety_bench.data import select_languages
    from msafety_bench.judges import get_judge, judge_all

    available = list(dict.fromkeys(r.lang for r in calibration))
    if SOURCE not in available:
        raise UsageError("mpo: the calibration data has no English prompts, the source of the reward gap")
    targets = [lang for lang in select_languages(config.languages, available, "calibration") if lang != SOURCE]
    if not targets:
        raise UsageError(f"mpo: languages '{config.languages}' selects no target language besides English "
                         f"(calibration languages: {', '.join(available)})")
    english = {r.id: r for r in calibration if r.lang == SOURCE and r.label == "harmful"}
    chosen = []
    for lang in targets:
        chosen += [r for r in calibration if r.lang == lang and r.label == "harmful"
                   and r.id in english][: config.harmful_per_language]
    if not chosen:
        raise UsageError(f"mpo: no harmful calibration prompts in {','.join(targets)} parallel to English ones")
    records = [english[i] for i in dict.fromkeys(r.id for r in chosen)] + chosen
    answers = context.unedited_answers(loaded, [r.prompt for r in records], config.answer_tokens, config.seed)
    verdicts = judge_all(get_judge("refusal"), [(r.prompt, a, r.lang) for r, a in zip(records, answers)])
    rejected, sources = {}, {}
    for r, answer, v in zip(records, answers, verdicts):
        own = v.verdict == "unsafe" and bool(answer.strip())
        rejected[(r.id, r.lang)] = answer if own else compliant_for(r)
        counts = sources.setdefault(r.lang, {"own": 0, "written": 0})
        counts["own" if own else "written"] += 1

    def triple(r) -> Triple:
        return Triple(r.prompt, refusal_for(r), rejected[(r.id, r.lang)])

    pairs = [Pair(r.lang, triple(r), triple(english[r.id])) for r in chosen]
    return pairs, sources
