"""The sparse editor on the tiny Qwen2: several layers fitted in order, the null-space constraint,
the cosine diagnostic computed from cached activations, and the options' usage errors."""

import pytest
import torch

from msafety_bench.editors.sparse import EditProblem
from msafety_bench.data import load_msb_core
from msafety_bench.editing import build_edit, get_editor, parse_config
from msafety_bench.errors import UsageError
from msafety_bench.models.fingerprint import model_fingerprint
from msafety_bench.representations import collect

SOURCE, TARGETS = "en", ("bn", "sw")


@pytest.fixture(scope="module")
def calibration():
    return [r for r in load_msb_core() if r.split == "calibration" and r.lang in (SOURCE, *TARGETS)]


def _logits(loaded):
    enc = loaded.tokenizer(["hello there, how are you?"], return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**enc).logits


def _gate_name(loaded, layer):
    weight = loaded.adapter.gate_proj(loaded.model, layer).weight
    return next(n for n, p in loaded.model.named_parameters() if p is weight)


def _rows(records):
    """Row groups as the editor forms them: target harmful prompts with an English parallel, those
    parallels, every harmless prompt."""
    en = {r.id: i for i, r in enumerate(records) if r.lang == SOURCE and r.label == "harmful"}
    low = [i for i, r in enumerate(records) if r.lang in TARGETS and r.label == "harmful" and r.id in en]
    return low, [en[records[i].id] for i in low], [i for i, r in enumerate(records) if r.label == "harmless"]


def test_several_layers_put_a_delta_on_each_layer_and_revert_bit_for_bit(tiny, calibration, context):
    before_fp, before_logits = model_fingerprint(tiny.model), _logits(tiny)
    edit = build_edit(tiny, "sparse", ["layer=0,1", "rank=4"], None, calibration, context)
    assert edit.info["layers"] == [0, 1] and edit.info["layer"] == [0, 1]
    assert set(edit.deltas) == {_gate_name(tiny, 0), _gate_name(tiny, 1)}
    for layer in (0, 1):
        rows, delta = edit.deltas[_gate_name(tiny, layer)]
        assert rows.tolist() == edit.info["per_layer"][str(layer)]["neurons"]
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-5) <= 4
    weights = {layer: tiny.adapter.gate_proj(tiny.model, layer).weight for layer in (0, 1)}
    saved = {layer: w.detach().clone() for layer, w in weights.items()}
    with edit.apply(tiny.model):
        for layer, w in weights.items():
            changed = (w.detach() != saved[layer]).any(dim=1).nonzero().flatten().tolist()
            assert changed and set(changed) <= set(edit.info["per_layer"][str(layer)]["neurons"]), layer
    assert model_fingerprint(tiny.model) == before_fp
    assert torch.equal(_logits(tiny), before_logits)
    assert edit.info["n_neurons"] == sum(v["n_neurons"] for v in edit.info["per_layer"].values())


def test_a_later_layer_is_fitted_on_activations_read_with_the_earlier_edit(tiny, calibration, context):
    edit = build_edit(tiny, "sparse", ["layer=0,1"], None, calibration, context)
    first_alone = build_edit(tiny, "sparse", ["layer=0"], None, calibration, context)
    assert torch.equal(edit.deltas[_gate_name(tiny, 0)][1], first_alone.deltas[_gate_name(tiny, 0)][1])
    # Layer 1's own edit does not change its MLP input, so reading under the whole edit gives what
    # the fit must have used; the problem solved on it must give the stored delta.
    prompts = [r.prompt for r in calibration]
    with edit.apply(tiny.model):
        x = collect(tiny, prompts, [1], ("mlp_in",))["mlp_in"][:, 0].double()
    low, en, harmless = _rows(calibration)
    rows, delta = edit.deltas[_gate_name(tiny, 1)]
    W_S = tiny.adapter.gate_proj(tiny.model, 1).weight.detach()[rows].double().T
    expected = EditProblem(x[low], (x[en] - x[low]) @ W_S, x[harmless], 1.0, 0.01).solve(32).T
    assert torch.allclose(delta.double(), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)


def test_cosine_diagnostic_from_cached_activations_equals_a_forward_pass_with_the_edit(tiny, calibration, context):
    edit = build_edit(tiny, "sparse", ["layer=0,1"], None, calibration, context)
    prompts = [r.prompt for r in calibration]
    before = collect(tiny, prompts, [1], ("resid",))["resid"][:, 0]
    with edit.apply(tiny.model):
        after = collect(tiny, prompts, [1], ("resid",))["resid"][:, 0]
    low, en, _ = _rows(calibration)
    moved = 0.0
    for lang in TARGETS:
        pick = [k for k, i in enumerate(low) if calibration[i].lang == lang]
        a, b = [low[k] for k in pick], [en[k] for k in pick]
        recorded = edit.info["cosine_to_source"][lang]
        for name, acts in (("before", before), ("after", after)):
            measured = float(torch.nn.functional.cosine_similarity(acts[a].double(), acts[b].double()).mean())
            assert recorded[name] == pytest.approx(measured, abs=2e-6), (lang, name)
        moved = max(moved, abs(recorded["after"] - recorded["before"]))
    assert moved > 1e-4, "the edit must move the layer output, or this test cannot tell before from after"
    assert edit.info["cosine_method"] == "exact (last token)"


def test_nullspace_constraint_leaves_harmless_inputs_in_place(tiny, calibration, context):
    soft = build_edit(tiny, "sparse", ["rank=4"], None, calibration, context)
    hard = build_edit(tiny, "sparse", ["rank=4", "constraint=nullspace"], None, calibration, context)
    layer = str(soft.info["layer"])
    soft_fit, hard_fit = soft.info["per_layer"][layer]["fit"]["gate"], hard.info["per_layer"][layer]["fit"]["gate"]
    assert 0 < hard_fit["null_dim"] < tiny.model.config.hidden_size
    assert hard_fit["harmless_shift"] < 1e-2 * soft_fit["harmless_shift"]
    assert hard_fit["objective"] < hard_fit["objective_zero"]  # it still closes part of the gap
    assert hard_fit["objective"] >= soft_fit["objective"]  # the hard constraint cannot beat the soft optimum here


def test_random_control_at_several_layers_uses_the_same_layers_and_counts(tiny, calibration, context):
    safety = build_edit(tiny, "sparse", ["layers=top2"], None, calibration, context)
    control = build_edit(tiny, "sparse", ["layers=top2", "neurons=random"], None, calibration, context)
    assert control.info["layers"] == safety.info["layers"] == [0, 1]
    for layer in ("0", "1"):
        s, c = safety.info["per_layer"][layer], control.info["per_layer"][layer]
        assert c["n_neurons"] == s["n_neurons"] and c["neurons"] != s["neurons"]


def test_layers_outside_the_model_are_usage_errors(tiny, calibration, context):
    with pytest.raises(UsageError, match=r"layer=1,5 is outside 0\.\.1"):
        build_edit(tiny, "sparse", ["layer=1,5"], None, calibration, context)
    with pytest.raises(UsageError, match="layers=top3 but the model has 2 layers"):
        build_edit(tiny, "sparse", ["layers=top3"], None, calibration, context)


@pytest.mark.parametrize("options, message", [
    ({"lambda": "0"}, r"lambda must be > 0 .*got 0\.0: use e\.g\. lambda=0\.01"),
    ({"lambda": "-1"}, "lambda must be > 0"),
    ({"layer": "16,x"}, "layer must be a layer index or a list like layer=16,17,18, got '16,x'"),
    ({"layers": "top0"}, "layers must be topK with K >= 1"),
    ({"layers": "3"}, "layers must be topK"),
    ({"layer": "2", "layers": "top2"}, "set layer=... or layers=topK, not both"),
    ({"constraint": "hard"}, "constraint must be one of soft, nullspace"),
    ({"null_tol": "0"}, r"null_tol must be in \(0, 1\)"),
])
def test_bad_options_are_one_line_usage_errors(options, message):
    with pytest.raises(UsageError, match=message) as exc:
        parse_config(get_editor("sparse"), options)
    assert "\n" not in str(exc.value)


def test_layer_lists_parse_in_fitting_order():
    sparse = get_editor("sparse")
    assert parse_config(sparse, {"layer": "18,16,17"}).layer == "16,17,18"
    assert parse_config(sparse, {"layer": "18,16,17"}).layer_list() == [16, 17, 18]
    assert parse_config(sparse, {"layer": "3"}).layer == 3
    assert parse_config(sparse, {"layer": [5, 4]}).layer == "4,5"  # from a YAML editor config
    assert parse_config(sparse, {"layers": "top3"}).top_k() == 3
