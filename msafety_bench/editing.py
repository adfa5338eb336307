"""The editor interface: fit on calibration data, apply as a reversible context manager.

An ``Editor`` (one self-contained module per editor under ``editors/``) turns (model, calibration
records, config) into an ``Edit``. ``with edit.apply(model):`` changes the model; leaving the block
restores every weight bit for bit and removes every hook. Editors register through the entry-point
group ``msafety_bench.editors`` (the built-ins too), so a third party adds one the same way.
``--editor a+b`` composes: b is fitted on the model already edited by a.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import typing
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from msafety_bench.errors import UsageError

ENTRY_POINT_GROUP = "msafety_bench.editors"


@dataclasses.dataclass(frozen=True)
class EditorConfig:
    """Base of every editor's options; fields are set with --editor-opt key=value."""


class Edit(ABC):
    """A fitted edit. ``fingerprint`` names it in caches and results."""

    def __init__(self, editor: str, config: EditorConfig, fingerprint: str, info: dict | None = None):
        self.editor = editor
        self.config = config
        self.fingerprint = fingerprint
        self.info = info or {}  # diagnostics recorded in the results file

    @abstractmethod
    def apply(self, model) -> contextlib.AbstractContextManager: ...

    def merge_into(self, model) -> None:
        """Make the edit permanent in the weights, for export as a plain transformers folder."""
        raise UsageError(f"editor '{self.editor}' cannot be written into the weights")

    def weight_form(self, current: Callable[[str], Any]) -> dict[str, Any]:
        """The edited weights, by Hugging Face parameter name, computed from ``current(name)`` (the
        weights as they are before this edit) without touching the model: what an inference engine
        that holds its own copy of the weights loads. Hook edits have none."""
        raise UsageError(f"editor '{self.editor}' acts through forward hooks, which only --backend hf runs; --backend "
                         "vllm needs a weight edit (sparse, sft) and --backend openai an exported, served model")

    def describe(self) -> dict:
        return {"name": self.editor, "config": dataclasses.asdict(self.config),
                "fingerprint": self.fingerprint, "info": self.info}


class NullEdit(Edit):
    def apply(self, model):
        return contextlib.nullcontext(model)

    def weight_form(self, current) -> dict:
        return {}

    def merge_into(self, model) -> None:
        pass


class ComposedEdit(Edit):
    """Edits applied in order (and reverted in reverse order)."""

    def __init__(self, edits: list[Edit]):
        fp = hashlib.sha256("+".join(e.fingerprint for e in edits).encode()).hexdigest()[:16]
        super().__init__("+".join(e.editor for e in edits), EditorConfig(), fp)
        self.edits = edits

    @contextlib.contextmanager
    def apply(self, model) -> Iterator:
        with contextlib.ExitStack() as stack:
            for edit in self.edits:
                stack.enter_context(edit.apply(model))
            yield model

    def merge_into(self, model) -> None:
        for edit in self.edits:
            edit.merge_into(model)

    def weight_form(self, current) -> dict:
        """Each part sees the weights as the parts before it left them."""
        changed: dict = {}
        for edit in self.edits:
            changed.update(edit.weight_form(lambda name: changed[name] if name in changed else current(name)))
        return changed

    def describe(self) -> dict:
        return {"name": self.editor, "fingerprint": self.fingerprint,
                "parts": [e.describe() for e in self.edits]}


class Editor(ABC):
    """Subclasses implement ``fit_new``; ``fit`` adds the artifact cache around it."""

    name: ClassVar[str]
    Config: ClassVar[type[EditorConfig]] = EditorConfig
    edit_class: ClassVar[type[Edit]]  # how a cached artifact is loaded back

    def fit(self, loaded, calibration: list, config: EditorConfig, context: "FitContext") -> Edit:
        fingerprint = context.edit_fingerprint(self.name, config, calibration)
        folder = artifact_folder(context, fingerprint)
        if has_artifact(context, fingerprint):
            return self.edit_class.load(folder, config)
        started = time.time()
        edit = self.fit_new(loaded, calibration, config, context, fingerprint)
        edit.info["fit_seconds"] = round(time.time() - started, 2)
        edit.save(folder)
        return edit

    def fit_new(self, loaded, calibration: list, config: EditorConfig, context: "FitContext",
                fingerprint: str) -> Edit:
        raise NotImplementedError(f"editor '{self.name}' must implement fit_new (or override fit)")


@dataclasses.dataclass
class FitContext:
    """What an editor may need besides the model: where to cache artifacts, the seed, a progress flag."""

    base_fingerprint: str
    cache_dir: Path  # edits go to <cache_dir>/edits/<fingerprint>/
    seed: int = 0
    progress: bool = True
    no_cache: bool = False  # --no-cache: responses are not persisted (edit artifacts still are)

    @property
    def artifact_dir(self) -> Path:
        return Path(self.cache_dir) / "edits"

    def response_cache(self):
        from msafety_bench.generation.cache import ResponseCache

        return ResponseCache(None if self.no_cache else Path(self.cache_dir) / "responses.sqlite")

    def edit_fingerprint(self, editor: str, config: EditorConfig, calibration: list) -> str:
        payload = json.dumps(
            [self.base_fingerprint, editor, dataclasses.asdict(config),
             [(r.id, r.lang, r.label, r.prompt) for r in calibration]],
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def editor_names() -> list[str]:
    return sorted(_entry_points())


def check_editor_spec(spec: str) -> list[str]:
    """Split ``a+b`` and check every part exists, without importing the editors."""
    parts = [p.strip() for p in spec.split("+")]
    known = editor_names()
    for part in parts:
        if part not in known:
            raise UsageError(f"unknown editor '{part}': choose from {', '.join(known)} (compose with a+b)")
    if "none" in parts and len(parts) > 1:
        raise UsageError(f"editor 'none' cannot be composed ('{spec}'): drop it from the list")
    return parts


def get_editor(name: str) -> Editor:
    check_editor_spec(name)
    return _entry_points()[name].load()()


def parse_config(editor: Editor, options: dict[str, str]) -> EditorConfig:
    """Build an editor's config from string options, converting each to the field's declared type."""
    fields = {f.name: f for f in dataclasses.fields(editor.Config)}
    hints = typing.get_type_hints(editor.Config)
    aliases = getattr(editor.Config, "ALIASES", {})
    values = {}
    for key, raw in options.items():
        key = aliases.get(key, key)
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise UsageError(f"editor '{editor.name}' has no option '{key}': its options are {valid}")
        values[key] = _convert(raw, hints[key], f"{editor.name}.{key}")
    try:
        config = editor.Config(**values)
    except ValueError as exc:
        raise UsageError(f"editor '{editor.name}': {exc}") from None
    return config


def _convert(raw: Any, hint: Any, where: str) -> Any:
    if not isinstance(raw, str):
        return raw
    origin_args = typing.get_args(hint)
    kinds = [a for a in origin_args if a is not type(None)] if origin_args else [hint]
    if raw.lower() in ("none", "null") and type(None) in origin_args:
        return None
    for kind in kinds:
        try:
            if kind is bool:
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            if kind in (int, float, str):
                return kind(raw)
        except ValueError:
            continue
    raise UsageError(f"option {where}={raw!r} is not a valid {' or '.join(getattr(k, '__name__', str(k)) for k in kinds)}")


def split_options(opts: list[str], config_file: str | None, parts: list[str]) -> dict[str, dict[str, Any]]:
    """Per-editor option dicts from ``key=value`` items (``editor.key=value`` when composing) and YAML."""
    per_editor: dict[str, dict[str, Any]] = {p: {} for p in parts}
    items: list[tuple[str, Any]] = []
    if config_file:
        import yaml

        path = Path(config_file)
        if not path.is_file():
            raise UsageError(f"editor config '{config_file}' does not exist: check --editor-config")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise UsageError(f"editor config '{config_file}' must be a mapping of option: value")
        for key, value in data.items():
            if isinstance(value, dict) and key in per_editor:
                items += [(f"{key}.{k}", v) for k, v in value.items()]
            else:
                items.append((key, value))
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--editor-opt '{opt}' is not key=value: write e.g. --editor-opt rank=32")
        items.append((key.strip(), value.strip()))
    for key, value in items:
        owner, dot, field = key.partition(".")
        if dot and owner in per_editor:
            per_editor[owner][field] = value
        elif len(parts) == 1:
            per_editor[parts[0]][key] = value
        else:
            raise UsageError(f"option '{key}' is ambiguous with editors {'+'.join(parts)}: write editor.{key}")
    return per_editor


def build_edit(loaded, spec: str, opts: list[str], config_file: str | None, calibration: list,
               context: FitContext) -> Edit:
    """Fit (or load from the artifact cache) every editor of ``spec``, each on the model edited so far."""
    parts = check_editor_spec(spec)
    options = split_options(opts, config_file, parts)
    edits: list[Edit] = []
    with contextlib.ExitStack() as stack:
        for part in parts:
            editor = get_editor(part)
            config = parse_config(editor, options[part])
            edit = editor.fit(loaded, calibration, config, context)
            edits.append(edit)
            if len(parts) > 1:
                stack.enter_context(edit.apply(loaded.model))
                context = dataclasses.replace(context, base_fingerprint=edit.fingerprint + context.base_fingerprint)
    return edits[0] if len(edits) == 1 else ComposedEdit(edits)


class WeightDeltaEdit(Edit):
    """Adds fixed deltas to some rows of some parameters; leaving the block copies the saved rows back,
    so the revert is bit-exact (no subtraction, no rounding)."""

    def __init__(self, editor, config, fingerprint, deltas: dict, info: dict | None = None):
        super().__init__(editor, config, fingerprint, info)
        self.deltas = deltas  # parameter name -> (row indices or None, delta tensor)

    def _add_deltas(self, model, saved: dict | None = None) -> None:
        """Add every delta in place; when ``saved`` is given, record the original rows first."""
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, (rows, delta) in self.deltas.items():
                p = params[name]
                index = slice(None) if rows is None else rows.to(p.device)
                if saved is not None:
                    saved[name] = (p, index, p.data[index].clone())
                p.data[index] = p.data[index] + delta.to(device=p.device, dtype=p.dtype)

    @contextlib.contextmanager
    def apply(self, model):
        import torch

        saved: dict = {}
        try:
            self._add_deltas(model, saved)
            yield model
        finally:
            with torch.no_grad():
                for p, index, original in saved.values():
                    p.data[index] = original

    def merge_into(self, model) -> None:
        self._add_deltas(model)

    def weight_form(self, current) -> dict:
        import torch

        edited = {}
        with torch.no_grad():
            for name, (rows, delta) in self.deltas.items():
                w = current(name).detach().clone()
                index = slice(None) if rows is None else rows.to(w.device)
                w[index] = w[index] + delta.to(device=w.device, dtype=w.dtype)  # the same arithmetic as apply
                edited[name] = w
        return edited

    def save(self, folder: Path) -> None:
        tensors = {}
        for name, (rows, delta) in self.deltas.items():
            tensors[f"delta::{name}"] = delta.contiguous()
            if rows is not None:
                tensors[f"rows::{name}"] = rows.contiguous()
        _save_artifact(folder, tensors, self)

    @classmethod
    def load(cls, folder: Path, config) -> "WeightDeltaEdit":
        tensors, meta = _load_artifact(folder)
        deltas = {k[len("delta::"):]: (tensors.get("rows::" + k[len("delta::"):]), v)
                  for k, v in tensors.items() if k.startswith("delta::")}
        return cls(meta["editor"], config, meta["fingerprint"], deltas, meta["info"])


class HookEdit(Edit):
    """An edit made of forward hooks; leaving the block removes every hook it registered."""

    @abstractmethod
    def hooks(self, model) -> list[tuple[Any, str, Any]]:
        """(module, "forward" | "forward_pre", function) triples to register."""

    @contextlib.contextmanager
    def apply(self, model):
        handles = []
        try:
            for module, kind, fn in self.hooks(model):
                register = module.register_forward_hook if kind == "forward" else module.register_forward_pre_hook
                handles.append(register(fn))
            yield model
        finally:
            for handle in handles:
                handle.remove()


def _save_artifact(folder: Path, tensors: dict, edit: Edit) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "edit.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "edit.safetensors")
    (folder / "edit.json").write_text(json.dumps(
        {"editor": edit.editor, "fingerprint": edit.fingerprint, "config": dataclasses.asdict(edit.config),
         "info": edit.info}, indent=1, default=str))


def _load_artifact(folder: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return load_file(str(folder / "edit.safetensors")), json.loads((folder / "edit.json").read_text())


def artifact_folder(context: FitContext, fingerprint: str) -> Path:
    return context.artifact_dir / fingerprint


def has_artifact(context: FitContext, fingerprint: str) -> bool:
    folder = artifact_folder(context, fingerprint)
    return (folder / "edit.safetensors").is_file() and (folder / "edit.json").is_file()
