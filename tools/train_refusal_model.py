"""Train the refusal judge's learned part, after measuring it on each set it was not trained on.

Why leave one set out first: every set here was written by different hands at a different time, so a
model trained on the others and scored on one is the nearest we have to unseen writing. The final
weights are then fitted on everything and saved; the saved (float16) weights are checked to decide
every answer as the in-memory model does. Usage: python tools/train_refusal_model.py [--cross-only]
"""

import sys
from collections import defaultdict

import numpy as np

from msafety_bench.judges import learned
from msafety_bench.judges.refusal import RefusalJudge, decide
from msafety_bench.judges.validation import read_labels

SETS = ("bundled", "heldout", "dev2", "heldout-v3", "heldout-v4", "dev3", "dev4")


def featurise(rows, judge):
    return [judge.signals(r["prompt"], r["completion"], r["lang"]) for r in rows]


def predict(model, sig):
    return decide(model, sig).verdict


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
    return learned.train([(s[2], s[3], s[4]) for s in sigs], [r["human"] for r in rows])


def main():
    judge = RefusalJudge.__new__(RefusalJudge)
    judge.fallback_lang = "en"
    data = {name: read_labels(name) for name in SETS}
    sigs = {name: featurise(rows, judge) for name, rows in data.items()}
    for test in SETS:
        train = [n for n in SETS if n != test]
        model = fit([s for n in train for s in sigs[n]], [r for n in train for r in data[n]])
        report(f"trained without {test}, scored on it", data[test], [predict(model, s) for s in sigs[test]])
    if "--cross-only" in sys.argv:
        return
    all_rows = [r for n in SETS for r in data[n]]
    all_sigs = [s for n in SETS for s in sigs[n]]
    model = fit(all_sigs, all_rows)
    model.save()
    saved = learned.load_model()
    changed = sum(predict(model, s) != predict(saved, s) for s in all_sigs)
    report("final model, training fit (all sets)", all_rows, [predict(saved, s) for s in all_sigs])
    print(f"saved weights decide {changed} of {len(all_sigs)} answers differently from the fitted ones")
    print("weights digest", learned.weights_digest())


if __name__ == "__main__":
    main()
