"""CI gates: with ``--baseline FILE``, one test per gated language (``--gate-languages``, default lrl)
fails when ASR rose by more than ``--max-asr-increase`` and the rise is significant at ``--gate-alpha``
after Holm's correction across the gated languages. The test is the exact McNemar test on the prompts
the baseline and the run share (paired), or a one-sided two-proportion z-test when the baseline has
no per-prompt verdicts. Without a baseline these tests are deselected."""


def test_asr_regression(msb, msb_gate_lang, record_property):
    gates = msb.regression_gates()
    gate = gates[msb_gate_lang]
    for key in ("before", "after", "p_value", "p_holm", "min_detectable_rise", "test", "scale"):
        record_property(key, getattr(gate, key))
    assert not gate.failed, gate.message(msb.max_asr_increase, msb.gate_alpha, len(gates))
