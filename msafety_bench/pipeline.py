"""One benchmark run, stage by stage: data -> model -> editor -> generation -> judge -> metrics.

The pytest plugin and the CLI both drive a ``BenchRun``: options are checked up front (cheaply, before
any model loads), then ``execute()`` does the work once for all languages.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from msafety_bench.data import (PromptRecord, dataset_languages, load_dataset_spec, load_msb_core,
                                select_languages)
from msafety_bench.errors import UsageError
from msafety_bench.generation import GenerationSettings, GenerationStats
from msafety_bench.generation.cache import ResponseCache
from msafety_bench.paths import default_cache_dir

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


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
    judge_model: str | None = None
    judge_url: str | None = None
    judge_opts: list[str] = field(default_factory=list)
    judge_backend: str = "hf"  # model judges: hf, vllm or openai (with --judge-url)
    backend: str = "hf"  # hf (transformers; "local" too), vllm, openai (msafety_bench.engines.BACKENDS)
    engine_opts: list[str] = field(default_factory=list)  # --engine-opt key=value, passed to the engine
    base_url: list[str] | str | None = None  # openai: one URL or several replicas
    served_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    request_timeout: float = 120.0
    max_new_tokens: int = 96
    max_prompt_tokens: int | None = None  # None: the model's context minus max_new_tokens
    batch_size: int = 16  # measured: see the README's Performance section
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
        from msafety_bench.editing import check_editor_options
        from msafety_bench.models import resolve_model

        from msafety_bench.engines import backend_name, parse_engine_options

        backend = backend_name(self.backend)
        parse_engine_options(self.engine_opts)
        if self.engine_opts and backend != "vllm":
            raise UsageError(f"--engine-opt is read by --backend vllm only, this run uses --backend {self.backend}")
        if backend == "openai":
            self.endpoints()  # checks URLs and served model name
            if self.editor != "none":
                raise UsageError(
                    f"--editor {self.editor} changes weights and needs them here; with --backend openai only "
                    f"--editor none runs. Use --backend vllm or hf, or write the edited model with `msafety-bench "
                    f"export --model M --editor {self.editor} --out DIR`, serve DIR and point --base-url at it")
        else:
            resolve_model(self.model)
            check_editor_options(self.editor, self.editor_opts, self.editor_config)
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype '{self.dtype}': use {', '.join(DTYPES)}")
        if not DEVICE.fullmatch(self.device):
            raise UsageError(f"unknown --device '{self.device}': use auto, cpu, cuda, cuda:N or mps")
        self.make_judge()  # cheap: model judges load their model on first use
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UsageError(f"--max-prompt-tokens must be at least 1, got {self.max_prompt_tokens}")
        for flag, folder in (("--results-dir", self.results_dir), ("--cache-dir", self.cache_dir)):
            if folder and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
                raise UsageError(f"{flag} '{folder}' is a file: name a folder")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def endpoints(self) -> list:
        """One endpoint per --base-url (replicas of the same served model)."""
        from msafety_bench.generation.remote import Endpoint

        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url or [])
        if not urls or not self.served_model:
            raise UsageError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --served-model")
        return [Endpoint(url, self.served_model, self.api_key_env, self.concurrency, self.request_timeout)
                for url in urls]

    def make_judge(self):
        from msafety_bench.judges import get_judge, judge_options

        opts = list(self.judge_opts)
        if self.judge_backend not in ("hf", "local"):
            opts.append(f"backend={self.judge_backend}")
        return get_judge(self.judge, **judge_options(self.judge, self.judge_model, self.judge_url, opts))

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

    # -- the work -----------------------------------------------------------------------------------
    def load(self):
        """Load the model once and take the fingerprint of its weights as loaded (from its files'
        cached content hashes when it came from a safetensors folder)."""
        from msafety_bench.models import load_model
        from msafety_bench.models.fingerprint import base_fingerprint

        if self.loaded is None:
            opts = self.options
            self.loaded = load_model(opts.model, cache_dir=opts.cache_path, device=opts.device,
                                     dtype=opts.dtype, trust_remote_code=opts.trust_remote_code)
            self.base_fingerprint = base_fingerprint(self.loaded, opts.cache_path)
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
        from msafety_bench.judges import JudgeEnv, judge_all
        from msafety_bench.judges.guard import UNPARSEABLE
        from msafety_bench.metrics import language_metrics

        opts = self.options
        started = time.time()
        evals = self.eval_records()
        judge = opts.make_judge()
        timings: dict[str, float] = {}
        responses, model_meta, editor_meta, engine_meta, evals, guard = self._generate(evals, timings)
        t0 = time.time()
        env = JudgeEnv(None if opts.no_cache else opts.cache_path, opts.device, opts.progress)
        verdicts = judge_all(judge, [(r.prompt, resp, r.lang) for r, resp in zip(evals, responses)], env,
                             harmful=[r.label == "harmful" for r in evals])
        for rec, response, verdict in zip(evals, responses, verdicts):
            self.samples.append({"id": rec.id, "lang": rec.lang, "label": rec.label, "category": rec.category,
                                 "prompt": rec.prompt, "response": response, **verdict.to_dict()})
        self.metrics = language_metrics(self.samples)
        timings.update(judging=time.time() - t0, total=time.time() - started)
        self.meta = {
            "backend": engine_meta["name"],
            "engine": engine_meta,
            "model": model_meta,
            "editor": editor_meta,
            "judge": {"name": judge.name, "config": judge.config,
                      "unparseable": sum(v.reason == UNPARSEABLE for v in verdicts)},
            "timings_s": timings,
            "prompt_guard": guard,
        }
        if editor_meta.get("weights_restored_after_run") is False:
            raise RuntimeError(f"editor {opts.editor} did not restore the model's weights on exit")
        self.executed = True

    def make_engine(self):
        """The engine the run generates with; weight-holding engines load the model first."""
        from msafety_bench.engines import backend_name, engine_class, parse_engine_options

        opts = self.options
        name = backend_name(opts.backend)
        if name == "openai":
            return engine_class(name)(opts.endpoints())
        self.load()
        if name == "hf":
            return engine_class(name)(self.loaded, self.base_fingerprint)
        return engine_class(name)(self.loaded, self.base_fingerprint, parse_engine_options(opts.engine_opts), opts.seed)

    def prompt_token_limit(self) -> int | None:
        """``--max-prompt-tokens``, else the model's context length minus ``--max-new-tokens`` (None when
        the model states no context length)."""
        opts = self.options
        if opts.max_prompt_tokens:
            return opts.max_prompt_tokens
        context = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if not context:
            return None
        if context - opts.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {opts.max_new_tokens} leaves no room for a prompt in the model's "
                             f"context of {context} tokens: lower it")
        return context - opts.max_new_tokens

    def _drop_overlong(self, evals: list[PromptRecord]) -> tuple[list[PromptRecord], dict | None]:
        """Prompts longer than the limit (chat template included) are left out and counted, never sent to
        the model: one pasted megabyte would otherwise ask for terabytes before anything is cached."""
        from msafety_bench.generation import render_prompt

        limit = self.prompt_token_limit()
        if limit is None:
            return evals, None
        tok = self.loaded.tokenizer
        kept, dropped = [], []
        for rec in evals:
            rendered = render_prompt(tok, rec.prompt, self.options.system_prompt)
            # A token covers at least one byte, so a short prompt needs no tokenizing.
            too_long = (len(rendered.encode("utf-8")) > limit
                        and len(tok(rendered, add_special_tokens=False).input_ids) > limit)
            (dropped if too_long else kept).append(rec)
        return kept, {"max_prompt_tokens": limit, "dropped": [{"id": r.id, "lang": r.lang} for r in dropped]}

    def _generate(self, evals, timings):
        """One path for every backend: engine, edit, cached generation inside the edit, revert check."""
        from msafety_bench.editing import EditorConfig, NullEdit
        from msafety_bench.engines import backend_name, generate_cached

        opts = self.options
        t0 = time.time()
        guard = None
        if backend_name(opts.backend) != "openai":
            self.load()
            timings["model_load"] = time.time() - t0
            evals, guard = self._drop_overlong(evals)
        t0 = time.time()
        engine = self.make_engine()
        timings["engine_start"] = time.time() - t0
        t0 = time.time()
        self.edit = NullEdit("none", EditorConfig(), "none") if backend_name(opts.backend) == "openai" else self.fit_edit()
        timings["editor_fit"] = time.time() - t0
        cache = self.fit_context().response_cache() if self.loaded else ResponseCache(
            None if opts.no_cache else opts.cache_path / "responses.sqlite")
        settings = opts.generation_settings()
        t0 = time.time()
        try:
            with engine.apply(self.edit):
                responses = generate_cached(engine, [engine.render(r.prompt, opts.system_prompt) for r in evals],
                                            settings, cache, self.edit.fingerprint, progress=opts.progress,
                                            stats=self.stats)
        finally:
            cache.close()
        timings["generation"] = time.time() - t0
        if self.loaded is not None:
            model_meta = {"name": opts.model, "kind": self.loaded.spec.kind, "source": self.loaded.spec.source,
                          "family": self.loaded.family, "fingerprint": self.base_fingerprint,
                          "device": self.loaded.device,
                          "dtype": str(next(self.loaded.model.parameters()).dtype).replace("torch.", "")}
            editor_meta = {**self.edit.describe(), "weights_restored_after_run": engine.weights_restored()}
        else:
            endpoint = engine.endpoints[0]
            model_meta = {"name": opts.served_model, "kind": "openai", "source": endpoint.public_url,
                          "fingerprint": engine.model_fingerprint, "concurrency": endpoint.concurrency}
            editor_meta = {"name": "none", "config": {}, "fingerprint": "none", "info": {}}
        engine_meta = engine.describe()
        engine.close()  # a vLLM engine gives its memory back before utility runs on the transformers copy
        return responses, model_meta, editor_meta, engine_meta, evals, guard


def _round_robin(records: list[PromptRecord], limit: int | None) -> list[PromptRecord]:
    by_cat: dict[str, list[PromptRecord]] = defaultdict(list)
    for r in records:
        by_cat[r.category].append(r)
    interleaved = [r for group in itertools.zip_longest(*by_cat.values()) for r in group if r is not None]
    return interleaved[:limit] if limit else interleaved

