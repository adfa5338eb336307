"""One typed-option parser for everything configured with ``key=value`` strings.

Editors declare their options as a dataclass, judges as keyword arguments of their factory; both
reach ``parse_options``, which checks the keys and converts each string to the declared type (int,
float, bool, str, or None for an optional field). Values that are already typed (from YAML) pass
through unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable

from msafety_bench.errors import UsageError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def declared_options(target: type | Callable) -> dict[str, Any]:
    """Option name -> declared type, from a dataclass's fields or a factory's keyword arguments."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        return {f.name: hints.get(f.name, str) for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    params = inspect.signature(target).parameters
    return {name: hints.get(name, str) for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def typed_value(raw: Any, hint: Any, where: str) -> Any:
    """``raw`` converted to ``hint`` (the first member of a union that accepts it)."""
    if not isinstance(raw, str):
        return raw
    args = typing.get_args(hint)
    kinds = [a for a in args if a is not type(None)] if args else [hint]
    if raw.lower() in ("none", "null") and type(None) in args:
        return None
    for kind in kinds:
        if kind is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
        elif kind in (int, float, str):
            try:
                return kind(raw)
            except ValueError:
                continue
        elif kind is Any:
            return raw
    names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise UsageError(f"option {where}={raw!r} is not a valid {names}")


def parse_options(target: type | Callable, raw: dict[str, Any], kind: str, name: str,
                  aliases: dict[str, str] | None = None, flag: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Check ``raw``'s keys against ``target``'s declared options and type every value.

    ``kind`` and ``name`` name the owner in messages ("editor 'sparse'"); ``flag`` shows how a user
    spells a key on the command line (default: the key in quotes).
    """
    declared = declared_options(target)
    out = {}
    for key, value in raw.items():
        key = (aliases or {}).get(key, key)
        if key not in declared:
            shown = flag(key) if flag else f"'{key}'"
            raise UsageError(f"{kind} '{name}' has no option {shown}: its options are {', '.join(declared) or 'none'}")
        out[key] = typed_value(value, declared[key], f"{name}.{key}")
    return out
