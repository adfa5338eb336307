"""One registry for everything chosen by name: editors, judges, datasets.

A ``Registry`` maps a name to a lazy factory: built-ins are ``"module:attribute"`` strings imported
on first use (so listing or checking names imports nothing heavy), third parties add theirs through
an entry-point group. An entry point never shadows a built-in: the same name from a plugin is
ignored with a warning, so ``--editor sparse`` always means this project's editor.
"""

from __future__ import annotations

import importlib
import warnings
from functools import cached_property
from typing import Any

from msafety_bench.errors import UsageError


class Registry:
    def __init__(self, kind: str, group: str, builtins: dict[str, str]):
        self.kind = kind  # "editor", "judge", ... for messages
        self.group = group  # entry-point group of third-party additions
        self.builtins = dict(builtins)

    @cached_property
    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        found = {}
        for ep in entry_points(group=self.group):
            if ep.name in self.builtins:
                if ep.value != self.builtins[ep.name]:
                    warnings.warn(f"{self.group} entry point '{ep.name}' ({ep.value}) is ignored: "
                                  f"'{ep.name}' is a built-in {self.kind}")
                continue
            found[ep.name] = ep
        return found

    def names(self) -> list[str]:
        return sorted({*self.builtins, *self._plugins})

    def check(self, name: str) -> str:
        if name not in self.builtins and name not in self._plugins:
            raise UsageError(f"unknown {self.kind} '{name}': choose one of {', '.join(self.names())}")
        return name

    def get(self, name: str) -> Any:
        """The factory registered under ``name``, imported now."""
        self.check(name)
        if name in self.builtins:
            module, _, attribute = self.builtins[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        return self._plugins[name].load()
