"""The study report: self-contained HTML that renders in headless Chromium, rebuilt from the
study folder alone, with verdicts computed from the study's numbers."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib import image as mpimg

from cp.analysis import SHIFT_TOLERANCE, optima, optimum_shift, runs_table, sweep_points
from cp.doc import Doc
from cp.study import Study, read_spec
from tests.study_helpers import cpt

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)


def needs_chromium():
    """Skip without Chromium, except where CI says it must be there (.ci/run installs it)."""
    if CHROMIUM is None:
        if os.environ.get("CP_REQUIRE_CHROMIUM"):
            pytest.fail("CP_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")


def render(page: Path, out: Path, size=(1200, 3000)):
    """Headless Chromium's screenshot of ``page``: (exit code, RGB array, console lines)."""
    shot = out / "screenshot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={out / 'profile'}", f"--screenshot={shot}",
         f"--window-size={size[0]},{size[1]}", "--enable-logging=stderr", "--v=0",
         page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    pixels = mpimg.imread(shot)[..., :3] if shot.exists() else None
    return proc.returncode, pixels, console


def coloured_fraction(rgb) -> float:
    """Share of clearly coloured pixels: plots have them; text, tables and blank pages don't."""
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3).mean())


def png_pixels(tmp_path, colour):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.fill_between([0, 1], 0, 1, color=colour)
    path = tmp_path / f"{colour}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def test_doc_renders_markdown_and_a_self_contained_html_page(tmp_path):
    fig = png_pixels(tmp_path, "red")
    doc = Doc("T `x`")
    doc.p("**bold** <script>alert(1)</script> and `code`")
    doc.fig(fig, "a red square")
    doc.table(["a", "b|c"], [["1", "x|y"]])
    md = doc.markdown(tmp_path)
    assert "![a red square](red.png)" in md and "| 1 | x/y |" in md
    page = doc.html()
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # text is escaped
    (data,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(data) == fig.read_bytes()


def test_the_chromium_check_sees_console_errors_and_missing_figures(tmp_path):
    needs_chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>text only</p><script>console.error('boom')</script>"
                   "</body></html>")
    rc, pixels, console = render(bad, tmp_path, size=(800, 600))
    assert rc == 0 and any("boom" in line for line in console)
    assert coloured_fraction(pixels) < 0.001  # no figure, no colour


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_without_errors(tracked_smoke, tmp_path):
    needs_chromium()
    page = tracked_smoke.study / "report" / "report.html"
    text = page.read_text()
    assert not re.search(r'(?:src|href)="(?!data:)', text), "the page fetches something"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 6  # check, transfer, shift, search progress, heat map, target
    for data in images:
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    rc, pixels, console = render(page, tmp_path)
    assert rc == 0
    assert console == [], console
    assert pixels.shape == (3000, 1200, 3)
    assert pixels.std() > 0.05  # not blank
    assert coloured_fraction(pixels) > 0.005  # the figures were drawn


@pytest.mark.slow
def test_cpt_report_rebuilds_the_report_from_the_study_folder_alone(tracked_smoke, tmp_path):
    moved = tmp_path / "elsewhere" / "smoke"
    shutil.copytree(tracked_smoke.study, moved)
    shutil.rmtree(moved / "report")
    out = cpt("report", str(moved), cwd=tmp_path)  # no spec, no workflow here
    assert out.returncode == 0, out.stderr
    for name in ("report.md", "report.html", "summary.json", "runs.parquet",
                 "search_multipliers.png", "optimum_shift_lr.png", "target_target.png"):
        assert (moved / "report" / name).exists(), name
    md = (moved / "report" / "report.md").read_text()
    assert "## Verdicts" in md and "## Transfer sweeps" in md and "## Targets" in md

    # The transfer verdicts say what the sweep's numbers say.
    spec = read_spec(Study(moved))
    points = sweep_points(pl.read_parquet(moved / "sweep" / "runs.parquet"),
                          {"width": spec.models["proxy"].width}, "lr", {"lr": spec.hps.lr})
    shifts = {r["parameterisation"]: r for r in optimum_shift(optima(points)).to_dicts()}
    claims = json.loads((moved / "report" / "summary.json").read_text())["claims"]
    transfer = [c for c in claims if c["claim"] == "transfer"]
    assert {c["parameterisation"] for c in transfer} == set(shifts) == {"completed_p", "sp"}
    for c in transfer:
        s = shifts[c["parameterisation"]]
        assert c["shift_per_doubling"] == pytest.approx(s["shift_per_doubling"])
        assert f"{s['shift_per_doubling']:+.2f} octaves per doubling" in c["text"]
        if s["holds"] is None:  # the smoke's three-point grid often puts an optimum at its edge
            assert c["text"].startswith("**Inconclusive") and s["inconclusive"]
        else:
            assert s["holds"] == (abs(s["shift_per_doubling"]) <= SHIFT_TOLERANCE)
            assert ("does not transfer" in c["text"]) == (not s["holds"])
        assert c["text"] in md
    assert {c["claim"] for c in claims} >= {"coordinate_check", "transfer", "search",
                                            "speedup"}


@pytest.mark.slow
def test_runs_table_holds_every_run_of_the_study_with_its_stage(tracked_smoke):
    study = Study(tracked_smoke.study)
    table = runs_table(study)
    folders = {d.name for d in (study.root / "runs").iterdir()}
    assert set(table["run_id"]) == folders
    for stage in ("sweep", "search", "target"):
        listed = set(pl.read_parquet(study.root / stage / "runs.parquet")["run_id"])
        assert set(table.filter(pl.col("stage") == stage)["run_id"]) == listed
    assert table["lr"].null_count() == 0 and np.all(table["lr"].to_numpy() > 0)
    assert table.filter(pl.col("stage").is_null()).is_empty()  # every run belongs to a stage


def test_publish_writes_the_report_with_its_figures_and_where_the_numbers_came_from(
        tracked_smoke, tmp_path):
    from cp.report import publish
    from cp.study import Study

    out = publish(Study(tracked_smoke.study), tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert "not typed by hand" in text and "from commit" in text and "cores" in text
    links = re.findall(r"\]\((results/[^)]+\.png)\)", text)
    assert links and all((out.parent / link).exists() for link in links)
