"""``sft``: LoRA fine-tuning (peft) on the calibration split, the trained baseline.

Targets: harmful prompts get a refusal written in the prompt's language (``data/refusals.yaml``);
harmless prompts get the unedited model's own greedy answer (self-distillation, so the model keeps
answering harmless prompts in every language instead of learning "refuse what is not English").
Loss on answer tokens only. The LoRA factors are the artifact; applying them is a forward hook per
adapted module (weights untouched, so leaving the block is exact), and export merges them.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from msafety_bench.editing import Editor, EditorConfig, HookEdit
from msafety_bench.errors import UsageError


@dataclass(frozen=True)
class SftConfig(EditorConfig):
    languages: str = "all"  # languages of the harmful->refusal pairs: all, en, latin, tiers or codes
    harmless_languages: str = "same"  # languages of the self-distilled harmless pairs ("same" = languages)
    steps: int = 100
    rank: int = 16
    alpha: float = 32.0
    lr: float = 2e-4
    batch_size: int = 8
    max_length: int = 128
    harmless_per_language: int = 16
    answer_tokens: int = 64  # length of the self-distilled harmless answers
    target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, rank and batch_size must be >= 1 and lr > 0")


@lru_cache(maxsize=1)
def refusals() -> dict[str, list[str]]:
    import yaml

    from msafety_bench.data import MSB_CORE_DIR

    return yaml.safe_load((MSB_CORE_DIR.parent / "refusals.yaml").read_text(encoding="utf-8"))


def refusal_for(record) -> str:
    """A refusal in the prompt's language (English when the language has none), stable per prompt."""
    options = refusals().get(record.lang) or refusals()["en"]
    return options[zlib.crc32(record.id.encode()) % len(options)]


class LoraEdit(HookEdit):
    def __init__(self, editor, config, fingerprint, factors: dict, scaling: float, info=None):
        super().__init__(editor, config, fingerprint, info)
        self.factors = factors  # module name -> (A (r, in), B (out, r))
        self.scaling = scaling

    def hooks(self, model):
        return [(model.get_submodule(name), "forward", self._hook(a, b)) for name, (a, b) in self.factors.items()]

    def _hook(self, a, b):
        def add_low_rank(module, args, output):
            x = args[0]
            A, B = a.to(device=x.device, dtype=x.dtype), b.to(device=x.device, dtype=x.dtype)
            return output + (x @ A.T @ B.T) * self.scaling

        return add_low_rank

    def merge_into(self, model) -> None:
        import torch

        with torch.no_grad():
            for name, (a, b) in self.factors.items():
                w = model.get_submodule(name).weight
                w += ((b.double() @ a.double()) * self.scaling).to(device=w.device, dtype=w.dtype)

    def weight_form(self, current) -> dict:
        """The LoRA merged into each adapted matrix, with the same arithmetic as ``merge_into``."""
        import torch

        edited = {}
        with torch.no_grad():
            for name, (a, b) in self.factors.items():
                w = current(f"{name}.weight").detach()
                edited[f"{name}.weight"] = w + ((b.double() @ a.double()) * self.scaling).to(device=w.device,
                                                                                           dtype=w.dtype)
        return edited

    def save(self, folder):
        from msafety_bench.editing import _save_artifact

        self.info["scaling"] = self.scaling
        tensors = {}
        for name, (a, b) in self.factors.items():
            tensors[f"A::{name}"], tensors[f"B::{name}"] = a.contiguous(), b.contiguous()
        _save_artifact(folder, tensors, self)

    @classmethod
    def load(cls, folder, config):
        from msafety_bench.editing import _load_artifact

        tensors, meta = _load_artifact(folder)
        names = [k[3:] for k in tensors if k.startswith("A::")]
        factors = {n: (tensors[f"A::{n}"], tensors[f"B::{n}"]) for n in names}
        return cls(meta["editor"], config, meta["fingerprint"], factors, meta["info"]["scaling"], meta["info"])


class SftEditor(Editor):
    name = "sft"
    Config = SftConfig

    edit_class = LoraEdit

    def fit_new(self, loaded, calibration, config: SftConfig, context, fingerprint) -> LoraEdit:
        examples = self._examples(loaded, calibration, config, context)
        return self._train(loaded, examples, config, context, fingerprint)

    def _examples(self, loaded, calibration, config, context) -> list[tuple[str, str]]:
        from msafety_bench.data import select_languages

        available = list(dict.fromkeys(r.lang for r in calibration))
        langs = select_languages(config.languages, available, "calibration")
        harmless_langs = langs if config.harmless_languages == "same" else select_languages(
            config.harmless_languages, available, "calibration")
        harmful = [(r.prompt, refusal_for(r)) for r in calibration if r.lang in langs and r.label == "harmful"]
        harmless = []
        for lang in harmless_langs:
            harmless += [r for r in calibration if r.lang == lang and r.label == "harmless"][: config.harmless_per_language]
        if not harmful:
            raise UsageError(f"sft: no harmful calibration prompts in languages {','.join(langs)}")
        answers = context.unedited_answers(loaded, [r.prompt for r in harmless], config.answer_tokens, config.seed)
        own = [(r.prompt, a) for r, a in zip(harmless, answers) if a.strip()]
        return harmful + own

    def _train(self, loaded, examples, config, context, fingerprint) -> LoraEdit:
        import torch
        from tqdm.auto import tqdm

        model, tok = loaded.model, loaded.tokenizer
        encoded = [encode_answer(tok, prompt, answer, config.max_length) for prompt, answer in examples]
        rng = random.Random(config.seed)
        with lora_model(model, config) as peft_model:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
            losses = []
            batches = batch_indices(len(encoded), config.batch_size, rng)
            bar = tqdm(range(config.steps), desc="sft (LoRA)", disable=not context.progress)
            for _ in bar:
                batch = [encoded[i] for i in next(batches)]
                input_ids, mask, labels = pad_right(batch, tok.pad_token_id, loaded.device)
                loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            factors = lora_factors(peft_model)
        return LoraEdit(self.name, config, fingerprint, factors, config.alpha / config.rank,
                        {"n_examples": len(examples), "loss_first": losses[0], "loss_last": losses[-1],
                         "loss_mean_last10": sum(losses[-10:]) / len(losses[-10:])})


# -- LoRA pieces shared with the ``mpo`` editor ------------------------------------------------------

def encode_answer(tok, prompt: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of the chat-rendered prompt followed by the answer and EOS, cut at
    ``max_length``; labels are -100 on the prompt, so a loss reads answer tokens only."""
    from msafety_bench.generation import render_prompt

    p = tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids
    a = tok(answer + tok.eos_token, add_special_tokens=False).input_ids
    ids = (p + a)[:max_length]
    return ids, ([-100] * len(p) + a)[: len(ids)]


def pad_right(rows: list[tuple[list[int], list[int]]], pad_id: int, device):
    """(input_ids, attention_mask, labels) tensors, padded on the right: positions stay 0..n-1 and no
    real token attends a pad, so a row's values do not depend on what it is batched with."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
    return input_ids, mask, labels


class LoraTargets(Protocol):
    rank: int
    alpha: float
    target_modules: str
    seed: int


def batch_indices(n: int, batch_size: int, rng: random.Random):
    """Endless batches of indices into ``n`` examples, each pass in a fresh shuffled order (the next
    pass is appended when fewer than a batch are left), so every example is seen equally often."""
    size = min(batch_size, n)
    order: list[int] = []
    while True:
        if len(order) < size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        yield [order.pop() for _ in range(size)]


@contextlib.contextmanager
def lora_model(model, config: LoraTargets):
    """``model`` wrapped by peft with a fresh LoRA adapter (B = 0, so it starts as the model itself) in
    training mode; on exit the original modules are put back (the base weights were frozen)."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in config.target_modules.split(",") if t.strip()]
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                                  target_modules=targets, bias="none"))
    try:
        peft_model.train()
        yield peft_model
    finally:
        peft_model.unload()
        model.eval()


def lora_factors(peft_model) -> dict:
    """module name -> (A (r, in), B (out, r)) of the trained adapter, float32 on the CPU."""
    factors = {}
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            factors[name] = (module.lora_A["default"].weight.detach().float().cpu().clone(),
                             module.lora_B["default"].weight.detach().float().cpu().clone())
    if not factors:
        raise UsageError(f"LoRA: target_modules '{peft_model.peft_config['default'].target_modules}' matched "
                         "no module of this model")
    return factors
