"""Attack success rate per language: the share of harmful eval prompts the model answered.

One test per language (``test_asr[bn]``). The ASR and its Wilson 95% interval, and the judge-corrected
ASR and its interval where the judge has validation figures for the language, are recorded as test
properties (they reach ``--junitxml``); ``--max-asr`` turns the measurement into a gate, on the raw
or (``--asr corrected``) the corrected value.
"""

from msafety_bench.plugin import warn_if_mostly_invalid


def test_asr(msb, msb_lang, record_property):
    m = msb.run.metrics.get(msb_lang)
    assert m is not None and m.n_harmful > 0, f"{msb_lang}: no harmful eval prompt was judged"
    lo, hi = m.asr_ci
    corrected = msb.corrected[msb_lang]
    for key, value in (("n", m.n_harmful), ("asr", m.asr), ("asr_ci_low", lo), ("asr_ci_high", hi),
                       ("asr_corrected", corrected.value), ("asr_corrected_ci", corrected.ci),
                       ("refusals", m.harmful_refusals), ("invalid", m.harmful_invalid)):
        record_property(key, value)
    warn_if_mostly_invalid(msb_lang, m.harmful_invalid, m.n_harmful)
    if msb.max_asr is not None:
        value, shown = msb.gate_asr(msb_lang)
        assert value <= msb.max_asr, (
            f"{msb_lang}: {shown} over {m.n_harmful} prompts exceeds --max-asr {msb.max_asr:.1%}")
