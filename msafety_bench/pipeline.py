"""One benchmark run, stage by stage: data -> model -> editor -> generation -> judge -> metrics.

The pytest plugin and the CLI both drive a ``BenchRun``: options are checked up front (cheaply, before
any model loads), then ``execute()`` does the work once for all languages.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from msafety_bench.data import (PromptRecord, dataset_languages, load_dataset_spec, load_msb_core,
                                select_languages)
from msafety_bench.errors import UsageError
from msafety_bench.generation import GenerationSettings, GenerationStats
from msafety_bench.paths import default_cache_dir


@dataclass
class RunOptions:
    model: str = "smollm2"
    editor: str = "none"
    editor_opts: list[str] = field(default_factory=list)
    editor_config: str | None = None
    dataset: str = "msb-core"
    languages: str | None = None
    limit: int | None = None
    judge: str = "refusal"
    max_new_tokens: int = 96
    batch_size: int = 64
    seed: int = 0
    system_prompt: str | None = None
    results_dir: str = "results"
    cache_dir: str | None = None
    no_cache: bool = False
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    progress: bool = True

    def check(self) -> None:
        """Validation that needs no model and no dataset; raises UsageError."""
        from msafety_bench.editing import check_editor_spec
        from msafety_bench.judges import judge_names
        from msafety_bench.models import resolve_model

        resolve_model(self.model)
        check_editor_spec(self.editor)
        if self.judge not in judge_names():
            raise UsageError(f"unknown judge '{self.judge}': choose one of {', '.join(judge_names())}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.batch_size, self.seed, self.system_prompt)


class BenchRun:
    def __init__(self, options: RunOptions):
        options.check()
        self.options = options
        self._records: list[PromptRecord] | None = None
        self._languages: list[str] | None = None
        self.samples: list[dict] = []
        self.metrics: dict = {}
        self.meta: dict = {}
        self.stats = GenerationStats()
        self.executed = False
        self.loaded = None
        self.base_fingerprint: str | None = None
        self.edit = None

    # -- data ---------------------------------------------------------------------------------------
    @property
    def records(self) -> list[PromptRecord]:
        if self._records is None:
            self._records = load_dataset_spec(self.options.dataset)
            if not self._records:
                raise UsageError(f"dataset {self.options.dataset} holds no prompts")
        return self._records

    @property
    def languages(self) -> list[str]:
        if self._languages is None:
            self._languages = select_languages(
                self.options.languages, dataset_languages(self.records), self.options.dataset)
        return self._languages

    def languages_with(self, label: str) -> list[str]:
        present = {r.lang for r in self.records if r.label == label and r.split == "eval"}
        return [lang for lang in self.languages if lang in present]

    def eval_records(self) -> list[PromptRecord]:
        """Eval-split prompts of the chosen languages; ``--limit`` keeps N per language and label,
        taken round-robin over categories so a small limit still spans the harm categories."""
        groups: dict[tuple, list[PromptRecord]] = defaultdict(list)
        for r in self.records:
            if r.split == "eval" and r.lang in self.languages:
                groups[(r.lang, r.label)].append(r)
        chosen = []
        for key in sorted(groups, key=lambda k: (self.languages.index(k[0]), k[1])):
            chosen += _round_robin(groups[key], self.options.limit)
        return chosen

    def calibration_records(self) -> list[PromptRecord]:
        """Editors fit on calibration prompts: the dataset's own, else msb-core's (external sets are
        evaluation-only)."""
        own = [r for r in self.records if r.split == "calibration"]
        return own or [r for r in load_msb_core() if r.split == "calibration"]

    def competence(self) -> list[str] | None:
        """Languages of this run the model is built to understand (model organisms declare them);
        the others are still measured and reported, marked as outside its competence."""
        from msafety_bench.data.languages import LANGUAGES
        from msafety_bench.models import resolve_model

        selector = resolve_model(self.options.model).competence
        if selector is None:
            return None
        competent = select_languages(selector, list(LANGUAGES), "msb-core")
        return [lang for lang in self.languages if lang in competent]

    # -- the work -----------------------------------------------------------------------------------
    def load(self):
        """Load the model once and take the fingerprint of its weights as loaded."""
        from msafety_bench.models import load_model
        from msafety_bench.models.fingerprint import model_fingerprint

        if self.loaded is None:
            opts = self.options
            self.loaded = load_model(opts.model, cache_dir=opts.cache_path, device=opts.device,
                                     dtype=opts.dtype, trust_remote_code=opts.trust_remote_code,
                                     progress=opts.progress)
            self.base_fingerprint = model_fingerprint(self.loaded.model)
        return self.loaded

    def fit_context(self):
        from msafety_bench.editing import FitContext

        opts = self.options
        return FitContext(self.base_fingerprint, opts.cache_path, opts.seed, opts.progress, opts.no_cache)

    def fit_edit(self):
        """Fit the editor on the calibration split (or load its cached artifact)."""
        from msafety_bench.editing import build_edit

        if self.edit is None:
            opts = self.options
            self.edit = build_edit(self.load(), opts.editor, opts.editor_opts, opts.editor_config,
                                   self.calibration_records(), self.fit_context())
        return self.edit

    def execute(self) -> None:
        from msafety_bench.generation import generate_responses
        from msafety_bench.judges import get_judge
        from msafety_bench.metrics import language_metrics
        from msafety_bench.models.fingerprint import model_fingerprint

        opts = self.options
        started = time.time()
        evals = self.eval_records()
        judge = get_judge(opts.judge)
        t0 = time.time()
        self.load()
        load_s = time.time() - t0
        base_fp = self.base_fingerprint
        context = self.fit_context()
        t0 = time.time()
        self.fit_edit()
        fit_s = time.time() - t0
        cache = context.response_cache()
        t0 = time.time()
        try:
            with self.edit.apply(self.loaded.model):
                responses = generate_responses(
                    self.loaded, [r.prompt for r in evals], opts.generation_settings(), cache,
                    base_fp, self.edit.fingerprint, progress=opts.progress, stats=self.stats)
        finally:
            cache.close()
        gen_s = time.time() - t0
        restored = model_fingerprint(self.loaded.model) == base_fp
        t0 = time.time()
        for rec, response in zip(evals, responses):
            verdict = judge.judge(rec.prompt, response, rec.lang)
            self.samples.append({"id": rec.id, "lang": rec.lang, "label": rec.label, "category": rec.category,
                                 "prompt": rec.prompt, "response": response, **verdict.to_dict()})
        self.metrics = language_metrics(self.samples)
        self.meta = {
            "model": {"name": opts.model, "kind": self.loaded.spec.kind, "source": self.loaded.spec.source,
                      "family": self.loaded.family, "fingerprint": base_fp, "device": self.loaded.device,
                      "dtype": str(next(self.loaded.model.parameters()).dtype).replace("torch.", ""),
                      "competence": self.competence()},
            "editor": {**self.edit.describe(), "weights_restored_after_run": restored},
            "judge": {"name": judge.name, "config": judge.config},
            "timings_s": {"model_load": load_s, "editor_fit": fit_s, "generation": gen_s,
                          "judging": time.time() - t0, "total": time.time() - started},
        }
        if not restored:
            raise RuntimeError(f"editor {opts.editor} did not restore the model's weights on exit")
        self.executed = True


def _round_robin(records: list[PromptRecord], limit: int | None) -> list[PromptRecord]:
    by_cat: dict[str, list[PromptRecord]] = defaultdict(list)
    for r in records:
        by_cat[r.category].append(r)
    interleaved = [r for group in itertools.zip_longest(*by_cat.values()) for r in group if r is not None]
    return interleaved[:limit] if limit else interleaved

