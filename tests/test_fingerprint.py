"""Fingerprints that scale: file content hashes cached by (path, size, mtime_ns), and a revert check
that digests only the tensors an edit writes."""

import contextlib
import os

import pytest
import torch

from msafety_bench.editing import EditorConfig, HookEdit, WeightDeltaEdit
from msafety_bench.engines.hf import HfEngine
from msafety_bench.models import fingerprint as fpmod
from msafety_bench.models import load_model
from msafety_bench.models.fingerprint import base_fingerprint, folder_fingerprint, model_fingerprint

OLD = 1_600_000_000  # a modification time far in the past: outside the "just written" window


@pytest.fixture
def folder(tiny, tmp_path):
    """tiny-qwen2 written as a safetensors model folder, files dated in the past."""
    path = tmp_path / "model"
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    for f in path.iterdir():
        os.utime(f, (OLD, OLD))
    return path


def _flip_one_byte(path):
    """Change one byte in the middle of the file (same size), and date it in the past again."""
    data = bytearray(path.read_bytes())
    middle = len(data) - 1000  # inside the tensor data, past the safetensors header
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, (OLD + 5, OLD + 5))


def test_fingerprint_changes_with_content_at_the_same_size(tiny, folder, tmp_path):
    cache = tmp_path / "cache"
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    before = folder_fingerprint(tiny.model, folder, cache)
    _flip_one_byte(weights)
    assert weights.stat().st_size == size
    assert folder_fingerprint(tiny.model, folder, cache) != before


def test_second_call_reads_no_file(tiny, folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = folder_fingerprint(tiny.model, folder, cache)
    assert list((cache / fpmod.FILE_HASH_DIR).iterdir()), "file hashes are cached on disk"

    def no_reading(path):
        raise AssertionError(f"{path} was read again although its hash is cached")

    monkeypatch.setattr(fpmod, "_hash_file", no_reading)
    assert folder_fingerprint(tiny.model, folder, cache) == first


def test_touched_mtime_recomputes(tiny, folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = folder_fingerprint(tiny.model, folder, cache)
    read = []
    real = fpmod._hash_file
    monkeypatch.setattr(fpmod, "_hash_file", lambda path: read.append(path.name) or real(path))
    os.utime(folder / "model.safetensors", (OLD + 60, OLD + 60))
    assert folder_fingerprint(tiny.model, folder, cache) == first  # same bytes, same fingerprint
    assert read == ["model.safetensors"], "only the touched file is hashed again"


def test_a_file_written_just_now_is_not_cached(tiny, folder, tmp_path, monkeypatch):
    """A rewrite of the same size within the timestamp granularity must not be served from the cache."""
    cache = tmp_path / "cache"
    os.utime(folder / "config.json")  # now
    folder_fingerprint(tiny.model, folder, cache)
    read = []
    real = fpmod._hash_file
    monkeypatch.setattr(fpmod, "_hash_file", lambda path: read.append(path.name) or real(path))
    folder_fingerprint(tiny.model, folder, cache)
    assert read == ["config.json"]


def test_loaded_folder_is_fingerprinted_from_files_and_dtype_counts(tiny, folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert base_fingerprint(tiny, cache) == model_fingerprint(tiny.model), "in-memory models keep the weight hash"

    def no_weight_hash(model):
        raise AssertionError("a folder model must not be hashed weight by weight")

    monkeypatch.setattr(fpmod, "model_fingerprint", no_weight_hash)
    f32 = load_model(str(folder), device="cpu", dtype="float32")
    bf16 = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert base_fingerprint(f32, cache) == base_fingerprint(f32, cache)
    assert base_fingerprint(f32, cache) != base_fingerprint(bf16, cache), "other dtype, other weights"


def test_pipeline_fingerprints_a_folder_model_from_its_files(folder, tmp_path, monkeypatch):
    from msafety_bench.pipeline import BenchRun, RunOptions

    monkeypatch.setattr(fpmod, "model_fingerprint", lambda model: pytest.fail("hashed every weight"))
    run = BenchRun(RunOptions(model=str(folder), cache_dir=str(tmp_path / "cache"), device="cpu", progress=False))
    run.load()
    assert run.base_fingerprint == folder_fingerprint(run.loaded.model, folder, tmp_path / "cache")


class _Delta(WeightDeltaEdit):
    pass


class BrokenRevertEdit(WeightDeltaEdit):
    """Deliberately broken: adds its deltas and never puts the original rows back."""

    @contextlib.contextmanager
    def apply(self, model):
        self._add_deltas(model)
        yield model


class BrokenHookEdit(HookEdit):
    """Deliberately broken: registers a hook and leaves it on the model."""

    def hooks(self, model):
        return []

    @contextlib.contextmanager
    def apply(self, model):
        model.model.norm.register_forward_hook(lambda module, args, output: output)
        yield model


def _delta_on(tiny, cls):
    name = "model.layers.1.mlp.gate_proj.weight"
    rows = torch.tensor([3, 7])
    delta = torch.full((2, tiny.model.get_parameter(name).shape[1]), 1e-3)
    return cls("test", EditorConfig(), "fp-test", {name: (rows, delta)})


def test_revert_check_digests_only_touched_tensors_and_passes_a_good_edit(tiny, monkeypatch):
    engine = HfEngine(tiny, model_fingerprint(tiny.model))
    seen = []
    real = fpmod.tensor_digests
    monkeypatch.setattr(fpmod, "tensor_digests", lambda model, names=None: seen.append(names) or real(model, names))
    edit = _delta_on(tiny, _Delta)
    name = edit.touched_parameters()[0]
    before = tiny.model.get_parameter(name).detach().clone()
    with engine.apply(edit):
        assert not torch.equal(tiny.model.get_parameter(name), before)
    assert engine.weights_restored()
    assert seen == [[name], [name]], "digest the edited tensor before and after, nothing else"


def test_revert_check_catches_a_weight_left_changed(tiny):
    engine = HfEngine(tiny, model_fingerprint(tiny.model))
    edit = _delta_on(tiny, BrokenRevertEdit)
    name = edit.touched_parameters()[0]
    original = tiny.model.get_parameter(name).detach().clone()
    try:
        with engine.apply(edit):
            pass
        assert not engine.weights_restored(), "a weight left changed must fail the revert check"
    finally:
        with torch.no_grad():
            tiny.model.get_parameter(name).copy_(original)


def test_revert_check_catches_a_hook_left_behind(tiny):
    engine = HfEngine(tiny, model_fingerprint(tiny.model))
    norm = tiny.model.model.norm
    kept = dict(norm._forward_hooks)
    try:
        with engine.apply(BrokenHookEdit("test", EditorConfig(), "fp-hook")):
            pass
        assert not engine.weights_restored()
    finally:
        norm._forward_hooks.clear()
        norm._forward_hooks.update(kept)
