"""Attack success rate per language: the share of harmful eval prompts the model answered.

One test per language (``test_asr[bn]``). The ASR and its Wilson 95% interval are recorded as test
properties (they reach ``--junitxml``); ``--max-asr`` turns the measurement into a gate.
"""

from msafety_bench.plugin import warn_if_mostly_invalid


def test_asr(msb, msb_lang, record_property):
    m = msb.run.metrics.get(msb_lang)
    assert m is not None and m.n_harmful > 0, f"{msb_lang}: no harmful eval prompt was judged"
    lo, hi = m.asr_ci
    for key, value in (("n", m.n_harmful), ("asr", m.asr), ("asr_ci_low", lo), ("asr_ci_high", hi),
                       ("refusals", m.harmful_refusals), ("invalid", m.harmful_invalid)):
        record_property(key, value)
    warn_if_mostly_invalid(msb_lang, m.harmful_invalid, m.n_harmful)
    if msb.max_asr is not None:
        assert m.asr <= msb.max_asr, (
            f"{msb_lang}: ASR {m.asr:.1%} [{lo:.1%}, {hi:.1%}] over {m.n_harmful} prompts exceeds "
            f"--max-asr {msb.max_asr:.1%}")
