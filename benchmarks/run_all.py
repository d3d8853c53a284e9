"""All of cp's performance numbers in one run, written to docs/benchmarks.md.

1. Trainer step time against a nanoGPT-style reference of the same shape (throughput.py).
2. The pipeline's overhead on specs/demo.yaml: the study is run fresh through Snakemake and
   its wall time is split into time inside training runs (from each run's event log), time
   inside stages but outside runs (the coordinate check, the launcher, fits, the report,
   tracking), and time outside stages (Snakemake and process start-up); stage times come
   from each stage's record (<stage>/stage.json).
3. Time to plan a 10,000-run spec (expanding stages and hashing every run's resolved config).

    python benchmarks/run_all.py [--out docs/benchmarks.md] [--skip-pipeline]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search_comparison import machine
from throughput import measure

from cp.pipeline import plan
from cp.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of intervals."""
    total, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def pipeline_overhead(spec: str) -> dict:
    """Run ``spec`` fresh through Snakemake in a scratch copy of the workflow."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("Snakefile", "workflow", "profiles", "specs"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local",
                               "--config", f"spec={spec}"], cwd=work, capture_output=True,
                              text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        study = next((work / "results").iterdir())
        runs = []
        for events in (study / "runs").glob("*/events.jsonl"):
            ev = [json.loads(line) for line in events.read_text().splitlines()]
            starts = [e["time"] for e in ev if e["event"] == "start"]
            ends = [e["time"] for e in ev if e["event"] == "finish"]
            runs += list(zip(starts, ends, strict=False))
        stages = [json.loads(p.read_text()) for p in study.glob("*/stage.json")]
        stages = [{"stage": s["stage"], "start": s["started"], "end": s["finished"]}
                  for s in sorted(stages, key=lambda s: s["started"])]
        in_runs = union_length(runs)
        in_stages = sum(s["end"] - s["start"] for s in stages)
        per_stage = {}
        for s in stages:
            inside = union_length([(max(a, s["start"]), min(b, s["end"])) for a, b in runs
                                   if b > s["start"] and a < s["end"]])
            per_stage[s["stage"]] = (s["end"] - s["start"], inside)
        return {"wall": wall, "in_runs": in_runs, "in_stages": in_stages,
                "per_stage": per_stage, "n_runs": len(runs)}


def plan_time(n_target: int = 10_000) -> tuple[int, float]:
    spec = load_spec(REPO / "specs" / "cpu-study.yaml")
    spec.sweeps.grid = {"lr": list(np.geomspace(1e-4, 1e-1, 50)),
                        "weight_decay": [0.0, 0.05, 0.1, 0.2, 0.4]}
    spec.sweeps.parameterisations = []
    spec.sweeps.axes = {}
    spec.sweeps.extra = []
    spec.sweeps.seeds = list(range(n_target // 250))  # 250 grid points x seeds, all distinct
    t = time.perf_counter()
    stages = plan(spec)
    return sum(s.runs for s in stages), time.perf_counter() - t


#: What this script cannot measure where it usually runs (a CPU), kept in docs/benchmarks.md
#: until a run on a GPU records it with its date and device.
GPU_MISSING = [
    "## GPU figures (not measured yet)", "",
    "The sharded targets (issue 15) were built without a GPU: their acceptance rests on CPU "
    "tests on 2 gloo ranks (tests/test_parallel.py, tests/test_slurm.py). Missing, each to be "
    "recorded here with its date and device:", "",
    "- FSDP2 throughput (tokens/s per GPU) at real widths (1024-4096) in bf16, with and "
    "without torch.compile and activation checkpointing, and its scaling from 8 to 64 GPUs;",
    "- model FLOP utilisation of those runs against the GPU's bf16 peak (FLOPs per token from "
    "`cp.config.flops_per_token`, as `cpt plan` prints them);",
    "- the peak memory per GPU (`torch.cuda.max_memory_allocated`) against `cpt plan`'s "
    "estimate (`cp/memory.py`), which counts what eager CPU kernels save for backward;",
    "- `benchmarks/throughput.py` with `--precision bf16 --compile` on a GPU (the ratio above "
    "is a CPU figure).", "",
    "torch.compile of an FSDP2-sharded model with activation checkpointing has run on CPU "
    "(2 gloo ranks, 10 steps: train losses within 2e-7 of an eager single process); it was "
    "not timed.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--spec", default="specs/demo.yaml")
    args = ap.parse_args()
    lines = ["# Benchmarks", "", f"Run {datetime.date.today().isoformat()} on {machine()} by "
             f"`python benchmarks/run_all.py`.", ""]

    r = measure()
    lines += ["## Trainer step time against a nanoGPT-style reference", "",
              f"Width {r['width']}, depth {r['depth']}, batch {r['batch']} x {r['seq_len']}, "
              f"{r['params'] / 1e6:.2f}M parameters, {r['device']}, {r['threads']} threads; "
              f"ours: Complete(d)P transferred from a 4x narrower, 2x shallower base "
              f"({r['param_groups']} AdamW param groups, separate q/k/v, forward "
              "multipliers); reference: fused qkv, one decay and one no-decay group. Median "
              "of alternating rounds.", "",
              "| | ms/step | tokens/s |", "|---|---|---|",
              f"| cp | {r['ours_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} |",
              f"| reference | {r['ref_s'] * 1e3:.1f} | "
              f"{r['batch'] * r['seq_len'] / r['ref_s']:,.0f} |",
              "", f"**Ratio cp / reference: {r['ratio']:.3f}**", ""]
    print("\n".join(lines[-9:]), flush=True)

    if not args.skip_pipeline:
        p = pipeline_overhead(args.spec)
        outside = p["wall"] - p["in_stages"]
        stage_rest = p["in_stages"] - p["in_runs"]
        lines += [f"## Pipeline overhead on `{args.spec}`", "",
                  f"The study run fresh through `snakemake --profile profiles/local`: "
                  f"{p['n_runs']} training runs, wall time {p['wall']:.0f} s.", "",
                  "| where the wall time went | s | share |", "|---|---|---|",
                  f"| inside training runs (any run in flight) | {p['in_runs']:.0f} | "
                  f"{p['in_runs'] / p['wall']:.1%} |",
                  f"| inside stages, no run in flight (coordinate check, pool start-up, "
                  f"fits, plots, report) | {stage_rest:.0f} | {stage_rest / p['wall']:.1%} |",
                  f"| outside stages (Snakemake, process and import start-up) | "
                  f"{outside:.0f} | {outside / p['wall']:.1%} |", "",
                  "| stage | wall s | with a run in flight |", "|---|---|---|"]
        for stage, (w, inside) in p["per_stage"].items():
            lines.append(f"| {stage} | {w:.1f} | {inside / w if w else 0:.0%} |")
        overhead = 1 - p["in_runs"] / p["wall"]
        lines += ["", f"**Overhead share (wall time with no training run in flight): "
                  f"{overhead:.1%}**", ""]
        print("\n".join(lines[-12:]), flush=True)

    n, t = plan_time()
    lines += ["## Planning a large study", "",
              f"`cp.pipeline.plan` on a spec of {n:,} distinct runs (expanding every stage and "
              f"hashing every run's resolved config): **{t:.1f} s** "
              f"({t / n * 1e3:.2f} ms per run).", ""]
    print(lines[-2], flush=True)
    lines += GPU_MISSING
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
