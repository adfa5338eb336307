"""HTML report and leaderboard from real runs of five editors, checked in a real headless Chromium."""

import json
import shutil
from pathlib import Path

import pytest

from msafety_bench.metrics.correction import attach_to_results, corrected_by_language, validation_figures
from msafety_bench.pipeline import BenchRun, RunOptions
from msafety_bench.report import leaderboard_rows, render_leaderboard, render_report
from msafety_bench.results import build_results, write_results

EDITORS = ["none", "sparse", "steering", "sft", "sft+sparse"]
PAYLOAD = '<img src=x onerror=alert(1)><script>alert("xss")</script>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """Five real runs on tiny-qwen2 (en, bn; 2 prompts per label), written as results files; all but the
    first carry judge-corrected ASR, as the plugin writes it (the first is a file from before)."""
    folder = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    for editor in EDITORS:
        opts = ["sft.steps=2", "sft.harmless_per_language=1", "sft.answer_tokens=2"] if "sft" in editor else []
        if editor == "sft":
            opts = [o.split(".", 1)[1] for o in opts]
        run = BenchRun(RunOptions(model="tiny-qwen2", editor=editor, editor_opts=opts, languages="en,bn", limit=2,
                                  max_new_tokens=6, cache_dir=str(cache), device="cpu", progress=False))
        run.execute()
        results = build_results(run)
        if editor != "none":
            figures = validation_figures(run.options.make_judge(), "heldout", False, None)
            attach_to_results(results, figures, corrected_by_language(run.metrics, figures, "refusal"))
        results["run_id"] += f"-{editor.replace('+', '-')}"
        if editor == "steering":  # untrusted model output, as an attacker would craft it
            results["samples"][0]["response"] = PAYLOAD
        write_results(results, folder)
    return folder


def test_report_contents_and_escaping(results_dir, tmp_path):
    files = sorted(str(p) for p in results_dir.glob("*.json"))
    out = render_report(files, str(tmp_path / "report.html"))
    html = out.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import"):
        assert external not in html, "the report must load nothing from the network"
    for editor in EDITORS:
        assert f"tiny-qwen2 / {editor}" in html
    assert "<svg" in html and "Representation diagnostics" in html and "harmful content" in html
    runs = [json.loads(Path(f).read_text()) for f in files]
    incompetent = {lang for r in runs for lang, m in r["metrics"]["languages"].items() if m["competent"] is False}
    assert ("gave usable answers to fewer than 50%" in html) == bool(incompetent)
    for lang in incompetent:
        assert f"{lang} &dagger;" in html
    assert "validated on heldout (" in html and "corrected " in html
    assert "tiny-qwen2 / none, en, bn: raw only, no validation figures in this results file" in html


def test_leaderboard_groups_and_ranks(results_dir, tmp_path):
    rows = leaderboard_rows(str(results_dir))
    assert len(rows) == 5 and len({r["group"] for r in rows}) == 1
    ranked = [r for r in rows if r["rank"]]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert all(a["lrl"] <= b["lrl"] for a, b in zip(ranked, ranked[1:]))
    assert [r["corrected_note"] for r in rows if r["editor"] == "none"] == ["no corrected ASR (raw used) for en, bn"]
    by_corrected = [r for r in leaderboard_rows(str(results_dir), asr="corrected") if r["rank"]]
    assert all(a["lrl_corrected"] <= b["lrl_corrected"] for a, b in zip(by_corrected, by_corrected[1:]))
    render_leaderboard(str(results_dir), str(tmp_path / "lb.html"), str(tmp_path / "lb.md"), str(tmp_path / "lb.csv"))
    assert "| 1 | tiny-qwen2 |" in (tmp_path / "lb.md").read_text()
    assert len((tmp_path / "lb.csv").read_text().splitlines()) == 6


def test_leaderboard_separates_judges_and_datasets(results_dir, tmp_path):
    other = tmp_path / "mixed"
    shutil.copytree(results_dir, other)
    path = sorted(other.glob("*.json"))[0]
    data = json.loads(path.read_text())
    digest = data["judge"]["config"]["digest"]
    data["judge"] = {"name": "another-judge", "config": {}}
    path.write_text(json.dumps(data))
    second = sorted(other.glob("*.json"))[1]
    older = json.loads(second.read_text())
    older["judge"]["config"]["digest"] = "0ld1ex1c0n00"  # the same judge with other phrase lists
    second.write_text(json.dumps(older))
    groups = {r["group"] for r in leaderboard_rows(str(other))}
    assert groups == {f"msb-core / judge refusal ({digest})", "msb-core / judge another-judge",
                      "msb-core / judge refusal (0ld1ex1c0n00)"}


def test_report_and_leaderboard_in_headless_chromium(results_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    files = sorted(str(p) for p in results_dir.glob("*.json"))
    report = render_report(files, str(tmp_path / "report.html"))
    board = render_leaderboard(str(results_dir), str(tmp_path / "leaderboard.html"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
        for page_file, expected in ((report, ["bn", "Bengali", "tiny-qwen2 / sft+sparse", "Attack success rate"]),
                                    (board, ["tiny-qwen2", "sparse", "LRL"])):
            page = browser.new_page()
            errors, dialogs = [], []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(page_file.resolve().as_uri())
            page.wait_for_load_state("load")
            if page_file == report:
                for summary in page.locator("summary").all():
                    summary.click()  # open everything collapsed, the drill-down with the hostile answer too
            shot = tmp_path / f"{page_file.stem}.png"
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            assert shot.stat().st_size > 10_000
            for needle in expected:
                assert needle in text, needle
            assert errors == [] and dialogs == []
            assert page.locator("img").count() == 0 and page.locator("script").count() == 0
            if page_file == report:
                assert "<img src=x onerror=alert(1)>" in text  # shown as text
            page.close()
        browser.close()

