"""`make perf`: generation speed, warm rerun, fingerprint cost and editor fit times on one machine, as a
markdown table. Not a test: nothing here asserts a time.

    nice -n 10 .venv/bin/python tools/perf.py [--per-language 12] [--languages en,zh,sw,bn]
        [--max-new-tokens 64] [--batch-sizes 8,16,32] [--sft-steps 20] [--only ROW,...]

Every row runs in a fresh subprocess (model loaded there), so one row's memory does not show in the
next; peak RSS is that subprocess's own high-water mark (os.wait4). Workload (the issue's): SmolLM2 through
the project's loader, harmful eval prompts of msb-core (N per language, taken as ``--limit`` takes them),
greedy, response cache off (the default row writes to an empty one, which the warm-rerun row then reads). tokens/s counts generated tokens (up to and
including EOS) over the generation wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("one-at-a-time", "hf-default", "hf-curve", "vllm", "warm", "fingerprint", "sparse", "sft")


# -- children ---------------------------------------------------------------------------------------
def _run(args, cache_dir: Path):
    from msafety_bench.pipeline import BenchRun, RunOptions

    run = BenchRun(RunOptions(model=args.model, languages=args.languages, limit=args.per_language,
                              max_new_tokens=args.max_new_tokens, cache_dir=str(cache_dir), device="cpu",
                              progress=False))
    records = [r for r in run.eval_records() if r.label == "harmful"]
    return run, records


def _counting_generate():
    """Count the tokens the hf engine generates (the loop's own output lists)."""
    from msafety_bench.engines import hf

    counted = [0]
    real = hf.greedy_generate

    def counting(*a, **k):
        out = real(*a, **k)
        counted[0] += sum(len(ids) for ids in out)
        return out

    hf.greedy_generate = counting
    return counted


def child(row: str, args) -> dict:
    import torch

    from msafety_bench.models import load_model
    from msafety_bench.models.fingerprint import base_fingerprint

    cache_dir = Path(args.work)
    run, records = _run(args, cache_dir)
    t0 = time.perf_counter()
    loaded = run.loaded = load_model(args.model, cache_dir=cache_dir, device="cpu")
    load_s = time.perf_counter() - t0
    run.base_fingerprint = base_fingerprint(loaded, cache_dir)
    fingerprint_s = time.perf_counter() - t0 - load_s
    out = {"prompts": len(records), "load_s": load_s, "fingerprint_s": fingerprint_s,
           "threads": torch.get_num_threads()}
    if row == "one-at-a-time":
        from msafety_bench.generation import render_prompt

        tok, model = loaded.tokenizer, loaded.model
        tokens, t0 = 0, time.perf_counter()
        for rec in records:
            enc = tok([render_prompt(tok, rec.prompt)], return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)
            tokens += ids.shape[1] - enc["input_ids"].shape[1]
        out.update(tokens=tokens, gen_s=time.perf_counter() - t0)
    elif row.startswith("hf") or row in ("warm", "vllm"):
        from msafety_bench.engines import generate_cached
        from msafety_bench.generation import GenerationSettings
        from msafety_bench.generation.cache import ResponseCache

        batch = int(row.split(":")[1]) if ":" in row else run.options.batch_size
        settings = GenerationSettings(args.max_new_tokens, batch, 0)
        counted = _counting_generate()
        t0 = time.perf_counter()
        if row == "vllm":
            from msafety_bench.engines.vllm import VllmEngine

            engine = VllmEngine(loaded, run.base_fingerprint, {"enforce_eager": True})
            out["engine_start_s"] = time.perf_counter() - t0
            out["cpu_threads_bind"] = engine.describe().get("cpu_threads_bind")
        else:
            engine = run.make_engine()
        rendered = [engine.render(r.prompt, None) for r in records]
        cache = ResponseCache(cache_dir / "responses.sqlite" if row in ("warm", "hf-default") else None)
        t0 = time.perf_counter()
        answers = generate_cached(engine, rendered, settings, cache, "none", progress=False)
        out["gen_s"] = time.perf_counter() - t0
        engine.close()
        out["batch_size"] = batch
        if row == "vllm":
            tok = loaded.tokenizer
            out["tokens"] = sum(min(len(tok(a, add_special_tokens=False).input_ids) + 1, args.max_new_tokens)
                                for a in answers)  # re-tokenised (+ EOS): an estimate
        else:
            out["tokens"] = counted[0]
        out["total_s"] = load_s + fingerprint_s + out["gen_s"]
    elif row == "fingerprint":
        from msafety_bench.models.fingerprint import FILE_HASH_DIR, base_fingerprint, model_fingerprint

        t0 = time.perf_counter()
        model_fingerprint(loaded.model)
        out["memory_s"] = time.perf_counter() - t0
        shutil.rmtree(cache_dir / FILE_HASH_DIR, ignore_errors=True)
        t0 = time.perf_counter()
        base_fingerprint(loaded, cache_dir)
        out["cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        base_fingerprint(loaded, cache_dir)
        out["warm_s"] = time.perf_counter() - t0
        out["weights_gib"] = sum(p.stat().st_size for p in Path(loaded.folder).glob("*.safetensors")) / 2**30
    elif row.startswith("sparse") or row == "sft":
        from msafety_bench.editing import build_edit

        opts = {"sparse-first": [], "sparse-refit": ["gamma=3"],
                "sft": [f"steps={args.sft_steps}", "languages=latin", "harmless_per_language=4"]}[row]
        t0 = time.perf_counter()
        edit = build_edit(loaded, "sft" if row == "sft" else "sparse", opts, None, run.calibration_records(),
                          run.fit_context())
        out["fit_s"] = time.perf_counter() - t0
        out["options"] = " ".join(opts) or "defaults"
        out["calibration"] = len(run.calibration_records())
        out["info"] = {k: edit.info.get(k) for k in ("layer", "n_neurons") if k in edit.info}
    return out


# -- parent -----------------------------------------------------------------------------------------
def measure(row: str, args) -> dict:
    """Run one row in a fresh interpreter; its JSON result plus its own peak RSS."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", row, "--work", args.work, "--model", args.model,
           "--languages", args.languages, "--per-language", str(args.per_language),
           "--max-new-tokens", str(args.max_new_tokens), "--sft-steps", str(args.sft_steps)]
    out = Path(args.work) / f"result-{row.replace(':', '-')}.json"
    with tempfile.TemporaryFile("w+") as log:
        # Engines print to stdout (vLLM does): the result travels in a file, the output goes to the log.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not out.is_file():
            log.seek(0)
            last = [line for line in log.read().splitlines() if line.strip()][-1:]
            return {"error": f"exit {code}: {last[0] if last else ''}"[:200]}
    result = json.loads(out.read_text(encoding="utf-8"))
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    return result


def table(results: dict, args) -> str:
    lines = ["| path | tokens/s | vs one at a time | wall s | peak RSS |", "| --- | --- | --- | --- | --- |"]
    base = results.get("one-at-a-time", {})
    base_rate = base.get("tokens", 0) / base["gen_s"] if base.get("gen_s") else None

    def rss(r):
        return f"{r['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in r else ""

    def gen_row(label, r):
        rate = r["tokens"] / r["gen_s"]
        ratio = f"{rate / base_rate:.1f}x" if base_rate else ""
        return f"| {label} | {rate:.1f} | {ratio} | {r['gen_s']:.1f} | {rss(r)} |"

    fits = {"sparse-first": "sparse, first fit", "sparse-refit": "sparse, refit from the activation cache",
            "sft": "sft fit"}
    for row, r in results.items():
        if "error" in r:
            lines.append(f"| {fits.get(row, row)} | failed: {r['error']} | | | |")
        elif r.get("skipped"):
            lines.append(f"| {row} | {r['skipped']} | | | |")
        elif row == "one-at-a-time":
            lines.append(gen_row("`model.generate`, one prompt at a time", r))
        elif row == "hf-default":
            lines.append(gen_row(f"project, hf backend, default (`--batch-size {r.get('batch_size', '?')}`)", r))
        elif row.startswith("hf:"):
            lines.append(gen_row(f"project, hf backend, batch {row.split(':')[1]}", r))
        elif row == "vllm":
            bind = f", cores {r['cpu_threads_bind']}" if r.get("cpu_threads_bind") else ""
            lines.append(gen_row(f"project, vllm backend (engine start {r.get('engine_start_s', 0):.0f} s{bind}, "
                                 "tokens re-counted)", r))
        elif row == "warm":
            lines.append(f"| warm rerun (second run, response cache on): model load {r['load_s']:.1f} s + "
                         f"fingerprint {r['fingerprint_s']:.2f} s + answers {r['gen_s']:.2f} s "
                         f"= load + {r['total_s'] - r['load_s']:.2f} s | | | {r['total_s']:.1f} | {rss(r)} |")
        elif row == "fingerprint":
            lines.append(f"| fingerprint of {r['weights_gib']:.2f} GiB of weights: in-memory hash (before) "
                         f"{r['memory_s']:.2f} s; file hashes cold {r['cold_s']:.2f} s, warm {r['warm_s']:.3f} s "
                         f"| | | | {rss(r)} |")
        elif row in fits:
            lines.append(f"| {fits[row]} ({r['options']}, {r['calibration']} calibration prompts) | | | "
                         f"{r['fit_s']:.1f} | {rss(r)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--languages", default="en,zh,sw,bn")
    parser.add_argument("--per-language", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16,32", help="the hf curve, besides the default")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from msafety_bench.safeio import atomic_write_text

        result = child(args.child, args)
        atomic_write_text(Path(args.work) / f"result-{args.child.replace(':', '-')}.json", json.dumps(result))
        return

    from msafety_bench.errors import UsageError
    from msafety_bench.paths import default_cache_dir

    only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in only if r not in ROWS]
    if unknown or args.per_language < 1 or args.max_new_tokens < 1:
        print(UsageError(f"perf: unknown row(s) {', '.join(unknown) or 'none'} or a size below 1; rows are "
                         f"{', '.join(ROWS)}"), file=sys.stderr)
        raise SystemExit(2)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="msb-perf-") as work:
        # A fresh cache (responses, edits, activations, file hashes) that shares the converted models.
        models = default_cache_dir() / "models"
        if models.is_dir():
            os.symlink(models, Path(work) / "models")
        args.work = work
        plan = []
        for row in only:
            if row == "hf-curve":
                plan += [f"hf:{b}" for b in args.batch_sizes.split(",") if b.strip()]
            elif row == "warm":
                plan += ["hf-default", "warm"] if "hf-default" not in plan else ["warm"]
            elif row == "sparse":
                plan += ["sparse-first", "sparse-refit"]
            elif row not in plan:
                plan.append(row)
        results: dict = {}
        for row in plan:
            print(f"[{time.strftime('%H:%M:%S')}] {row} (load average {os.getloadavg()[0]:.1f})", file=sys.stderr,
                  flush=True)
            if row == "vllm":
                import importlib.util

                if importlib.util.find_spec("vllm") is None:
                    results[row] = {"skipped": "not installed: make vllm"}
                    continue
            results[row] = measure(row, args)
            # Each row as soon as it is measured (the table's last line): a later failure loses nothing.
            print(table(results, args).splitlines()[-1], file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"\nSmolLM2 ({args.model}), {args.per_language} harmful prompts per language in {args.languages}, "
          f"{args.max_new_tokens} new tokens, greedy, response cache off (the default row fills an empty one that the warm row reads); "
          f"{os.cpu_count()} CPUs, load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"{time.time() - started:.0f} s in all.\n")
    print(table(results, args))


if __name__ == "__main__":
    main()
