"""Judges turn (prompt, response, lang) into a verdict: unsafe, refusal or invalid.

A judge is any object with a ``name``, a ``config`` dict (its creation parameters, recorded in the
results file) and ``judge(prompt, response, lang) -> Verdict``. Judges register by name with
``@register_judge``; third parties can add theirs through the ``msafety_bench.judges`` entry points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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


_JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    def wrap(factory):
        _JUDGES[name] = factory
        return factory

    return wrap


def _load_builtin_and_plugins() -> None:
    from importlib.metadata import entry_points

    import msafety_bench.judges.refusal  # noqa: F401  (registers itself)

    for ep in entry_points(group="msafety_bench.judges"):
        if ep.name not in _JUDGES:
            _JUDGES[ep.name] = ep.load()


def judge_names() -> list[str]:
    _load_builtin_and_plugins()
    return sorted(_JUDGES)


def get_judge(name: str, **options) -> Judge:
    _load_builtin_and_plugins()
    if name not in _JUDGES:
        raise UsageError(f"unknown judge '{name}': choose one of {', '.join(sorted(_JUDGES))}")
    return _JUDGES[name](**options)
