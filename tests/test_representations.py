"""Reading pooled activations on the tiny Qwen2: length-sorted batches, the early stop, and the
activation cache on disk (exact hits, supersets, other weights, damaged files, sharing between editors)."""

import pytest
import torch

from msafety_bench.data import load_msb_core
from msafety_bench.editing import FitContext, build_edit
from msafety_bench.models.fingerprint import model_fingerprint
from msafety_bench.representations import ActivationCache, collect


@pytest.fixture(scope="module")
def prompts():
    core = [r for r in load_msb_core() if r.split == "calibration"]
    # Mixed scripts and lengths, so sorting by length reorders them.
    return [r.prompt for r in core if r.lang in ("en", "bn", "th")][::7]


class ForwardCounter:
    """Counts decoder-layer calls: zero means no forward pass ran."""

    def __init__(self, loaded, layer):
        self.calls = 0
        self.handle = loaded.adapter.layer(loaded.model, layer).register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_sorted_batches_return_rows_in_prompt_order(tiny, prompts, pooling):
    batched = collect(tiny, prompts, [0, 1], pooling=pooling, batch_size=8)
    for i in (0, 5, len(prompts) - 1):
        alone = collect(tiny, [prompts[i]], [0, 1], pooling=pooling, batch_size=1)
        for kind, t in batched.items():
            assert torch.allclose(t[i], alone[kind][0], atol=1e-4, rtol=1e-4), (kind, i)
    assert {kind: tuple(t.shape) for kind, t in batched.items()} == {
        "mlp_in": (len(prompts), 2, 64), "neuron": (len(prompts), 2, 128), "resid": (len(prompts), 2, 64)}


def test_reading_stops_after_the_deepest_requested_layer(tiny, prompts):
    with ForwardCounter(tiny, 1) as deeper:
        first = collect(tiny, prompts, [0], ("resid",))
    assert deeper.calls == 0
    both = collect(tiny, prompts, [0, 1], ("resid",))
    assert torch.equal(first["resid"][:, 0], both["resid"][:, 0])


def test_cache_hit_is_bit_equal_and_runs_no_forward_pass(tiny, prompts, tmp_path):
    cache, fp = ActivationCache(tmp_path / "activations"), model_fingerprint(tiny.model)
    fresh = collect(tiny, prompts, [0, 1], cache=cache, fingerprint=fp)
    files = list((tmp_path / "activations").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind
    with ForwardCounter(tiny, 0) as counter:
        again = collect(tiny, prompts, [0, 1], cache=cache, fingerprint=fp)
    assert counter.calls == 0
    assert all(torch.equal(fresh[kind], again[kind]) for kind in fresh)
    with ForwardCounter(tiny, 0) as counter:
        collect(tiny, prompts, [0, 1], cache=cache, fingerprint="other weights")
        collect(tiny, prompts, [0, 1], pooling="mean", cache=cache, fingerprint=fp)
    assert counter.calls > 0


def test_a_subset_request_is_served_from_a_superset_entry(tiny, prompts, tmp_path):
    cache, fp = ActivationCache(tmp_path), model_fingerprint(tiny.model)
    full = collect(tiny, prompts, [0, 1], cache=cache, fingerprint=fp)
    pick = [9, 2, 4]
    with ForwardCounter(tiny, 0) as counter:
        part = collect(tiny, [prompts[i] for i in pick], [1], ("resid",), cache=cache, fingerprint=fp)
    assert counter.calls == 0
    assert set(part) == {"resid"} and torch.equal(part["resid"], full["resid"][pick][:, [1]])


def test_a_damaged_cache_file_is_read_again(tiny, prompts, tmp_path):
    cache, fp = ActivationCache(tmp_path), model_fingerprint(tiny.model)
    fresh = collect(tiny, prompts, [0], ("mlp_in",), cache=cache, fingerprint=fp)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    with ForwardCounter(tiny, 0) as counter:
        again = collect(tiny, prompts, [0], ("mlp_in",), cache=cache, fingerprint=fp)
    assert counter.calls > 0 and torch.equal(fresh["mlp_in"], again["mlp_in"])


def test_sparse_its_control_a_sweep_and_steering_read_the_calibration_set_once(tiny, tmp_path):
    calibration = [r for r in load_msb_core() if r.split == "calibration" and r.lang in ("en", "sw")]
    context = FitContext(model_fingerprint(tiny.model), tmp_path, progress=False)
    build_edit(tiny, "sparse", [], None, calibration, context)
    with ForwardCounter(tiny, 0) as counter:
        for opts in (["neurons=random"], ["gamma=3"], ["rank=2", "layer=1"]):
            build_edit(tiny, "sparse", opts, None, calibration, context)
        build_edit(tiny, "steering", [], None, calibration, context)
    assert counter.calls == 0
