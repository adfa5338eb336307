"""The sparse edit on the real SmolLM2, measured on held-out (eval split) prompts.

Benchmark-style: it prints the figures next to the same-size random-neuron control (they go into the
project notes) and asserts what held when measured (full size with --bench-full, i.e. `make
bench-sparse`: targets bn, sw, jv, id; CI runs the same assertions on sw and jv): on prompts it never saw, the edit moves
target-language harmful pre-activations at its neurons toward their English parallels, and harmless
prompts move less than harmful ones. Whether safety neurons beat random ones is printed, not
asserted: on SmolLM2 they did not (held-out gap x0.594 for both), see the project notes.
"""

import time

import pytest
import torch

from msafety_bench.data import load_msb_core
from msafety_bench.editing import FitContext, build_edit
from msafety_bench.models.fingerprint import model_fingerprint
from msafety_bench.representations import collect

pytestmark = pytest.mark.slow
SOURCE, FULL_TARGETS, CI_TARGETS = "en", ("bn", "sw", "jv", "id"), ("sw", "jv")


def held_out_movement(loaded, edit, records, targets):
    """Relative gap to English at S before/after, and mean shift of harmful vs harmless rows."""
    layer = edit.info["layer"]
    (param, (rows, delta)), = edit.deltas.items()
    W_S = loaded.adapter.gate_proj(loaded.model, layer).weight.detach()[rows].double().T
    dW = delta.double().T
    en = {r.id: r for r in records if r.lang == SOURCE and r.label == "harmful"}
    harmful = [r for r in records if r.lang in targets and r.label == "harmful" and r.id in en]
    harmless = [r for r in records if r.lang in targets and r.label == "harmless"]
    prompts = [r.prompt for r in harmful] + [en[r.id].prompt for r in harmful] + [r.prompt for r in harmless]
    X = collect(loaded, prompts, [layer], ("mlp_in",))["mlp_in"][:, 0].double()
    n = len(harmful)
    Xh, Xen, Xs = X[:n], X[n:2 * n], X[2 * n:]
    target = Xen @ W_S
    before = (Xh @ W_S - target).norm(dim=1).mean()
    after = (Xh @ (W_S + dW) - target).norm(dim=1).mean()
    return {"gap_ratio": float(after / before), "harmful_shift": float((Xh @ dW).norm(dim=1).mean()),
            "harmless_shift": float((Xs @ dW).norm(dim=1).mean()), "layer": layer, "neurons": len(rows)}


def test_sparse_edit_generalises_to_held_out_prompts(smollm2, tmp_path, bench_full):
    targets = FULL_TARGETS if bench_full else CI_TARGETS
    core = load_msb_core()
    calibration = [r for r in core if r.split == "calibration" and r.lang in (SOURCE, *targets)]
    held_out = [r for r in core if r.split == "eval" and r.lang in (SOURCE, *targets)]
    context = FitContext(model_fingerprint(smollm2.model), tmp_path, progress=False)
    figures = {}
    for name, opts in (("sparse", []), ("random control", ["neurons=random"])):
        t0 = time.perf_counter()
        edit = build_edit(smollm2, "sparse", opts, None, calibration, context)
        figures[name] = {**held_out_movement(smollm2, edit, held_out, targets), "fit_s": time.perf_counter() - t0,
                         "cosine": edit.info["cosine_to_source"]}
    for name, f in figures.items():
        print(f"\n{name}: layer {f['layer']}, {f['neurons']} neurons, fit {f['fit_s']:.1f}s, held-out gap to English "
              f"x{f['gap_ratio']:.3f}, harmful shift {f['harmful_shift']:.4f}, harmless shift {f['harmless_shift']:.4f}")
        print("  cosine to English at the layer output (calibration) before -> after: " + ", ".join(
            f"{lang} {c['before']:.4f}->{c['after']:.4f}" for lang, c in f["cosine"].items()))
    sparse, control = figures["sparse"], figures["random control"]
    print(f"safety neurons {'beat' if sparse['gap_ratio'] < control['gap_ratio'] else 'did not beat'} the random "
          f"control on the held-out gap ({sparse['gap_ratio']:.4f} vs {control['gap_ratio']:.4f})")
    for name, f in figures.items():
        assert f["gap_ratio"] < 1.0, f"{name}: the edit must close part of the held-out gap to English"
        assert f["harmless_shift"] < f["harmful_shift"], f"{name}: harmless prompts must move less than harmful ones"
