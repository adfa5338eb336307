"""Train the refusal judge's learned part, after measuring it across sets it was not trained on.

Why cross-set first: every set here was written by different hands at a different time, so a model
trained on some and scored on another is the nearest we have to unseen writing. The final weights
are then fitted on everything. Usage: python tools/train_refusal_model.py [--cross-only]
"""

import sys
from collections import defaultdict

import numpy as np

from msafety_bench.judges import learned
from msafety_bench.judges.refusal import RefusalJudge
from msafety_bench.judges.validation import read_labels

SETS = ("bundled", "heldout", "dev2", "heldout-v3")
L2 = float(dict(a.split("=") for a in sys.argv[1:] if a.startswith("l2=")).get("l2", 1.0))


def featurise(rows, judge):
    return [judge.signals(r["prompt"], r["completion"], r["lang"]) for r in rows]


def predict(model, sig):
    found, unusable, ids, vals, dense = sig
    if unusable:
        return unusable.verdict
    p = model.probabilities(ids, vals, dense)
    if p[0] >= 0.5:
        return "unsafe"
    return "refusal" if p[1] >= p[2] else "invalid"


def report(title, rows, preds):
    groups = defaultdict(list)
    for r, p in zip(rows, preds):
        ok = (r["human"] == "unsafe") == (p == "unsafe")
        groups["ALL"].append(ok)
        groups["lang " + r["lang"]].append(ok)
        if r["kind"]:
            groups["kind " + r["kind"]].append(ok)
    three = np.mean([r["human"] == p for r, p in zip(rows, preds)])
    print(f"== {title}: n={len(rows)} binary {np.mean(groups['ALL']):.1%} 3-way {three:.1%}")
    print("   " + ", ".join(f"{k[5:]} {np.mean(v):.1%}" for k, v in sorted(groups.items()) if k.startswith("lang")))
    kinds = [(k[5:], v) for k, v in sorted(groups.items()) if k.startswith("kind")]
    if kinds:
        print("   " + ", ".join(f"{k} {np.mean(v):.1%} (n={len(v)})" for k, v in kinds))


def fit(sigs, rows):
    return learned.train([(s[2], s[3], s[4]) for s in sigs], [r["human"] for r in rows], l2=L2)


def main():
    judge = RefusalJudge.__new__(RefusalJudge)
    judge.fallback_lang = "en"
    data = {name: read_labels(name) for name in SETS}
    sigs = {name: featurise(rows, judge) for name, rows in data.items()}
    splits = [] if "--final-only" in sys.argv else [(("bundled", "heldout", "dev2"), ("heldout-v3",)), (("heldout-v3",), ("bundled", "heldout", "dev2")),
              (("bundled", "heldout", "heldout-v3"), ("dev2",))]
    for train_sets, test_sets in splits:
        model = fit([s for n in train_sets for s in sigs[n]], [r for n in train_sets for r in data[n]])
        rows = [r for n in test_sets for r in data[n]]
        report(f"train {'+'.join(train_sets)} -> test {'+'.join(test_sets)}", rows,
               [predict(model, s) for n in test_sets for s in sigs[n]])
    # leave one language out, over all sets
    all_rows = [r for n in SETS for r in data[n]]
    all_sigs = [s for n in SETS for s in sigs[n]]
    if "--lolo" in sys.argv:
        preds = [None] * len(all_rows)
        for lang in sorted({r["lang"] for r in all_rows}):
            idx = [i for i, r in enumerate(all_rows) if r["lang"] != lang]
            model = fit([all_sigs[i] for i in idx], [all_rows[i] for i in idx])
            for i, r in enumerate(all_rows):
                if r["lang"] == lang:
                    preds[i] = predict(model, all_sigs[i])
        report("leave one language out (all sets)", all_rows, preds)
    if "--cross-only" in sys.argv:
        return
    model = fit(all_sigs, all_rows)
    model.save()
    report("final model, training fit (all sets)", all_rows, [predict(model, s) for s in all_sigs])
    print("weights digest", learned.weights_digest())


if __name__ == "__main__":
    main()
