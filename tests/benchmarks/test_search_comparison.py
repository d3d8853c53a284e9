"""benchmarks/search_comparison.py writes its page itself: the JSON, the Markdown with its
tables and figures, and it refuses evaluation seeds that a search trains with."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
SCRIPT = ROOT / "benchmarks" / "search_comparison.py"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_synthetic_part_writes_the_page_and_its_figure(tmp_path):
    out = tmp_path / "docs" / "search-comparison.md"
    done = bench("--spec", str(ROOT / "specs" / "smoke.yaml"), "--synthetic-only",
                 "--synthetic-trials", "12", "--synthetic-seeds", "2", "--out", str(out),
                 "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    md = out.read_text()
    assert "`python benchmarks/search_comparison.py --spec" in md      # the exact command
    assert "| contender | 50% of the gap | 90% of the gap | 99% of the gap |" in md
    for name in ("trrs", "random-local", "random-box", "tpe", "cmaes"):
        assert f"\n| {name} | " in md
    assert "![gap closed against trials" in md
    assert (out.parent / "search-comparison" / "synthetic.png").stat().st_size > 0
    assert "## Per-module search of" not in md                        # no real part asked


def test_evaluation_seeds_that_a_search_trains_with_are_refused_before_any_run(tmp_path):
    done = bench("--spec", str(ROOT / "specs" / "smoke.yaml"), "--eval-seeds", "1", "1000",
                 "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 2
    assert "--eval-seeds [1, 1000] overlap the seeds the searches train with" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_proxy_part_evaluates_recommended_points_on_seeds_no_search_used(tmp_path):
    out = tmp_path / "search-comparison.md"
    done = bench("--spec", str(ROOT / "specs" / "smoke.yaml"), "--algorithms", "trrs",
                 "random-local", "--trials", "5", "--search-seeds", "0", "1", "--eval-seeds",
                 "7", "--synthetic-trials", "8", "--synthetic-seeds", "2", "--quiet", "--out",
                 str(out), "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "results" / "smoke" / "search_comparison.json").read_text())
    real = data["real"]
    for runs in real["runs"].values():
        assert len(runs) == 2
        for r in runs:
            assert r["trace"][-1][0] == 5 and len(r["fresh"]) == 1
            assert 7 not in r["seeds_used"]
    assert len(real["start_fresh"]) == 1
    md = out.read_text()
    assert "## Per-module search of the `smoke` proxy" in md
    assert "trained on seeds [7], which no contender searched with" in md
    assert (tmp_path / "search-comparison" / "proxy.png").exists()


def test_the_page_can_be_written_again_from_an_earlier_runs_numbers(tmp_path):
    fixture = ROOT / "tests" / "search" / "data" / "search_comparison.json"
    out = tmp_path / "page.md"
    done = bench("--render", str(fixture), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    md = out.read_text()
    assert "by `python benchmarks/search_comparison.py --out docs/search-comparison.md`" in md
    assert "this page written again from its numbers by `python " in md
    assert "| trrs | 4/4: 6 (4–8) |" in md
    assert (tmp_path / "page" / "proxy.png").exists()
