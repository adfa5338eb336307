"""Time the sparse fit on a real model: the first fit (activations read once), refits from the
activation cache, several layers, and steering from the same cache. Not a test; run by hand:

    nice -n 19 .venv/bin/python tools/bench_sparse_fit.py [--model smollm2] [--languages en,bn,sw,jv,id] [--languages all]

Each calibration set gets a fresh, empty cache folder, so its first fit reads everything. Peak RSS
is the process's resident high-water mark, reset before each row where Linux allows it. CPU seconds
(this process, all threads) are printed next to wall seconds: on a shared machine the wall time
also measures the other jobs.
Targets (issue 16, 2 CPU cores): first fit <= 2 min, refit <= 5 s, peak RSS < 3 GiB.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--languages", action="append",
                        help="calibration languages, comma-separated, or 'all' (repeatable; default: "
                             "en,bn,sw,jv,id and all)")
    args = parser.parse_args()

    import torch

    from msafety_bench.data import load_msb_core
    from msafety_bench.editing import FitContext, build_edit
    from msafety_bench.errors import UsageError
    from msafety_bench.models import load_model
    from msafety_bench.models.fingerprint import base_fingerprint
    from msafety_bench.paths import default_cache_dir

    rows = []

    def row(name, timing, note=""):
        seconds, cpu = timing
        rows.append((name, seconds, cpu, peak_rss_gib(), note))
        print(f"  {name}: {seconds:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rows[-1][3]:.2f} GiB {note}", flush=True)

    def clock():
        return time.perf_counter(), time.process_time()

    def since(start):
        return time.perf_counter() - start[0], time.process_time() - start[1]

    reset_peak_rss()
    t0 = clock()
    loaded = load_model(args.model, cache_dir=default_cache_dir(), device="cpu")
    base_fp = base_fingerprint(loaded, default_cache_dir())
    row("model load + fingerprint", since(t0))
    core = [r for r in load_msb_core() if r.split == "calibration"]
    for spec in args.languages or ["en,bn,sw,jv,id", "all"]:
        langs = None if spec == "all" else set(spec.split(","))
        calibration = [r for r in core if langs is None or r.lang in langs]
        label = f"{len(calibration)} prompts ({spec})"
        print(f"{label}: {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            context = FitContext(base_fp, Path(tmp), progress=False)

            def fit(opts):
                reset_peak_rss()
                started = clock()
                edit = build_edit(loaded, "sparse", opts, None, calibration, context)
                return edit, since(started)

            edit, seconds = fit([])
            layer = edit.info["layer"]
            row(f"{label}: first fit", seconds, f"layer {layer}, {edit.info['n_neurons']} neurons")
            counts = edit.info["safety_neurons_per_layer"]["en"]
            other = max((i for i in range(len(counts)) if i != layer), key=lambda i: counts[i])
            for opts in (["gamma=3"], ["rank=8"], [f"layer={other}"], ["neurons=random"],
                         ["constraint=nullspace"]):
                try:
                    refit, seconds = fit(opts)
                except UsageError as exc:
                    print(f"  refit {' '.join(opts)}: {exc}", flush=True)
                    continue
                fits = refit.info["per_layer"][str(refit.info["layer"])]["fit"]["gate"]
                note = f"null_dim {fits['null_dim']}" if "null_dim" in fits else ""
                row(f"{label}: refit {' '.join(opts)}", seconds, note)
            edit, seconds = fit(["layers=top3"])
            row(f"{label}: layers=top3", seconds, f"layers {edit.info['layers']} (2 more partial reads)")
            reset_peak_rss()
            started = clock()
            build_edit(loaded, "steering", [], None, calibration, context)
            row(f"{label}: steering from the cache", since(started))
            size = sum(p.stat().st_size for p in (Path(tmp) / "activations").iterdir()) / 2**20
            print(f"  activation cache: {size:.0f} MiB", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'wall s':>8}  {'CPU s':>8}  {'peak RSS GiB':>12}")
    for name, seconds, cpu, rss, note in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {cpu:8.1f}  {rss:12.2f}  {note}")


if __name__ == "__main__":
    main()
