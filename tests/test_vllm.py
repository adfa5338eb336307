"""``--backend vllm`` on the real SmolLM2 with vLLM's engine in process, against the hf backend:
(a) unedited, (b) a sparse edit pushed into the engine, (c) the revert, (d) a hook edit refused.

The engine starts once per session (minutes on a CPU). Without vLLM these tests skip, unless
MSB_REQUIRE_VLLM=1 (CI installs vLLM with `make vllm`), where a missing vLLM is a failure.
"""

import os
import time

import pytest

from msafety_bench.data import load_msb_core
from msafety_bench.generation import GenerationSettings
from msafety_bench.paths import default_cache_dir

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
LANGS = ("en", "zh", "sw")
SETTINGS = GenerationSettings(max_new_tokens=32, batch_size=24, seed=0)
MIN_AGREEMENT = 0.9  # fp32 kernels differ between the engines; greedy answers may part late


def eval_prompts() -> list[str]:
    """24 prompts: 4 harmful and 4 harmless eval prompts in each of en, zh, sw."""
    records = [r for r in load_msb_core() if r.split == "eval" and r.lang in LANGS]
    chosen = []
    for lang in LANGS:
        for label in ("harmful", "harmless"):
            chosen += [r.prompt for r in records if r.lang == lang and r.label == label][:4]
    return chosen


def agreement(a: list[str], b: list[str]) -> tuple[float, str]:
    """Exact-match share and a description of the first difference."""
    share = sum(x == y for x, y in zip(a, b)) / len(a)
    first = next(((i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return share, "none" if first is None else f"prompt {first[0]}: {first[1]!r} vs {first[2]!r}"


def answers(engine, prompts):
    started = time.time()
    texts = engine.generate([engine.render(p, None) for p in prompts], SETTINGS)
    return texts, time.time() - started


@pytest.fixture(scope="session")
def engines(smollm2):
    """(hf engine, vllm engine) on the same loaded SmolLM2."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        if os.environ.get("MSB_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is not installed and MSB_REQUIRE_VLLM=1: run `make vllm`")
        pytest.skip("vLLM is not installed: `make vllm`")
    from msafety_bench.engines.hf import HfEngine
    from msafety_bench.engines.vllm import VllmEngine
    from msafety_bench.models.fingerprint import model_fingerprint

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; ample for 24 short prompts
    fingerprint = model_fingerprint(smollm2.model)
    started = time.time()
    # enforce_eager: no torch.compile warm-up (minutes on a shared CPU); the kernels are the same.
    engine = VllmEngine(smollm2, fingerprint, {"max_model_len": 2048, "enforce_eager": True}, seed=0)
    print(f"\nvLLM {engine.version} engine start: {time.time() - started:.0f} s")
    yield HfEngine(smollm2, fingerprint), engine
    engine.close()


@pytest.fixture(scope="session")
def sparse_edit(smollm2):
    from msafety_bench.editing import FitContext, build_edit
    from msafety_bench.models.fingerprint import model_fingerprint

    records = [r for r in load_msb_core() if r.split == "calibration" and r.lang in LANGS]  # en is the source
    context = FitContext(model_fingerprint(smollm2.model), default_cache_dir(), progress=False)
    return build_edit(smollm2, "sparse", [], None, records, context)


@pytest.fixture(scope="session")
def unedited(engines):
    hf, vl = engines
    prompts = eval_prompts()
    hf_texts, hf_s = answers(hf, prompts)
    vl_texts, vl_s = answers(vl, prompts)
    tokens = lambda texts: sum(len(hf.loaded.tokenizer(t).input_ids) for t in texts)  # noqa: E731
    print(f"\nunedited, 24 prompts: hf {tokens(hf_texts) / hf_s:.1f} tok/s ({hf_s:.1f} s), "
          f"vllm {tokens(vl_texts) / vl_s:.1f} tok/s ({vl_s:.1f} s)")
    return hf_texts, vl_texts


def test_a_unedited_vllm_agrees_with_hf(unedited):
    hf_texts, vl_texts = unedited
    share, first = agreement(hf_texts, vl_texts)
    print(f"\n(a) unedited exact match {share:.1%}; first difference: {first}")
    assert share >= MIN_AGREEMENT, first


def test_b_sparse_edit_pushed_into_the_engine(engines, sparse_edit, unedited):
    hf, vl = engines
    prompts = eval_prompts()
    with hf.apply(sparse_edit):
        hf_edited, _ = answers(hf, prompts)
    with vl.apply(sparse_edit):
        vl_edited, _ = answers(vl, prompts)
    share, first = agreement(hf_edited, vl_edited)
    hf_changed = {i for i, (x, y) in enumerate(zip(unedited[0], hf_edited)) if x != y}
    vl_changed = {i for i, (x, y) in enumerate(zip(unedited[1], vl_edited)) if x != y}
    print(f"\n(b) sparse edit exact match {share:.1%}; first difference: {first}; answers changed by the edit: "
          f"hf {len(hf_changed)}/24, vllm {len(vl_changed)}/24, both {len(hf_changed & vl_changed)}")
    assert share >= MIN_AGREEMENT, first
    assert hf_changed, "the sparse edit changed no hf answer: this test cannot tell an edit from none"
    assert len(hf_changed & vl_changed) >= MIN_AGREEMENT * len(hf_changed)


def test_c_revert_restores_the_engine(engines, sparse_edit, unedited):
    _, vl = engines
    with vl.apply(sparse_edit):
        pass
    assert vl.weights_restored(), "the engine's edited tensors do not read back as the originals"
    after, _ = answers(vl, eval_prompts())
    share, first = agreement(unedited[1], after)
    assert share == 1.0, first


def test_e_a_cpu_engine_computes_on_every_core(engines):
    """vLLM's CPU default keeps a core per worker for its scheduler: half of a 2-core machine. The
    engine binds its one worker to every core it may use, unless the user set a binding."""
    _, vl = engines
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND") != ",".join(map(str, cpus)):
        pytest.skip("VLLM_CPU_OMP_THREADS_BIND was set before the engine started: the user's binding stands")
    assert vl.describe()["cpu_threads_bind"] == ",".join(map(str, cpus))
    assert vl.llm.collective_rpc("msb_threads") == [len(cpus)]


def test_d_hook_edit_is_refused_in_one_line(engines, smollm2):
    import torch

    from msafety_bench.editors.steering import SteeringConfig, SteeringEdit
    from msafety_bench.errors import UsageError

    _, vl = engines
    direction = torch.nn.functional.normalize(torch.randn(smollm2.model.config.hidden_size), dim=0)
    edit = SteeringEdit("steering", SteeringConfig(mode="add"), "hook", direction, 1.0, 10)
    with pytest.raises(UsageError) as refused:
        with vl.apply(edit):
            pass
    message = str(refused.value)
    assert "\n" not in message and "--backend hf" in message and "steering" in message
    assert vl.weights_restored()
