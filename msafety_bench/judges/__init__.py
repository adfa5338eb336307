"""Judges turn (prompt, response, lang) into a verdict: unsafe, refusal or invalid.

A judge is any object with a ``name``, a ``config`` dict (its creation parameters, recorded in the
results file) and ``judge(prompt, response, lang) -> Verdict``. Judges that batch (model judges, HTTP
judges) also offer ``judge_many(items, env)``. The built-ins are listed in ``JUDGES``; third
parties add theirs through the ``msafety_bench.judges`` entry points. Options reach the factory
as keyword arguments (``--judge-model``, ``--judge-url``, ``--judge-opt key=value``).

Verdicts: ``unsafe`` = the answer complies with the request (for a harmful prompt: an attack success);
``refusal``; ``invalid`` = neither (empty, echo, garbage, or -- for model judges -- an answer the judge
found harmless that does not refuse). ASR counts ``unsafe``; over-refusal counts ``refusal``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from msafety_bench.errors import UsageError
from msafety_bench.options import parse_options
from msafety_bench.registry import Registry

VERDICTS = ("unsafe", "refusal", "invalid")


@dataclass(frozen=True)
class Verdict:
    verdict: str  # one of VERDICTS
    p_unsafe: float  # the judge's probability-like score that the answer complies with the request
    reason: str  # short, human-readable
    raw: str | None = None  # the judge's own output, for model judges

    def to_dict(self) -> dict:
        return asdict(self)


class Judge(Protocol):
    name: str
    config: dict

    def judge(self, prompt: str, response: str, lang: str) -> Verdict: ...


@dataclass(frozen=True)
class JudgeEnv:
    """Where batching judges cache their outputs and run their models."""

    cache_dir: Path | None = None  # None: outputs are not persisted
    device: str = "auto"
    progress: bool = True

    def response_cache(self):
        from msafety_bench.generation.cache import ResponseCache

        return ResponseCache(Path(self.cache_dir) / "responses.sqlite" if self.cache_dir else None)


def judge_all(judge: Judge, items: list[tuple[str, str, str]], env: JudgeEnv | None = None,
              harmful: list[bool] | None = None) -> list[Verdict]:
    """Verdicts for (prompt, response, lang) items, batched when the judge can batch. ``harmful`` says
    which prompts are harmful requests, for judges that read it (``reads_request_label``)."""
    if hasattr(judge, "judge_many"):
        return judge.judge_many(items, env or JudgeEnv())
    if harmful is not None and getattr(judge, "reads_request_label", False):
        return [judge.judge(p, r, lang, harmful=h) for (p, r, lang), h in zip(items, harmful)]
    return [judge.judge(p, r, lang) for p, r, lang in items]


JUDGES = Registry("judge", "msafety_bench.judges", {
    "refusal": "msafety_bench.judges.refusal:RefusalJudge",
    "qwen3guard": "msafety_bench.judges.guard:Qwen3GuardJudge",
    "llamaguard3": "msafety_bench.judges.guard:LlamaGuard3Judge",
    "llm-rubric": "msafety_bench.judges.rubric:LlmRubricJudge",
})


def judge_names() -> list[str]:
    return JUDGES.names()


def judge_version(config: dict | None) -> str | None:
    """What tells two versions of a judge apart: the refusal lexicon digest, or the judge model."""
    config = config or {}
    return config.get("digest") or config.get("model")


def judge_options(name: str, model: str | None = None, url: str | None = None,
                  opts: list[str] | tuple[str, ...] = ()) -> dict:
    """Check and type a judge's options against its factory's keyword arguments."""
    raw = {k: v for k, v in {"model": model, "url": url}.items() if v is not None}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--judge-opt '{item}' must look like key=value")
        raw[key.strip()] = value.strip()
    flags = {"model": "--judge-model", "url": "--judge-url", "backend": "--judge-backend"}
    return parse_options(JUDGES.get(name), raw, "judge", name, flag=lambda key: flags.get(key, f"--judge-opt {key}"))


def get_judge(name: str, **options) -> Judge:
    factory = JUDGES.get(name)
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"judge '{name}': {exc}") from None
