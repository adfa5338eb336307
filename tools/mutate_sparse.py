"""Mutation check of the sparse editor's tests; run by hand (not in CI) after changing editors/sparse.py
or its tests:

    .venv/bin/python tools/mutate_sparse.py [--all-tests] [MUTANT ...]

Each mutant is a small wrong version of editors/sparse.py: a neuron rule, a formula, a step of the
fit. For each, the package (with ``editors/`` inside it, as installed) is copied into a temporary folder, the mutant applied to the
copy, and the relevant test files run from that folder, so they import the mutant (the worktree is
never changed). The unmutated copy runs first and must pass. Prints the failing tests per mutant;
exits 1 if a mutant fails no test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MATH, EDITOR = "tests/test_sparse_math.py", "tests/test_sparse_editor.py"

# name -> (what is wrong, [(original text, mutated text)], test files that should catch it)
MUTANTS = {
    "rule_and": ("neuron rule z > 2 AND d > 1 instead of OR",
                 [("return (z > tau_mag) | (d > tau_stat)", "return (z > tau_mag) & (d > tau_stat)")], [MATH]),
    "rule_z_only": ("neuron rule by the z-score alone",
                    [("return (z > tau_mag) | (d > tau_stat)", "return z > tau_mag")], [MATH]),
    "z_uncentred": ("z-score without subtracting the mean gap",
                    [("z = (delta - delta.mean(-1, keepdim=True)) / ", "z = delta / ")], [MATH]),
    "sd_harmless_only": ("Cohen's d with the harmless standard deviation only",
                         [("pooled_sd = ((harmful.double().var(0) + harmless.double().var(0)) / 2).sqrt()",
                           "pooled_sd = harmless.double().var(0).sqrt()")], [MATH]),
    "two_sided_z_only": ("two-sided mode takes |z| but not |d|",
                         [("z, d = z.abs(), d.abs()", "z = z.abs()")], [MATH]),
    "dw_zero": ("the solve returns dW = 0",
                [("return self._lift(torch.linalg.solve_triangular(R, Z, upper=True))",
                  "return self._lift(torch.zeros_like(torch.linalg.solve_triangular(R, Z, upper=True)))")], [MATH]),
    "plain_truncation": ("rank-r truncation of the ridge solution, not of the whitened one",
                         [("torch.linalg.svd(R @ torch.cholesky_solve(rhs, L)", "torch.linalg.svd(torch.cholesky_solve(rhs, L)"),
                          ("return self._lift(torch.linalg.solve_triangular(R, Z, upper=True))", "return self._lift(Z)")],
                         [MATH]),
    "lambda_coupled": ("lambda scaled by the trace of the whole Gram (gamma term included)",
                       [("scale = float(torch.trace(gram_x)) / d",
                         "scale = float(torch.trace(gram_x + self.gamma * self.Xs.T @ self.Xs / max(len(self.Xs), 1))) / d")],
                       [MATH]),
    "nullspace_ignored": ("constraint=nullspace solves the soft problem",
                          [("self.basis = null_space_basis(self.Xs, self.null_tol) if self.constraint == \"nullspace\" else None",
                            "self.basis = None")], [MATH, EDITOR]),
    "nullspace_top_directions": ("null space taken from the largest eigenvalues",
                                 [("eig <= tol * eig.max()", "eig >= tol * eig.max()")], [MATH, EDITOR]),
    "layers_on_base_activations": ("later layers fitted on activations of the unedited model",
                                   [("            if k == 0:\n", "            if True:\n")], [EDITOR]),
    "diagnostic_unedited": ("cosine 'after' computed without the edit",
                            [("return resid + (edited - plain)[:, 0].to(\"cpu\", torch.float32)", "return resid")],
                            [EDITOR]),
}


def run_tests(folder: Path, files: list[str]) -> tuple[list[str], int]:
    """Run ``files`` importing ``editors`` from ``folder``; (failing test ids, number of tests run)."""
    report = folder / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(folder)}
    # cwd = folder: `python -m pytest` puts it first on sys.path, and hypothesis keeps its database there.
    subprocess.run([sys.executable, "-m", "pytest", *[str(REPO / f) for f in files], "-q", "-p", "no:cacheprovider",
                    "-p", "_no_shrinking", f"--junitxml={report}"], cwd=folder, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cases = ET.parse(report).getroot().iter("testcase")
    failed, total = [], 0
    for case in cases:
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}")
    return failed, total


# Loaded into each pytest run: a failing property test stops at its first counterexample (which
# test fails is all this script needs; shrinking it would take minutes per mutant).
NO_SHRINKING = """from hypothesis import Phase, settings
settings.register_profile("mutation", phases=(Phase.explicit, Phase.reuse, Phase.generate))
settings.load_profile("mutation")
"""


def prepare(folder: Path, replacements: list[tuple[str, str]]) -> None:
    # The package as installed (editors/ inside it), so `msafety_bench.editors.sparse` is the mutant copy.
    shutil.rmtree(folder / "msafety_bench", ignore_errors=True)
    shutil.copytree(REPO / "msafety_bench", folder / "msafety_bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "editors", folder / "msafety_bench" / "editors", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "_no_shrinking.py").write_text(NO_SHRINKING)
    target = folder / "msafety_bench" / "editors" / "sparse.py"
    text = target.read_text()
    for old, new in replacements:
        if text.count(old) != 1:
            raise SystemExit(f"mutant text not found exactly once in editors/sparse.py: {old!r}: update tools/mutate_sparse.py")
        text = text.replace(old, new)
    target.write_text(text)
    resolved = subprocess.run([sys.executable, "-c", "import msafety_bench.editors.sparse as m; print(m.__file__)"], cwd=folder,
                              env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True).stdout
    if Path(resolved.strip()) != target:
        raise SystemExit(f"the tests would import {resolved.strip()!r}, not the mutant copy")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants", nargs="*", help=f"default: all of {', '.join(MUTANTS)}")
    parser.add_argument("--all-tests", action="store_true", help="run both test files for every mutant")
    args = parser.parse_args(argv)
    unknown = [m for m in args.mutants if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}: choose from {', '.join(MUTANTS)}")
    chosen = args.mutants or list(MUTANTS)
    survivors = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, [])
        failed, total = run_tests(folder, [MATH, EDITOR])
        if failed:
            print(f"the unmutated editor fails {', '.join(failed)}: fix that first", file=sys.stderr)
            return 2
        print(f"unmutated: {total} tests pass\n")
        for name in chosen:
            what, replacements, files = MUTANTS[name]
            prepare(folder, replacements)
            failed, total = run_tests(folder, [MATH, EDITOR] if args.all_tests else files)
            print(f"{name}: {what}\n  fails {len(failed)} of {total}: {', '.join(failed) or 'NONE (survives)'}")
            if not failed:
                survivors.append(name)
    if survivors:
        print(f"\nmutants no test catches: {', '.join(survivors)}", file=sys.stderr)
        return 1
    print(f"\nall {len(chosen)} mutants fail at least one test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
