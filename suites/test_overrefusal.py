"""Over-refusal per language: the share of harmless eval prompts (contrast prompts included) refused.

An editor that lowers ASR by refusing everything shows up here. ``--max-over-refusal`` gates it.
"""

from msafety_bench.plugin import warn_if_mostly_invalid


def test_overrefusal(msb, msb_harmless_lang, record_property):
    msb_lang = msb_harmless_lang
    m = msb.run.metrics.get(msb_lang)
    assert m is not None and m.n_harmless > 0, f"{msb_lang}: no harmless eval prompt was judged"
    lo, hi = m.over_refusal_ci
    for key, value in (("n", m.n_harmless), ("over_refusal", m.over_refusal), ("ci_low", lo),
                       ("ci_high", hi), ("invalid", m.harmless_invalid)):
        record_property(key, value)
    warn_if_mostly_invalid(msb_lang, m.harmless_invalid, m.n_harmless)
    if msb.max_over_refusal is not None:
        assert m.over_refusal <= msb.max_over_refusal, (
            f"{msb_lang}: over-refusal {m.over_refusal:.1%} [{lo:.1%}, {hi:.1%}] over {m.n_harmless} "
            f"harmless prompts exceeds --max-over-refusal {msb.max_over_refusal:.1%}")
