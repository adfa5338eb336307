"""The built wheel is the product: installed into a fresh venv, away from the checkout, it runs the
suites (`msafety-bench run` = `pytest --pyargs msafety_bench.suites`) with its editors and templates.

The fresh venv holds only the wheel; its dependencies (torch, transformers, ...) are borrowed from
this environment through one .pth line, because installing torch again would take minutes. The
editable install of the checkout is not active there (its .pth hook is not processed on that path),
and the test checks that every module came from the wheel.
"""

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds a wheel and runs the suites in a new interpreter: about a minute of CPU
def test_wheel_in_a_fresh_venv_runs_the_suites_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(wheels.glob("msafety_bench-*.whl"))
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    where = subprocess.run(
        [python, "-c", "import msafety_bench.editors.sparse as e, msafety_bench.suites as s;"
                       "from importlib.resources import files; print(e.__file__, s.__file__,"
                       " files('msafety_bench.reports').joinpath('report.html.j2').is_file(),"
                       " len(list(files('msafety_bench.utility').joinpath('data').iterdir())) > 0)"],
        cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where[:2]), where
    assert where[2:] == ["True", "True"]  # report templates and utility task data are package data
    run = subprocess.run(
        [python, "-m", "msafety_bench.cli", "run", "--model", "tiny-qwen2", "--editor", "sparse", "--languages", "en,sw",
         "--limit", "2", "--max-new-tokens", "4", "-k", "asr or overrefusal", "--results-dir", str(work / "results"),
         "--cache-dir", str(tmp_path / "cache"), "--no-progress", "-p", "no:cacheprovider", "--report",
         str(work / "report.html")],
        cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(next((work / "results").glob("*.json")).read_text())
    assert data["editor"]["name"] == "sparse" and set(data["metrics"]["languages"]) == {"en", "sw"}
    ran = sorted(key.rsplit("::", 1)[-1] for key, outcome in data["tests"].items() if outcome == "passed")
    assert ran == ["test_asr[en]", "test_asr[sw]", "test_overrefusal[en]", "test_overrefusal[sw]"], data["tests"]
    assert (work / "report.html").stat().st_size > 1000
