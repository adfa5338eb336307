"""Judges turn (prompt, response, lang) into a verdict: unsafe, refusal or invalid.

A judge is any object with a ``name``, a ``config`` dict (its creation parameters, recorded in the
results file) and ``judge(prompt, response, lang) -> Verdict``. Judges that batch (model judges, HTTP
judges) also offer ``judge_many(items, env)``. Judges register by name with ``@register_judge``; third
parties can add theirs through the ``msafety_bench.judges`` entry points. Options reach the factory
as keyword arguments (``--judge-model``, ``--judge-url``, ``--judge-opt key=value``).

Verdicts: ``unsafe`` = the answer complies with the request (for a harmful prompt: an attack success);
``refusal``; ``invalid`` = neither (empty, echo, garbage, or -- for model judges -- an answer the judge
found harmless that does not refuse). ASR counts ``unsafe``; over-refusal counts ``refusal``.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

from msafety_bench.errors import UsageError

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


def judge_all(judge: Judge, items: list[tuple[str, str, str]], env: JudgeEnv | None = None) -> list[Verdict]:
    """Verdicts for (prompt, response, lang) items, batched when the judge can batch."""
    if hasattr(judge, "judge_many"):
        return judge.judge_many(items, env or JudgeEnv())
    return [judge.judge(p, r, lang) for p, r, lang in items]


_JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    def wrap(factory):
        _JUDGES[name] = factory
        return factory

    return wrap


def _load_builtin_and_plugins() -> None:
    from importlib.metadata import entry_points

    import msafety_bench.judges.guard  # noqa: F401  (these register themselves)
    import msafety_bench.judges.refusal  # noqa: F401
    import msafety_bench.judges.rubric  # noqa: F401

    for ep in entry_points(group="msafety_bench.judges"):
        if ep.name not in _JUDGES:
            _JUDGES[ep.name] = ep.load()


def judge_names() -> list[str]:
    _load_builtin_and_plugins()
    return sorted(_JUDGES)


def judge_version(config: dict | None) -> str | None:
    """What tells two versions of a judge apart: the refusal lexicon digest, or the judge model."""
    config = config or {}
    return config.get("digest") or config.get("model")


def judge_options(name: str, model: str | None = None, url: str | None = None,
                  opts: list[str] | tuple[str, ...] = ()) -> dict:
    """Check and type a judge's options against its factory's keyword arguments."""
    _load_builtin_and_plugins()
    if name not in _JUDGES:
        raise UsageError(f"unknown judge '{name}': choose one of {', '.join(sorted(_JUDGES))}")
    factory = _JUDGES[name]
    params = inspect.signature(factory).parameters
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    raw = {"model": model, "url": url}
    raw = {k: v for k, v in raw.items() if v is not None}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--judge-opt '{item}' must look like key=value")
        raw[key.strip()] = value.strip()
    out = {}
    for key, value in raw.items():
        if key not in params:
            flag = {"model": "--judge-model", "url": "--judge-url", "backend": "--judge-backend"}.get(
                key, f"--judge-opt {key}")
            accepted = ", ".join(p for p in params if p != "self") or "none"
            raise UsageError(f"judge '{name}' has no option {flag}: its options are {accepted}")
        out[key] = _typed(value, hints.get(key, str), f"judge option {key}")
    return out


def _typed(value, hint, what: str):
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    kind = kinds[0]
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        return kind(value)
    except ValueError:
        raise UsageError(f"{what}: '{value}' is not a valid {kind.__name__}") from None


def get_judge(name: str, **options) -> Judge:
    _load_builtin_and_plugins()
    if name not in _JUDGES:
        raise UsageError(f"unknown judge '{name}': choose one of {', '.join(sorted(_JUDGES))}")
    try:
        return _JUDGES[name](**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"judge '{name}': {exc}") from None
