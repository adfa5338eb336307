"""Shape checks for the JSON files the project reads (results, baselines), so a file of the right syntax
but the wrong shape is one line naming the file and the first bad path, not a KeyError deep inside.

A schema is a small nested description:

- a type name: ``"string"``, ``"integer"``, ``"number"``, ``"boolean"``, ``"null"``, ``"object"``,
  ``"array"`` or ``"any"``; a tuple of names means any of them;
- ``{"object": {key: schema}, "optional": {key: schema}, "values": schema}``: a JSON object with these
  required and optional keys (other keys are allowed), ``values`` checking every value of a map;
- ``{"array": schema}``: a list whose every item matches;
- ``{"const": value}``; ``{"minimum": 0, "type": "integer"}``.
"""

from __future__ import annotations

from typing import Any

from msafety_bench.errors import UsageError

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "any": lambda v: True,
}


def _kind(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__


def first_error(value: Any, schema: Any, path: str = "$") -> str | None:
    """The first place where ``value`` breaks ``schema``, as ``path: problem``; None when it fits."""
    if isinstance(schema, (str, tuple)):
        names = (schema,) if isinstance(schema, str) else schema
        if not any(_TYPES[n](value) for n in names):
            return f"{path}: expected {' or '.join(names)}, got {_kind(value)}"
        return None
    if "const" in schema:
        return None if value == schema["const"] else f"{path}: expected {schema['const']!r}, got {value!r}"
    if "type" in schema:
        problem = first_error(value, schema["type"], path)
        if problem:
            return problem
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: must be at least {schema['minimum']}, got {value}"
        return None
    if "array" in schema:
        if not isinstance(value, list):
            return f"{path}: expected array, got {_kind(value)}"
        for i, item in enumerate(value):
            problem = first_error(item, schema["array"], f"{path}[{i}]")
            if problem:
                return problem
        return None
    if not isinstance(value, dict):
        return f"{path}: expected object, got {_kind(value)}"
    for key, sub in schema.get("object", {}).items():
        if key not in value:
            return f"{path}: missing key '{key}'"
        problem = first_error(value[key], sub, f"{path}.{key}")
        if problem:
            return problem
    for key, sub in schema.get("optional", {}).items():
        if key in value:
            problem = first_error(value[key], sub, f"{path}.{key}")
            if problem:
                return problem
    if "values" in schema:
        for key, item in value.items():
            problem = first_error(item, schema["values"], f"{path}.{key}")
            if problem:
                return problem
    return None


def validate(value: Any, schema: Any, source: str, fix: str) -> None:
    """Raise a one-line UsageError naming ``source``, the first bad path and ``fix``."""
    problem = first_error(value, schema)
    if problem:
        raise UsageError(f"{source}: {problem} -- {fix}")


COUNT = {"type": "integer", "minimum": 0}
SHARE = ("number", "null")

LANGUAGE_METRICS = {"object": {
    "lang": "string", "tier": "string", "n_harmful": COUNT, "unsafe": COUNT, "harmful_refusals": COUNT,
    "harmful_invalid": COUNT, "n_harmless": COUNT, "harmless_refusals": COUNT, "harmless_invalid": COUNT,
    "asr": SHARE, "asr_ci": {"array": "number"}, "over_refusal": SHARE}}

SAMPLE = {"object": {"id": ("string", "integer"), "lang": "string", "label": "string", "prompt": "string",
                     "response": "string", "verdict": "string"}}

# What re-judging reads: the answers and who judged them.
RESULTS_ANSWERS = {"object": {
    "schema": {"const": "msafety-bench/results"},
    "run_id": "string",
    "judge": {"object": {"name": "string"}, "optional": {"config": ("object", "null")}},
    "samples": {"array": SAMPLE},
}}

# What tables, reports and the leaderboard read as well.
RESULTS = {"object": {
    **RESULTS_ANSWERS["object"],
    "schema_version": "integer",
    "created": "string",
    "model": {"object": {"name": "string", "fingerprint": "string", "source": ("string", "null")}},
    "editor": {"object": {"name": "string", "fingerprint": "string"}},
    "dataset": {"object": {"spec": "string", "limit": ("integer", "null"), "n_samples": COUNT}},
    "versions": "object",
    "metrics": {"object": {"languages": {"values": LANGUAGE_METRICS}},
                "optional": {"tier_mean_asr": {"values": "number"}}},
}, "optional": {"tests": "object", "utility": ("object", "null"), "rejudged_at": "string",
                 "rejudged_from": {"object": {"judge": {"object": {"name": "string"}}}}}}

BASELINE = {"object": {
    "schema": {"const": "msafety-bench/baseline"},
    "languages": {"values": {"object": {"n": COUNT, "unsafe": COUNT}, "optional": {"asr": SHARE}}},
}, "optional": {"judge": ("string", "null"), "judge_version": ("string", "null"), "dataset": ("string", "null")}}
