"""The editor interface: fit on calibration data, apply as a reversible context manager.

An ``Editor`` (one self-contained module per editor under ``editors/``) turns (model, calibration
records, config) into an ``Edit``. ``with edit.apply(model):`` changes the model; leaving the block
restores every weight bit for bit and removes every hook. Editors register through the entry-point
group ``msafety_bench.editors``; the built-ins are listed in ``EDITORS`` and cannot be shadowed.
``--editor a+b`` composes: b is fitted on the model already edited by a.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from msafety_bench.errors import CacheWarning, UsageError
from msafety_bench.options import parse_options
from msafety_bench.registry import Registry

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

    def touched_parameters(self) -> list[str] | None:
        """Names of the parameters ``apply`` writes (and must restore bit for bit), or None when unknown:
        the revert check then digests every weight. Hook edits write none."""
        return None

    def describe(self) -> dict:
        return {"name": self.editor, "config": dataclasses.asdict(self.config),
                "fingerprint": self.fingerprint, "info": self.info}


class NullEdit(Edit):
    def apply(self, model):
        return contextlib.nullcontext(model)

    def touched_parameters(self) -> list[str]:
        return []

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

    def touched_parameters(self) -> list[str] | None:
        names: list[str] = []
        for edit in self.edits:
            part = edit.touched_parameters()
            if part is None:
                return None
            names += part
        return list(dict.fromkeys(names))

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
            try:
                return self.edit_class.load(folder, config)
            except (DamagedArtifact, KeyError) as exc:
                aside = set_aside(folder)
                warnings.warn(CacheWarning(f"edit artifact {folder} is damaged ({exc}): moved to {aside.name}, "
                                           f"fitting editor '{self.name}' again"))
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
    cache_dir: Path  # edits go to <cache_dir>/edits/<fingerprint>/, activations to <cache_dir>/activations/
    seed: int = 0
    progress: bool = True
    no_cache: bool = False  # --no-cache: responses are not persisted (edit artifacts still are)

    @property
    def artifact_dir(self) -> Path:
        return Path(self.cache_dir) / "edits"

    def response_cache(self):
        from msafety_bench.generation.cache import ResponseCache

        return ResponseCache(None if self.no_cache else Path(self.cache_dir) / "responses.sqlite")

    def unedited_answers(self, loaded, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        """The unedited model's greedy answers to ``prompts``, through the response cache (editors that
        learn from the model's own answers: sft's harmless targets, mpo's rejected answers)."""
        from msafety_bench.engines.hf import generate_responses
        from msafety_bench.generation import GenerationSettings

        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=32, seed=seed)
        cache = self.response_cache()
        try:
            return generate_responses(loaded, prompts, settings, cache, self.base_fingerprint, "none",
                                      progress=self.progress)
        finally:
            cache.close()

    def activation_cache(self):
        """Pooled activations read by editors, kept on disk like edit artifacts (also with --no-cache)."""
        from msafety_bench.representations import ActivationCache

        return ActivationCache(Path(self.cache_dir) / "activations")

    def edit_fingerprint(self, editor: str, config: EditorConfig, calibration: list) -> str:
        payload = json.dumps(
            [self.base_fingerprint, editor, dataclasses.asdict(config),
             [(r.id, r.lang, r.label, r.prompt) for r in calibration]],
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


EDITORS = Registry("editor", ENTRY_POINT_GROUP, {
    "none": "msafety_bench.editors.none:NoEditor",
    "sparse": "msafety_bench.editors.sparse:SparseEditor",
    "steering": "msafety_bench.editors.steering:SteeringEditor",
    "sft": "msafety_bench.editors.sft:SftEditor",
    "mpo": "msafety_bench.editors.mpo:MpoEditor",
})


def editor_names() -> list[str]:
    return EDITORS.names()


def check_editor_spec(spec: str) -> list[str]:
    """Split ``a+b`` and check every part exists, without importing the editors."""
    parts = [p.strip() for p in spec.split("+")]
    for part in parts:
        if part not in EDITORS.names():
            raise UsageError(f"unknown editor '{part}': choose from {', '.join(EDITORS.names())} (compose with a+b)")
    if "none" in parts and len(parts) > 1:
        raise UsageError(f"editor 'none' cannot be composed ('{spec}'): drop it from the list")
    return parts


def get_editor(name: str) -> Editor:
    check_editor_spec(name)
    return EDITORS.get(name)()


def parse_config(editor: Editor, options: dict[str, str]) -> EditorConfig:
    """Build an editor's config from string options, converting each to the field's declared type."""
    values = parse_options(editor.Config, options, "editor", editor.name, getattr(editor.Config, "ALIASES", {}))
    try:
        return editor.Config(**values)
    except ValueError as exc:
        raise UsageError(f"editor '{editor.name}': {exc}") from None


def split_options(opts: list[str], config_file: str | None, parts: list[str]) -> dict[str, dict[str, Any]]:
    """Per-editor option dicts from ``key=value`` items (``editor.key=value`` when composing) and YAML."""
    per_editor: dict[str, dict[str, Any]] = {p: {} for p in parts}
    items: list[tuple[str, Any]] = []
    if config_file:
        for key, value in read_editor_config(config_file).items():
            if isinstance(value, dict) and key in per_editor:
                items += [(f"{key}.{k}", _yaml_scalar(v, config_file, f"{key}.{k}")) for k, v in value.items()]
            else:
                items.append((key, _yaml_scalar(value, config_file, key)))
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


def read_editor_config(config_file: str) -> dict:
    """The mapping in an ``--editor-config`` YAML file; unreadable, non-UTF-8 or malformed files and
    anything but a mapping are one UsageError naming the file (and the line, when YAML knows it)."""
    import yaml

    path = Path(config_file)
    if not path.is_file():
        raise UsageError(f"editor config '{config_file}' does not exist: check --editor-config")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UsageError(f"editor config '{config_file}' is not UTF-8 (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(f"editor config '{config_file}' is not valid YAML{where} ({problem}): "
                         "write one 'option: value' per line") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UsageError(f"editor config '{config_file}' must be a mapping of option: value")
    return data


def _yaml_scalar(value: Any, config_file: str, key: str) -> str:
    """A YAML value as the string an --editor-opt would carry, so the editor's typed parsing checks it
    the same way; lists and mappings are no option's value."""
    if isinstance(value, (list, dict)):
        raise UsageError(f"editor config '{config_file}': '{key}' holds a {type(value).__name__}, "
                         "but editor options are single values (number, text, true/false)")
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def check_editor_options(spec: str, opts: list[str], config_file: str | None) -> None:
    """Every editor of ``spec`` exists and accepts these options and this config file (known keys,
    types, ranges), checked without a model so a typo costs no model load."""
    parts = check_editor_spec(spec)
    options = split_options(opts, config_file, parts)
    for part in parts:
        parse_config(get_editor(part), options[part])


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

    def touched_parameters(self) -> list[str]:
        return list(self.deltas)

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

    def touched_parameters(self) -> list[str]:
        return []  # hooks change outputs, never weights

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


class DamagedArtifact(Exception):
    """A cached edit that cannot be read back (truncated or overwritten files)."""


def _save_artifact(folder: Path, tensors: dict, edit: Edit) -> None:
    """Tensors first, then the card, each through a temporary file and a rename: a crash leaves no
    half-written file, and a folder without ``edit.json`` is not an artifact yet."""
    from safetensors.torch import save_file

    from msafety_bench.safeio import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".edit.safetensors.{os.getpid()}.tmp"
    try:
        save_file(tensors, str(tmp))
        tmp.replace(folder / "edit.safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(folder / "edit.json", json.dumps(
        {"editor": edit.editor, "fingerprint": edit.fingerprint, "config": dataclasses.asdict(edit.config),
         "info": edit.info}, indent=1, default=str))


def _load_artifact(folder: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / "edit.safetensors"))
        meta = json.loads((folder / "edit.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"editor", "fingerprint", "info"} <= set(meta):
            raise ValueError("edit.json lacks editor, fingerprint or info")
    except (OSError, ValueError, SafetensorError) as exc:
        raise DamagedArtifact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return tensors, meta


def set_aside(folder: Path) -> Path:
    """Rename a damaged cache entry out of the way (kept for inspection; ``cache clear`` removes it)."""
    aside = folder.with_name(f"{folder.name}.damaged-{int(time.time())}-{os.getpid()}")
    folder.rename(aside)
    return aside


def artifact_folder(context: FitContext, fingerprint: str) -> Path:
    return context.artifact_dir / fingerprint


def has_artifact(context: FitContext, fingerprint: str) -> bool:
    folder = artifact_folder(context, fingerprint)
    return (folder / "edit.safetensors").is_file() and (folder / "edit.json").is_file()
