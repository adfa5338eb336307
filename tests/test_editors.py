"""Editors on the tiny Qwen2: registry, options, reversibility, artifact cache, composition."""

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from msafety_bench.data import load_msb_core
from msafety_bench.editing import build_edit, editor_names, get_editor, parse_config
from msafety_bench.errors import UsageError
from msafety_bench.models.fingerprint import model_fingerprint

FAST = {
    "none": [],
    "sparse": [],
    "steering": [],
    "steering-ablate": ["mode=ablate"],
    "sft": ["steps=3", "harmless_per_language=2", "answer_tokens=4", "batch_size=4"],
    "mpo": ["steps=3", "harmful_per_language=2", "answer_tokens=4", "batch_size=2", "rank=4"],
}


@pytest.fixture(scope="module")
def calibration():
    return [r for r in load_msb_core() if r.split == "calibration" and r.lang in ("en", "bn", "sw")]


def _logits(loaded):
    enc = loaded.tokenizer(["hello there, how are you?"], return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**enc).logits


def test_builtins_are_registered_through_entry_points():
    assert {"none", "sparse", "steering", "sft", "mpo"} <= set(editor_names())


@pytest.mark.parametrize("name", list(FAST))
def test_enter_and_leave_restores_the_model_bit_for_bit(tiny, calibration, context, name):
    editor, opts = name.split("-")[0], FAST[name]
    before_fp, before_logits = model_fingerprint(tiny.model), _logits(tiny)
    edit = build_edit(tiny, editor, opts, None, calibration, context)
    assert model_fingerprint(tiny.model) == before_fp, "fitting must not leave the model changed"
    with edit.apply(tiny.model):
        inside = _logits(tiny)
    assert model_fingerprint(tiny.model) == before_fp
    assert torch.equal(_logits(tiny), before_logits)
    if editor == "none":
        assert torch.equal(inside, before_logits)
    else:
        assert not torch.equal(inside, before_logits), f"{name} changed nothing"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules()), "hooks left behind"


def test_revert_is_exact_even_if_the_block_raises(tiny, calibration, context):
    before = model_fingerprint(tiny.model)
    edit = build_edit(tiny, "sparse", [], None, calibration, context)
    with pytest.raises(RuntimeError):
        with edit.apply(tiny.model):
            raise RuntimeError("boom")
    assert model_fingerprint(tiny.model) == before


def test_sparse_edits_only_the_safety_neuron_rows(tiny, calibration, context):
    edit = build_edit(tiny, "sparse", ["rank=2"], None, calibration, context)
    layer = edit.info["layer"]
    neurons = edit.info["per_layer"][str(layer)]["neurons"]
    weight = tiny.adapter.gate_proj(tiny.model, layer).weight
    before = weight.detach().clone()
    with edit.apply(tiny.model):
        changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert set(changed) <= set(neurons) and changed
    (rows, delta), = edit.deltas.values()
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-5) <= 2  # stored in float32
    info = edit.info
    fit = info["per_layer"][str(layer)]["fit"]["gate"]
    assert fit["objective"] < fit["objective_zero"]
    assert set(info["cosine_to_source"]) == {"bn", "sw"}
    assert info["jaccard_at_layer"]["en"]["en"] == 1.0


def test_random_control_uses_the_same_count_and_layer(tiny, calibration, context):
    safety = build_edit(tiny, "sparse", [], None, calibration, context)
    control = build_edit(tiny, "sparse", ["neurons=random", "seed=3"], None, calibration, context)
    assert control.info["layer"] == safety.info["layer"]
    assert control.info["n_neurons"] == safety.info["n_neurons"]
    layer = str(safety.info["layer"])
    assert control.info["per_layer"][layer]["neurons"] != safety.info["per_layer"][layer]["neurons"]
    assert control.fingerprint != safety.fingerprint


def test_artifacts_are_cached_by_fingerprint(tiny, calibration, context):
    t0 = time.perf_counter()
    first = build_edit(tiny, "sparse", [], None, calibration, context)
    fit_s = time.perf_counter() - t0
    assert list(context.artifact_dir.glob(f"{first.fingerprint}/edit.safetensors"))
    t0 = time.perf_counter()
    second = build_edit(tiny, "sparse", [], None, calibration, context)
    load_s = time.perf_counter() - t0
    print(f"sparse fit {fit_s:.2f}s, cached load {load_s:.3f}s")
    assert second.fingerprint == first.fingerprint and second.info["per_layer"] == first.info["per_layer"]
    for name, (rows, delta) in first.deltas.items():
        assert torch.equal(second.deltas[name][1], delta) and torch.equal(second.deltas[name][0], rows)
    other = build_edit(tiny, "sparse", ["rank=4"], None, calibration, context)
    assert other.fingerprint != first.fingerprint


def test_composition_fits_the_second_on_the_edited_model(tiny, calibration, context):
    before = model_fingerprint(tiny.model)
    composed = build_edit(tiny, "steering+sparse", [], None, calibration, context)
    alone = build_edit(tiny, "sparse", [], None, calibration, context)
    assert composed.editor == "steering+sparse" and [e.editor for e in composed.edits] == ["steering", "sparse"]
    assert composed.edits[1].fingerprint != alone.fingerprint
    assert model_fingerprint(tiny.model) == before
    with composed.apply(tiny.model):
        assert model_fingerprint(tiny.model) != before
    assert model_fingerprint(tiny.model) == before


def test_options_are_typed_and_checked():
    sparse = get_editor("sparse")
    config = parse_config(sparse, {"rank": "8", "lambda": "0.5", "two_sided": "true", "layer": "none"})
    assert (config.rank, config.lam, config.two_sided, config.layer) == (8, 0.5, True, None)
    with pytest.raises(UsageError, match="editor 'sparse' has no option 'rnak'"):
        parse_config(sparse, {"rnak": "8"})
    with pytest.raises(UsageError, match="rank='x' is not a valid int"):
        parse_config(sparse, {"rank": "x"})
    with pytest.raises(UsageError, match="projection must be one of gate, up, both"):
        parse_config(sparse, {"projection": "down"})
    with pytest.raises(UsageError, match="unknown editor 'magic'"):
        get_editor("magic")


def test_editor_config_file_and_prefixed_options(tiny, calibration, context, tmp_path):
    cfg = tmp_path / "edit.yaml"
    cfg.write_text("sparse:\n  rank: 3\nsteering:\n  mode: ablate\n")
    edit = build_edit(tiny, "steering+sparse", ["sparse.gamma=2"], str(cfg), calibration, context)
    assert edit.edits[0].config.mode == "ablate"
    assert (edit.edits[1].config.rank, edit.edits[1].config.gamma) == (3, 2.0)
    with pytest.raises(UsageError, match="ambiguous"):
        build_edit(tiny, "steering+sparse", ["rank=3"], None, calibration, context)


def test_third_party_editor_through_the_entry_point_group(tmp_path):
    """A real installed distribution (dist-info on sys.path) adds an editor without touching us."""
    pkg = tmp_path / "site"
    (pkg / "thirdparty_editor").mkdir(parents=True)
    (pkg / "thirdparty_editor" / "__init__.py").write_text(textwrap.dedent("""
        from msafety_bench.editing import Editor, NullEdit
        class Mine(Editor):
            name = "mine"
            def fit(self, loaded, calibration, config, context):
                return NullEdit("mine", config, "mine")
    """))
    info = pkg / "thirdparty_editor-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-editor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[msafety_bench.editors]\nmine = thirdparty_editor:Mine\n")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from msafety_bench.editing import editor_names, get_editor\n"
            "print(editor_names(), type(get_editor('mine')).__name__)") % str(pkg)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'mine'" in out and "Mine" in out and "'sparse'" in out


@pytest.mark.parametrize("editor, opts, exact", [
    ("sparse", [], True),
    ("steering", ["--editor-opt", "mode=ablate"], False),
    ("sft", ["--editor-opt", f"steps=2", "--editor-opt", "harmless_per_language=1", "--editor-opt", "answer_tokens=2"], False),
    ("mpo", ["--editor-opt", "steps=2", "--editor-opt", "harmful_per_language=1", "--editor-opt", "answer_tokens=2",
             "--editor-opt", "languages=bn"], False),
])
def test_export_writes_a_loadable_edited_model(tiny, tmp_path, editor, opts, exact):
    """The exported folder loads as a normal model and behaves like the model inside the edit."""
    import json

    from msafety_bench.cli import main
    from msafety_bench.models import load_model
    from msafety_bench.pipeline import BenchRun, RunOptions

    cache = tmp_path / "cache"
    args = ["export", "--model", "tiny-qwen2", "--editor", editor, *opts, "--out", str(tmp_path / "out"),
            "--cache-dir", str(cache), "--device", "cpu"]
    assert main(args) == 0
    card = json.loads((tmp_path / "out" / "editor.json").read_text())
    assert card["editor"]["name"] == editor and card["base_model"]["name"] == "tiny-qwen2"
    exported = load_model(str(tmp_path / "out"), device="cpu")
    run = BenchRun(RunOptions(model="tiny-qwen2", editor=editor, editor_opts=[o for o in opts if o != "--editor-opt"],
                              cache_dir=str(cache), device="cpu", progress=False))
    run.load()
    edit = run.fit_edit()  # from the artifact cache written by the export
    with edit.apply(run.loaded.model):
        inside = _logits(run.loaded)
        inside_fp = model_fingerprint(run.loaded.model)
    if exact:
        assert card["merged_fingerprint"] == inside_fp == model_fingerprint(exported.model)
    assert torch.allclose(_logits(exported), inside, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_logits(exported), _logits(run.loaded), atol=1e-6)


def test_steering_add_cannot_be_exported(tmp_path):
    from msafety_bench.cli import main

    assert main(["export", "--model", "tiny-qwen2", "--editor", "steering", "--out", str(tmp_path / "o"),
                 "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]) == 2
