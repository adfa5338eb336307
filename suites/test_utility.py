"""Utility after the edit: lm-eval tasks on the same in-memory model, and drift on harmless text.

``test_utility[<task>]`` compares the task's score with the ``--baseline`` file's score for the task
when it has one, else with the unedited model's (same weights with the edit's context left; cached
per base fingerprint), and fails when it drops more than
``--max-utility-drop`` points. ``test_drift[<lang>]`` fails when the mean next-token KL divergence
from the unedited model exceeds ``--max-kl`` nats.
"""


def test_utility(msb_utility, msb_utility_task, record_property):
    u = msb_utility.utility[msb_utility_task]
    # Against the baseline file's score when it has this task, else against the unedited model.
    baseline = (msb_utility.baseline or {}).get("utility", {})
    reference, against = ((baseline[msb_utility_task], "baseline") if msb_utility_task in baseline
                          else (u["base"], "unedited model"))
    drop = 100 * (reference - u["edited"])
    for key in ("base", "edited", "n"):
        record_property(key, u[key])
    assert u["n"], f"{msb_utility_task}: no example was scored"
    assert drop <= msb_utility.max_utility_drop, (
        f"{msb_utility_task}: {u['metric']} fell from {100 * reference:.1f} ({against}) to "
        f"{100 * u['edited']:.1f} ({drop:.1f} points), more than the allowed {msb_utility.max_utility_drop:.1f}")


def test_drift(msb_drift, msb_lang, record_property):
    d = msb_drift.drift.get(msb_lang)
    assert d and d["tokens"] > 0, f"{msb_lang}: no harmless text to measure drift on"
    record_property("kl", d["kl"])
    record_property("ppl_ratio", d["ppl_ratio"])
    assert d["kl"] <= msb_drift.max_kl, (
        f"{msb_lang}: next-token KL {d['kl']:.4f} nats over {d['tokens']} tokens exceeds --max-kl "
        f"{msb_drift.max_kl} (perplexity x{d['ppl_ratio']:.3f})")
