"""The study report: self-contained HTML that renders in headless Chromium, rebuilt from the
study folder alone, with verdicts computed from the study's numbers."""

import base64
import json
import re
import shutil

import numpy as np
import polars as pl
import pytest

from cp.analysis import optimum_shift, sweep_points
from cp.spec import read_study_spec
from cp.stages import STAGES, runs_table
from cp.study import Study
from tests.chromium import coloured_fraction, needs_chromium, render
from tests.study_helpers import cpt


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
                 "search_factors.png", "optimum_shift_lr.png", "target_target.png"):
        assert (moved / "report" / name).exists(), name
    md = (moved / "report" / "report.md").read_text()
    assert "## Verdicts" in md and "## Transfer sweeps" in md and "## Targets" in md

    # The transfer verdicts say what the sweep's numbers say.
    spec = read_study_spec(Study(moved))
    points = sweep_points(pl.read_parquet(moved / "sweep" / "runs.parquet"),
                          {"width": spec.models["proxy"].width}, "lr", {"lr": spec.hps.lr})
    shifts = {r["parameterisation"]: r for r in
              optimum_shift(points, "lr", spec.sweeps.tolerance).to_dicts()}
    claims = json.loads((moved / "report" / "summary.json").read_text())["claims"]
    transfer = [c for c in claims if c["claim"] == "transfer"]
    assert {c["parameterisation"] for c in transfer} == set(shifts) == {"completed_p", "sp"}
    for c in transfer:
        s = shifts[c["parameterisation"]]
        assert c["shift_per_doubling"] == pytest.approx(s["shift_per_doubling"])
        assert c["verdict"] == s["verdict"] and c["tolerance"] == spec.sweeps.tolerance
        start = {"holds": "**lr transfers across", "fails": "**lr does not transfer across",
                 "cannot tell": "**Cannot tell whether lr transfers"}[s["verdict"]]
        assert c["text"].startswith(start) and s["why"] in c["text"]
        if s["ci_low"] is not None:
            assert s["ci_low"] <= s["shift_per_doubling"] <= s["ci_high"]
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
    from cp.stages.report import publish

    study = Study(tracked_smoke.study)
    out = publish(read_study_spec(study), study, STAGES, tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert "not typed by hand" in text and "from commit" in text and "cores" in text
    links = re.findall(r"\]\((results/[^)]+\.png)\)", text)
    assert links and all((out.parent / link).exists() for link in links)
