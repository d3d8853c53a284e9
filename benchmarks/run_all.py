"""All of cp's performance numbers in one command, written to docs/benchmarks.md.

    python benchmarks/run_all.py [--out docs/benchmarks.md] [--repeats 3] [--skip-demo]

1. Step time: cp's model like for like and with its defaults against an independent
   GPT-2-recipe reference (throughput.py, reference_gpt.py).
2. The smoke and demo studies run fresh through Snakemake (`profiles/local`) in a scratch copy
   of the workflow: the share of wall time inside training steps, from the runs' own timings
   (see `training_share`), and the peak memory of every process (Snakemake, each stage's
   process, its pool workers), sampled while it runs.
3. Tracking on/off: the smoke study with its embedded MLflow store and with
   ``tracking.enabled: false``, alternating, ``--repeats`` pairs; the median of the paired
   ratios.
4. Worker start-up: a fresh Python process, as a pool worker is spawned, timed to its first
   training step, phase by phase (imports, the optimiser's first construction -- torch._dynamo
   is imported lazily by torch.optim.Optimizer.__init__ --, the first step).
5. Planning 1k, 10k and 100k runs (`cp.pipeline.plan`: expanding every stage and hashing every
   run's resolved config).

The machine's load average is recorded at the start and the end: a busy machine inflates
every figure. No GPU figures (torch.compile is the GPU path) unless run on one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CONFIDENCE, HEAD_DIM, MODELS, measure

from cp.pipeline import plan
from cp.provenance import git_commit, machine
from cp.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
TRACKING_OFF = "overrides={tracking: {enabled: false}}"


# ---------------------------------------------------------------------------------------------
# Studies through Snakemake.


class PeakMemory:
    """Samples the peak resident memory (VmHWM, else RSS) of a process tree every ``every``
    seconds while it runs; each process is labelled by what it is: ``snakemake``, ``stage
    <name>`` (a `cpt stage` process, and the shell Snakemake starts it from), ``worker of
    <name>`` (its pool's workers), and others by name."""

    def __init__(self, root_pid: int, every: float = 0.2):
        import psutil  # a dependency of snakemake

        self.root = psutil.Process(root_pid)
        self.every = every
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _label(p: Any) -> str:
        line = " ".join(p.cmdline())
        if "resource_tracker" in line:
            return "multiprocessing resource tracker"
        if "spawn_main" in line:  # a pool worker: whose stage?
            for parent in p.parents():
                cmd = parent.cmdline()
                if "stage" in cmd and "cp.cli" in " ".join(cmd):
                    return "worker of " + cmd[cmd.index("stage") + 1]
            return "worker"
        if "cp.cli" in line and "stage" in p.cmdline():
            cmd = p.cmdline()
            return "stage " + cmd[cmd.index("stage") + 1]
        if "snakemake" in line:
            return "snakemake"
        return "other: " + (p.name() or "?")

    @staticmethod
    def _hwm(pid: int, rss: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return rss

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                old = self.peak.get(p.pid)
                label = old[0] if old else self._label(p)
                mem = self._hwm(p.pid, p.memory_info().rss)
            except psutil.Error:
                continue
            self.peak[p.pid] = (label, max(mem, old[1] if old else 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        """The largest peak of each kind of process, in bytes."""
        self._stop.set()
        self._thread.join()
        out: dict[str, int] = {}
        for label, mem in self.peak.values():
            out[label] = max(out.get(label, 0), mem)
        return out


def training_share(study: Path, wall: float) -> dict[str, float]:
    """How much of ``wall`` the study spent inside training steps, from its runs' own timings.

    Each run's result gives its time inside training steps (forward, backward, optimiser and
    fetching the batch; its evaluations, checkpoints and start-up excluded): tokens /
    tokens_per_s. Its event log gives the interval it was in flight. Over the study's wall
    time, each instant counts for the mean fraction of in-flight time that the runs in flight
    then spend in steps (0 when none is): parallel runs on a shared machine count once, a
    sequential study reduces to sum(train time) / wall.
    """
    # time -> (change of the sum of the in-flight runs' fractions, change of their number)
    deltas: dict[float, tuple[float, int]] = {}

    def add(t: float, df: float, dn: int) -> None:
        f0, n0 = deltas.get(t, (0.0, 0))
        deltas[t] = (f0 + df, n0 + dn)

    train = 0.0
    for run in (study / "runs").iterdir():
        result, events = run / "result.json", run / "events.jsonl"
        if not (result.exists() and events.exists()):
            continue
        r = json.loads(result.read_text())
        ev = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        starts = [e["time"] for e in ev if e["event"] == "start"]
        ends = [e["time"] for e in ev if e["event"] == "finish"]
        if not starts or not ends or not r.get("tokens_per_s"):
            continue
        steps_s = r["tokens"] / r["tokens_per_s"]
        a, b = starts[-1], ends[-1]
        train += steps_s
        if b > a:
            f = min(1.0, steps_s / (b - a))
            add(a, f, 1)
            add(b, -f, -1)
    inside, frac, n, last = 0.0, 0.0, 0, None
    for t in sorted(deltas):
        if last is not None and n > 0:
            inside += (t - last) * frac / n
        df, dn = deltas[t]
        frac, n, last = frac + df, n + dn, t
    return {"in_steps_s": inside, "share": inside / wall if wall else 0.0,
            "sum_train_s": train}


def run_study(spec: str, tracking: bool = True) -> dict[str, Any]:
    """``spec`` fresh through ``snakemake --profile profiles/local`` in a scratch copy of the
    workflow: wall time, the share inside training steps, stage times, peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("Snakefile", "workflow", "profiles", "specs"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--config",
               f"spec={spec}", *([] if tracking else [TRACKING_OFF])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("MLFLOW_TRACKING_URI", None)  # the study's embedded store
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        memory = PeakMemory(proc.pid)
        out, _ = proc.communicate()
        wall = time.time() - t0
        peaks = memory.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake failed:\n{out[-4000:]}")
        study = next((work / "results").iterdir())
        stages = sorted((json.loads(p.read_text()) for p in study.glob("*/stage.json")),
                        key=lambda s: s["started"])
        return {"spec": spec, "tracking": tracking, "wall": wall,
                "runs": sum(1 for _ in (study / "runs").iterdir()),
                "stages": {s["stage"]: s["finished"] - s["started"] for s in stages},
                "peak_memory": peaks, **training_share(study, wall)}


def tracking_ratio(spec: str = "specs/smoke.yaml", repeats: int = 3) -> dict[str, Any]:
    """The study's wall time with tracking on and off, alternating (on first, then off, per
    pair), and the median of the paired ratios."""
    on, off = [], []
    for _ in range(repeats):
        on.append(run_study(spec, tracking=True))
        off.append(run_study(spec, tracking=False))
    ratios = [a["wall"] / b["wall"] for a, b in zip(on, off, strict=True)]
    return {"on": [r["wall"] for r in on], "off": [r["wall"] for r in off],
            "ratio": statistics.median(ratios), "on_runs": on, "off_runs": off}


# ---------------------------------------------------------------------------------------------
# Worker start-up and planning.

# A fresh interpreter doing what a pool worker does before its first step.
_WORKER = r"""
import json, sys, time
t = {"python": time.time()}
import torch
torch.set_num_threads(1)
t["import torch"] = time.time()
from cp.config import RunConfig, ArchConfig
from cp.model import GPT
from cp.optim import build_optimizer
from cp.schedule import ScheduleConfig
from cp.scaling import Scale
t["import cp"] = time.time()
s = Scale(64, 2, 8, 8 * 32 * 100, 32)
cfg = RunConfig(scale=s, base_scale=s, arch=ArchConfig(head_dim=16))
settings = cfg.settings()
model = GPT(cfg.model_config(256), settings)
t["model"] = time.time()
opt, sched = build_optimizer(model.tagged_parameters(), settings, ScheduleConfig(), 100)
t["optimiser (torch._dynamo)"] = time.time()
x = torch.randint(0, 256, (8, 33))
loss, _ = model(x[:, :-1], x[:, 1:])
loss.backward(); opt.step(); opt.zero_grad()
t["first step"] = time.time()
print(json.dumps(t))
"""


def worker_startup(repeats: int = 3) -> dict[str, float]:
    """Median seconds of each phase from launching a fresh interpreter to its first step."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    phases: dict[str, list[float]] = {}
    for _ in range(repeats):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", _WORKER], env=env, capture_output=True,
                             text=True, check=True).stdout
        t = json.loads(out.strip().splitlines()[-1])
        prev = t0
        for name, when in t.items():
            phases.setdefault(name, []).append(when - prev)
            prev = when
        phases.setdefault("total", []).append(prev - t0)
    return {k: statistics.median(v) for k, v in phases.items()}


def plan_time(n_target: int = 10_000) -> tuple[int, float]:
    """(runs planned, seconds) for a spec of about ``n_target`` distinct runs: a 250-point
    grid times n_target / 250 seeds."""
    spec = load_spec(REPO / "specs" / "cpu-study.yaml")
    spec.sweeps.grid = {"lr": list(np.geomspace(1e-4, 1e-1, 50)),
                        "weight_decay": [0.0, 0.05, 0.1, 0.2, 0.4]}
    spec.sweeps.parameterisations = []
    spec.sweeps.axes = {}
    spec.sweeps.extra = []
    spec.sweeps.seeds = list(range(max(1, n_target // 250)))
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


# ---------------------------------------------------------------------------------------------
# The document.


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def step_section(r: dict[str, Any]) -> list[str]:
    s, tps = r["step_s"], r["tokens_per_s"]

    def ratio(name: str) -> str:
        if name == "reference":
            return "1"
        mid, low, high = r["ratio"][name]
        return f"{mid:.3f} ({low:.3f}-{high:.3f})"
    rows = [f"| {name} | {s[name] * 1e3:.1f} | {ratio(name)} | {tps[name]:,.0f} | "
            f"{r['params'][name] / 1e6:.2f}M | {r['param_groups'][name]} |" for name in MODELS]
    mid, low, high = r["ratio"]["like_for_like"]
    verdict = ("met" if high <= 1.03 else "missed" if low > 1.03 else
               "cannot tell: the interval straddles 1.03; more --rounds would decide it")
    return ["## Training step against an independent GPT-2-recipe reference", "",
            f"Width {r['width']}, depth {r['depth']}, {r['heads']} heads of {HEAD_DIM}, batch "
            f"{r['batch']} x {r['seq_len']}, {r['precision']}, {r['device']}, {r['threads']} "
            f"threads; {r['rounds']} alternating rounds of {r['steps']} steps (order rotated "
            "each round). A step is forward, backward and the AdamW step. Ratio: the median of "
            f"the per-round ratios to the reference, with its {CONFIDENCE:.0%} bootstrap "
            "interval over rounds.", "",
            "- reference (`benchmarks/reference_gpt.py`, imports nothing from cp): learned "
            "positions, LayerNorm, GELU x4, fused qkv, SDPA, untied, no biases, AdamW with a "
            "decay and a no-decay group.",
            "- like_for_like: cp's GPT with the reference's architecture (`norm: layernorm`, "
            "`positions: learned`, `fused_qkv: true`, `mlp: gelu`, `mlp_ratio: 4`, "
            "`qk_norm: false`), the same parameters tensor for tensor; what differs is what cp "
            "adds: forward multipliers and per-(group, layer) AdamW groups (Complete(d)P "
            "transferred from a 4x narrower, 2x shallower base).",
            "- rms_rope: like_for_like with cp's default RMSNorm and RoPE (no position table).",
            "- defaults: cp's default architecture (separate q/k/v, SwiGLU x3, QK-norm, RMSNorm, "
            "RoPE) at the same shape.",
            "", "| model | ms/step | ratio to reference | tokens/s | parameters | AdamW groups |",
            "|---|---|---|---|---|---|",
            *rows, "",
            f"**like_for_like / reference: {mid:.3f} ({low:.3f}-{high:.3f})**, goal <= 1.03: "
            f"{verdict}.", "",
            "Missing: torch.compile and GPU figures (`--compile`, `--device cuda`,"
            " `--precision bf16`); this machine has no GPU.", ""]


def study_section(r: dict[str, Any]) -> list[str]:
    lines = [f"## `{r['spec']}` through Snakemake", "",
             f"Fresh, `profiles/local`, "
             f"{'tracking to the embedded store' if r['tracking'] else 'tracking off'}: "
             f"{r['runs']} runs, wall time {r['wall']:.1f} s.", "",
             f"**Inside training steps: {r['in_steps_s']:.1f} s, {r['share']:.1%} of the wall "
             f"time** (the runs' own step time, tokens / tokens_per_s, {r['sum_train_s']:.1f} s "
             "summed over runs; parallel runs counted once, see `training_share`).", "",
             "| stage | wall s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["stages"].items()]
    lines += ["", "| process | peak resident memory (MB) |", "|---|---|"]
    lines += [f"| {k} | {_mb(v)} |" for k, v in sorted(r["peak_memory"].items())]
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--repeats", type=int, default=3,
                    help="pairs of tracking on/off smoke runs, worker start-ups")
    ap.add_argument("--skip-demo", action="store_true", help="the smoke study only")
    args = ap.parse_args()
    load_start = _load()
    lines: list[str] = []

    def show(new: list[str]) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)

    show(step_section(measure(rounds=15)))
    tr = tracking_ratio("specs/smoke.yaml", args.repeats)
    show(study_section(tr["on_runs"][0]))
    show(["## Tracking on/off (`specs/smoke.yaml`)", "",
          "Wall time with the embedded MLflow store and with `tracking.enabled: false`, "
          f"alternating, {args.repeats} pairs.", "",
          "| tracking | wall s (each run) |", "|---|---|",
          f"| on | {', '.join(f'{w:.1f}' for w in tr['on'])} |",
          f"| off | {', '.join(f'{w:.1f}' for w in tr['off'])} |", "",
          f"**Median ratio on / off: {tr['ratio']:.2f}** (goal <= 1.10).", ""])
    if not args.skip_demo:
        show(study_section(run_study("specs/demo.yaml")))
    ws = worker_startup(args.repeats)
    show(["## Worker start-up", "",
          f"A fresh interpreter, as a spawned pool worker, to its first training step (median "
          f"of {args.repeats}); seconds per phase. In a pipeline a stage's workers pay this "
          "once per stage, and start while the stage checks its models and plans its runs "
          "(`cp.launch.warm_workers`); they import torch._dynamo before their first run.", "",
          "| phase | s |", "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in ws.items()], ""])
    rows = []
    for n in (1_000, 10_000, 100_000):
        runs, t = plan_time(n)
        rows.append(f"| {runs:,} | {t:.2f} | {t / runs * 1e3:.3f} |")
    show(["## Planning", "",
          "`cp.pipeline.plan` of a spec of n distinct runs (expanding every stage, resolving "
          "and hashing every run's config).", "",
          "| runs | s | ms per run |", "|---|---|---|", *rows, "",
          "Goals: 10,000 runs in <= 1 s, 100,000 in <= 10 s.", ""])
    show(GPU_MISSING)
    head = ["# Benchmarks", "",
            f"Run {datetime.datetime.now().isoformat(timespec='minutes')} on {machine()}, "
            f"commit {git_commit() or 'unknown'}, by `python benchmarks/run_all.py`. Load "
            f"average (1, 5, 15 min) at the start {load_start}, at the end {_load()}: figures "
            "taken on a busy machine are slower and noisier.", ""]
    Path(args.out).write_text("\n".join(head + lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
