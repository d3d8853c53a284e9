"""Per-module search algorithms compared: TRRS, random search, TPE and CMA-ES.

Two parts, both with the same budget and seeds for every algorithm:

1. The real thing: a per-module search of the spec's proxy (its search space, its trial
   batch), every trial a training run through cp's launcher (cached in --results, so a rerun
   costs nothing). Reports the best single-seed loss seen after fixed budgets, the trials each
   algorithm needs to reach random search's final best, and the recommended point re-evaluated
   on fresh seeds (what you would transfer).
2. A synthetic landscape (cp.search.synthetic: known optimum, noise, a cliff) at the same
   dimension, over several seeds: trials until the recommended point is within 1% of the
   optimum.

    python benchmarks/search_comparison.py                    # demo proxy, 48 trials, ~10 min
    python benchmarks/search_comparison.py --trials 200 --spec specs/cpu-study.yaml
    python benchmarks/search_comparison.py --out docs/search-comparison.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from cp.analysis import loss_or_inf
from cp.launch import Launcher
from cp.plan import search_run
from cp.search import ALGORITHMS, SearchSpace, make_searcher
from cp.search.driver import drive
from cp.search.space import Dim
from cp.search.synthetic import CliffLandscape
from cp.spec import load_spec
from cp.stages import _search_space
from cp.study import Study


def best_so_far(trace: list[float]) -> list[float]:
    out, best = [], math.inf
    for v in trace:
        best = min(best, v)
        out.append(best)
    return out


def first_reaching(curve: list[float], target: float) -> str:
    for i, v in enumerate(curve):
        if v <= target:
            return str(i + 1)
    return "never"


def real_part(args, lines: list[str]) -> None:
    spec = load_spec(args.spec, overrides=args.set)
    study = Study(Path(args.results) / f"{spec.name}-search-comparison")
    space = _search_space(spec)
    global_values = {}  # the spec's hps are the starting point (no sweep here)
    budgets = [b for b in (8, 16, 32, 48, 64, 96, 128, 200, 256, 400) if b < args.trials]
    budgets.append(args.trials)
    print(f"[bench] {spec.name} proxy {spec.models[spec.base]}; {space.dim} log2 multipliers; "
          f"{args.trials} trials, {spec.search.batch} in flight", flush=True)
    runner = Launcher(study, spec.launcher, "bench", max_parallel=spec.search.batch,
                      echo=(lambda m: None) if args.quiet else print)
    rows, results = {}, {}
    with runner:
        def evaluate(trials):
            runs = [search_run(spec, global_values, space.multipliers(t.x), t.seed, {})
                    for t in trials]
            res = runner.run(runs)
            return [loss_or_inf(res[r.run_id]) for r in runs]

        for alg in args.algorithms:
            t0 = time.time()
            searcher = make_searcher(alg, space, seed=args.seed, explore_seed=spec.seed,
                                     workdir=study.root / "optuna" / alg, trrs=spec.search.trrs,
                                     resume=False)  # a new search every time
            drive(searcher, evaluate, args.trials, spec.search.batch)
            trace = [t.loss for t in searcher.trials]
            x, _ = searcher.recommend()
            fresh = [search_run(spec, global_values, space.multipliers(x), s, {})
                     for s in args.reeval_seeds]
            res = runner.run(fresh)
            re = [loss_or_inf(res[r.run_id]) for r in fresh]
            rows[alg] = best_so_far(trace)
            results[alg] = (statistics.fmean(re), statistics.stdev(re) if len(re) > 1 else 0.0)
            print(f"[bench] {alg}: best {rows[alg][-1]:.4f}, recommended re-evaluated "
                  f"{results[alg][0]:.4f} ({time.time() - t0:.0f} s)", flush=True)
        glob = [search_run(spec, global_values, space.multipliers(space.center()), s, {})
                for s in args.reeval_seeds]
        res = runner.run(glob)
        g = [loss_or_inf(res[r.run_id]) for r in glob]
    target = rows["random"][-1] if "random" in rows else min(r[-1] for r in rows.values())
    lines += [f"## Per-module search of the `{spec.name}` proxy", "",
              f"Proxy: width {spec.models[spec.base].width}, depth "
              f"{spec.models[spec.base].depth}, {spec.models[spec.base].tokens:,} tokens; "
              f"{space.dim} log2 multipliers (kinds {', '.join(spec.search.kinds)}) in "
              f"+-{spec.search.log2_radius}; {spec.search.batch} trials in flight; search seed "
              f"{args.seed}; every trial trained with seed {spec.seed} (re-evaluations inside "
              f"TRRS use other seeds and count against the budget).", "",
              "Best single-seed final validation loss seen after n trials:", "",
              "| algorithm | " + " | ".join(f"n={b}" for b in budgets) +
              " | trials to reach random's final best | recommended point on seeds "
              f"{list(args.reeval_seeds)} |",
              "|---" * (len(budgets) + 3) + "|"]
    for alg, curve in rows.items():
        mean, std = results[alg]
        lines.append(f"| {alg} | " + " | ".join(f"{curve[b - 1]:.4f}" for b in budgets) +
                     f" | {first_reaching(curve, target)} | {mean:.4f} ± {std:.4f} |")
    lines += ["", f"The global optimum itself (all multipliers 1) on the same seeds: "
              f"{statistics.fmean(g):.4f} ± {statistics.stdev(g) if len(g) > 1 else 0:.4f}.",
              ""]


def synthetic_part(args, dim: int, lines: list[str]) -> None:
    space = SearchSpace(tuple(Dim("lr", "type", f"g{i}") for i in range(dim)), 2.0)
    budget = args.synthetic_trials
    lines += [f"## Synthetic landscape, {dim} dimensions", "",
              f"`cp.search.synthetic.CliffLandscape(dim={dim})`: quadratic bowl with "
              "curvatures spanning 15x, optimum loss 1.0 just below a wiggly divergence cliff, "
              "seed noise 0.002. Trials until the recommended point's noise-free loss is "
              f"within 1% of the optimum (budget {budget}, batch 4), per landscape seed:", "",
              "| algorithm | " + " | ".join(f"seed {s}" for s in range(args.synthetic_seeds)) +
              " | reached | final loss (mean) |", "|---" * (args.synthetic_seeds + 3) + "|"]
    for alg in args.algorithms:
        cells, finals = [], []
        for s in range(args.synthetic_seeds):
            f = CliffLandscape(dim, seed=s)
            searcher = make_searcher(alg, space, seed=s)
            reached = None
            while len(searcher.trials) < budget:
                drive(searcher, lambda ts: [f(t.x, t.seed) for t in ts],  # noqa: B023
                      min(budget, len(searcher.trials) + 4), 4)
                rec = searcher.recommend()
                if reached is None and rec and f.true_loss(rec[0]) <= 1.01:
                    reached = len(searcher.trials)
            cells.append(str(reached) if reached else "-")
            finals.append(f.true_loss(searcher.recommend()[0]))
        n = sum(c != "-" for c in cells)
        lines.append(f"| {alg} | " + " | ".join(cells) + f" | {n}/{args.synthetic_seeds} | "
                     f"{statistics.fmean(finals):.4f} |")
        print(f"[bench] synthetic {alg}: {cells}", flush=True)
    lines.append("")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="specs/demo.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--trials", type=int, default=48, help="budget per algorithm")
    ap.add_argument("--seed", type=int, default=0, help="seed of the search algorithms")
    ap.add_argument("--reeval-seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS),
                    choices=list(ALGORITHMS))
    ap.add_argument("--synthetic-trials", type=int, default=300)
    ap.add_argument("--synthetic-seeds", type=int, default=5)
    ap.add_argument("--synthetic-only", action="store_true")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    ap.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    args = ap.parse_args()
    if "random" not in args.algorithms:
        args.algorithms.append("random")

    t0 = time.time()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lines = ["# Search algorithms compared", "",
             f"Run {datetime.date.today().isoformat()} on {machine()}, commit {commit}, by "
             f"`python benchmarks/search_comparison.py {' '.join(os.sys.argv[1:])}`.", ""]
    if not args.synthetic_only:
        real_part(args, lines)
        dim = _search_space(load_spec(args.spec, overrides=args.set)).dim
    else:
        dim = 16
    synthetic_part(args, dim, lines)
    lines.append(f"Wall time: {(time.time() - t0) / 60:.1f} min.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
