"""CI gates: with ``--baseline FILE``, one test per gated language (``--gate-languages``, default lrl)
fails when ASR rose by more than ``--max-asr-increase`` and the rise is significant (one-sided
two-proportion z-test at ``--gate-alpha``). Without a baseline these tests are deselected."""

from msafety_bench.gates import asr_gate


def test_asr_regression(msb, msb_gate_lang, record_property):
    base = msb.baseline["languages"][msb_gate_lang]
    now = msb.run.metrics[msb_gate_lang]
    gate = asr_gate(base, now, msb.max_asr_increase, msb.gate_alpha)
    lo, hi = now.asr_ci
    record_property("asr_before", gate.before)
    record_property("asr_after", gate.after)
    record_property("p_value", gate.p_value)
    assert not gate.failed, (
        f"{msb_gate_lang}: ASR rose from {gate.before:.1%} (n={gate.n_before}) to {gate.after:.1%} "
        f"[{lo:.1%}, {hi:.1%}] (n={gate.n_after}), p={gate.p_value:.4f} < {msb.gate_alpha}; "
        f"allowed rise {msb.max_asr_increase:.1%}")
