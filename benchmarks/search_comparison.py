"""Per-module search algorithms compared: TRRS, random search, TPE and CMA-ES.

Two parts, both with the same budget and seeds for every algorithm:

1. The real thing: a per-module search of the spec's proxy (its search space, its trial
   batch), every trial a training run through cp's launcher, cached in the spec's study
   folder (a rerun, or the study's own search stage, reuses them). Reports the best
   single-seed loss seen after fixed budgets, the trials each algorithm needs to reach random
   search's final best, and the recommended point re-evaluated on fresh seeds (what you would
   transfer).
2. A synthetic landscape (cp.search.synthetic: known optimum, noise, a cliff) at the same
   dimension, over several seeds: trials until the recommended point is within 1% of the
   optimum.

The numbers go to ``results/<study>/search_comparison.json``, where the study's report picks
them up, and as Markdown to --out.

    python benchmarks/search_comparison.py                    # demo proxy, 48 trials
    python benchmarks/search_comparison.py --spec specs/cpu-study.yaml --trials 96
    python benchmarks/search_comparison.py --out docs/search-comparison.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time

from cp.doc import Doc
from cp.launch import Launcher
from cp.provenance import git_commit, machine
from cp.search import ALGORITHMS, SearchSpace, make_searcher
from cp.search.driver import drive
from cp.search.space import Dim
from cp.search.synthetic import CliffLandscape
from cp.spec import load_spec
from cp.stages.search import search_comparison_section, search_run, search_space
from cp.study import Study, write_json, write_text


def mean_std(values: list[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    return {"losses": values, "mean": statistics.fmean(finite) if finite else math.inf,
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}


def real_part(args) -> dict:
    spec = load_spec(args.spec, overrides=args.set)
    study = Study.at(args.results, spec.name)
    space = search_space(spec)
    global_values = {}  # the spec's hps are the starting point (no sweep here)
    print(f"[bench] {spec.name} proxy {spec.models[spec.base]}; {space.dim} log2 factors; "
          f"{args.trials} trials, {spec.search.parallel} in flight", flush=True)
    runner = Launcher(study, spec.launcher, "bench", max_parallel=spec.search.parallel,
                      echo=(lambda m: None) if args.quiet else print)
    out = {"spec": spec.name, "proxy": vars(spec.models[spec.base]), "dims": space.dim,
           "kinds": list(spec.search.kinds), "radius": spec.search.log2_radius,
           "parallel": spec.search.parallel, "seed": args.seed, "explore_seed": spec.seed,
           "trials": args.trials, "reeval_seeds": list(args.reeval_seeds), "algorithms": {}}

    def reevaluate(x) -> dict:
        runs = [search_run(spec, global_values, space.factors(x), s, {})
                for s in args.reeval_seeds]
        res = runner.run(runs)
        return mean_std([res[r.run_id].loss_or_inf() for r in runs])

    with runner:
        def evaluate(trials):
            runs = [search_run(spec, global_values, space.factors(t.x), t.seed, {})
                    for t in trials]
            res = runner.run(runs)
            return [res[r.run_id].loss_or_inf() for r in runs]

        for alg in args.algorithms:
            t0 = time.time()
            searcher = make_searcher(alg, space, seed=args.seed, explore_seed=spec.seed,
                                     journal=study.search_comparison_journal(alg),
                                     trrs=spec.search.trrs, resume=False)
            drive(searcher, evaluate, args.trials, spec.search.parallel)
            best, curve = math.inf, []
            for t in searcher.trials:
                best = min(best, t.loss)
                curve.append(best)
            out["algorithms"][alg] = {"best_so_far": curve,
                                      "recommended": reevaluate(searcher.recommend()[0])}
            print(f"[bench] {alg}: best {curve[-1]:.4f}, recommended re-evaluated "
                  f"{out['algorithms'][alg]['recommended']['mean']:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        out["global"] = reevaluate(space.center())
    return out


def synthetic_part(args, dim: int) -> dict:
    space = SearchSpace(tuple(Dim("lr", "type", f"g{i}") for i in range(dim)), 2.0)
    out = {"dim": dim, "budget": args.synthetic_trials, "seeds": args.synthetic_seeds,
           "algorithms": {}}
    for alg in args.algorithms:
        reached_at, finals = [], []
        for s in range(args.synthetic_seeds):
            f = CliffLandscape(dim, seed=s)
            searcher = make_searcher(alg, space, seed=s)
            reached = None
            while len(searcher.trials) < args.synthetic_trials:
                drive(searcher, lambda ts: [f(t.x, t.seed) for t in ts],  # noqa: B023
                      min(args.synthetic_trials, len(searcher.trials) + 4), 4)
                rec = searcher.recommend()
                if reached is None and rec and f.true_loss(rec[0]) <= 1.01 * f.optimum_loss:
                    reached = len(searcher.trials)
            reached_at.append(reached)
            finals.append(f.true_loss(searcher.recommend()[0]))
        out["algorithms"][alg] = {"reached": reached_at, "final": finals}
        print(f"[bench] synthetic {alg}: {reached_at}", flush=True)
    return out


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
    data = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "commit": git_commit(), "command": "python benchmarks/search_comparison.py "
            + " ".join(sys.argv[1:])}
    spec = load_spec(args.spec, overrides=args.set)
    if not args.synthetic_only:
        data["real"] = real_part(args)
    data["synthetic"] = synthetic_part(args, search_space(spec).dim)
    data["wall_min"] = (time.time() - t0) / 60
    if not args.synthetic_only:
        write_json(Study.at(args.results, spec.name).search_comparison, data)
    doc = Doc("Search algorithms compared")
    search_comparison_section(doc, data, level=1)
    print(doc.markdown(Study.at(args.results, spec.name).root))
    if args.out:
        from pathlib import Path

        write_text(Path(args.out), doc.markdown(Path(args.out).parent))
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
