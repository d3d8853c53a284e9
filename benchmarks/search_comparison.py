"""Per-module searchers compared at an equal budget: TRRS, two random searches, TPE, CMA-ES.

Every contender (cp.search.compare.CONTENDERS) starts at the global optimum and gets the same
budget of trials. Reported: the trials each needs until its recommended point has closed 50%,
90% and 99% of the gap between the start point and the optimum, over many seeds (median and
range, and how often a fraction is never reached), and a reading computed from those numbers.

1. A synthetic landscape (cp.search.synthetic.CliffLandscape: known optimum, seed noise, a
   divergence cliff) at the proxy's dimension, one landscape per seed: the gap is exact.
2. The spec's proxy: a per-module search with the spec's search space and trials in flight,
   every trial a training run through cp's launcher, cached in the study folder (a rerun
   reuses them), over several search seeds. The optimum is unknown, so the gap runs to the
   best loss any contender reached (in-sample); then every final recommended point and the
   start point are trained on fresh seeds no contender searched with.

The numbers go to ``results/<study>/search_comparison.json`` (the study's report shows them)
and, with --out, to a Markdown page with its figures in a folder beside it.

    python benchmarks/search_comparison.py --out docs/search-comparison.md   # the docs' page
    python benchmarks/search_comparison.py --synthetic-only                  # seconds
    python benchmarks/search_comparison.py --spec specs/smoke.yaml --search-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cp.doc import Doc
from cp.launch import Launcher
from cp.provenance import git_commit, machine
from cp.search.base import Trial
from cp.search.compare import (
    CONTENDERS,
    FORMAT,
    FRACTIONS,
    closed_after,
    comparison_section,
    make_contender,
    proposals,
    recommended_explore_loss,
    synthetic_run,
    traced_drive,
    trial_counts,
)
from cp.search.synthetic import CliffLandscape
from cp.search.trrs import TRRS, TRRSConfig
from cp.spec import Spec, load_spec
from cp.stages.search import search_run, search_space
from cp.study import Study, read_json, write_json, write_text


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items())


def trrs_config(spec: Spec) -> TRRSConfig:
    """TRRS as the search stage runs it (round size 0 means the trials in flight)."""
    t = spec.search.trrs
    return dataclasses.replace(t, round_size=t.round_size or spec.search.parallel)


def real_part(args: argparse.Namespace, spec: Spec) -> dict[str, Any]:
    study = Study.at(args.results, spec.name)
    space = search_space(spec)
    trrs = trrs_config(spec)
    parallel, explore_seed = spec.search.parallel, spec.seed
    proxy = spec.models[spec.base]
    print(f"[bench] {spec.name} proxy {proxy}; {space.dim} log2 factors; {args.trials} trials "
          f"x {len(args.search_seeds)} search seeds x {len(args.algorithms)} contenders, "
          f"{parallel} in flight", flush=True)
    trained: list[float] = []  # wall seconds of the runs trained here (not cached)
    t_start = time.time()

    def on_result(_pr: Any, result: Any) -> None:
        trained.append(result.wall_s)

    runner = Launcher(study, spec.launcher, "bench", max_parallel=parallel, on_result=on_result,
                      echo=(lambda m: None) if args.quiet else print)

    # The start point, every factor 1: the study's selected global optimum where the select
    # stage has run in this results folder, else the spec's hps.
    if study.select_file.exists():
        global_values = read_json(study.select_file).get(spec.parameterisation.name, {}).get(
            "values", {})
        start_hps = f"the study's selected global optimum ({_values(global_values)})"
    else:
        global_values = {}
        searched = {k: spec.hps.get(k) for k in spec.search.kinds}
        start_hps = (f"the spec's hps ({_values(searched)}; no sweep had selected a global "
                     "optimum in this results folder)")

    def train(points: list[tuple[list[float], int]], tags: dict[str, Any]) -> list[float]:
        runs = [search_run(spec, global_values, space.factors(x), seed, tags)
                for x, seed in points]
        results = runner.run(runs)
        return [results[r.run_id].loss_or_inf() for r in runs]

    out: dict[str, Any] = {
        "spec": spec.name, "proxy": dataclasses.asdict(proxy), "dims": space.dim,
        "kinds": list(spec.search.kinds), "radius": space.radius, "parallel": parallel,
        "explore_seed": explore_seed, "budget": args.trials, "start_hps": start_hps,
        "search_seeds": list(args.search_seeds), "eval_seeds": list(args.eval_seeds),
        "trrs_reeval_seeds": TRRS(space, 0, explore_seed, trrs).reeval_seed_list}
    with runner:
        start = train([(space.center(), explore_seed)], {"purpose": "start"})[0]
        out["runs"] = {name: [] for name in args.algorithms}
        # Seed by seed, every contender: a run stopped early still compares them all.
        for seed in args.search_seeds:
            for name in args.algorithms:
                t0 = time.time()
                searcher = make_contender(
                    name, space, seed, explore_seed, trrs,
                    journal=study.search_comparison_journal(f"{name}-seed{seed}"))

                def evaluate(trials: list[Trial], name: str = name, seed: int = seed
                             ) -> list[float]:
                    return train([(t.x, t.seed) for t in trials],
                                 {"contender": name, "search_seed": seed})

                trace = traced_drive(searcher, evaluate, args.trials, parallel,
                                     recommended_explore_loss)
                rec = searcher.recommend()
                used = {t.seed for t in searcher.trials}
                if used & set(args.eval_seeds):  # main() refuses such seeds before any run
                    raise AssertionError(f"{name} searched with evaluation seeds: {used}")
                out["runs"][name].append({"seed": seed, "trace": trace,
                                          "x": rec[0] if rec else space.center(),
                                          "seeds_used": sorted(used),
                                          **trial_counts(searcher, start)})
                print(f"[bench] {name} search seed {seed}: recommended point's seed-"
                      f"{explore_seed} loss {trace[-1][1]:.4f} (start {start:.4f}), "
                      f"{time.time() - t0:.0f} s", flush=True)
        # Out of sample: every final recommended point and the start point on fresh seeds,
        # all in one batch so the pool stays busy.
        points = [(space.center(), s) for s in args.eval_seeds]
        for rs in out["runs"].values():
            points += [(r["x"], s) for r in rs for s in args.eval_seeds]
        losses = iter(train(points, {"purpose": "fresh"}))
        out["start_fresh"] = [next(losses) for _ in args.eval_seeds]
        for rs in out["runs"].values():
            for r in rs:
                r["fresh"] = [next(losses) for _ in args.eval_seeds]
    finals = [(r["trace"][-1][1], name, r["seed"])
              for name, rs in out["runs"].items() for r in rs]
    optimum, by, by_seed = min(finals)
    out["start"], out["optimum"] = start, optimum
    out["optimum_by"] = f"{by}, search seed {by_seed}"
    wall = (time.time() - t_start) / 60
    per_run = statistics.median(trained) if trained else math.nan
    out["why"] = (
        f"Why this size: {len(args.search_seeds)} search seeds x {args.trials} trials x "
        f"{len(args.algorithms)} contenders on the `{spec.name}` proxy is meant to keep the "
        "whole benchmark near 30-45 minutes on 2 idle cores with a spread over search seeds; "
        f"this part trained {len(trained)} runs (the rest came from the cache: every "
        f"contender's first trial is the same start point), a median {per_run:.1f} s each "
        f"with {parallel} in flight, {wall:.0f} min in all. `--spec`, `--trials` and "
        "`--search-seeds` scale it up.")
    return out


def synthetic_part(args: argparse.Namespace, spec: Spec) -> dict[str, Any]:
    space = search_space(spec)
    trrs = trrs_config(spec)
    f = CliffLandscape(space.dim)
    out: dict[str, Any] = {"dim": space.dim, "radius": space.radius, "noise": f.noise,
                           "optimum": f.optimum_loss, "budget": args.synthetic_trials,
                           "parallel": spec.search.parallel, "runs": {}}
    for name in args.algorithms:
        t0 = time.time()
        out["runs"][name] = [synthetic_run(name, space.dim, s, args.synthetic_trials,
                                           spec.search.parallel, space.radius, trrs)
                             for s in range(args.synthetic_seeds)]
        print(f"[bench] synthetic {name}: {time.time() - t0:.0f} s", flush=True)
    return out


def plot_progress(runs: dict[str, list[dict[str, Any]]], budget: int, path: Path, title: str,
                  start: float | None = None, optimum: float | None = None) -> Path:
    """Gap closed against trials: median over seeds, band from the lowest to the highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ns = list(range(1, budget + 1))
    lowest = 0.0
    for name, rs in runs.items():
        curves = [[closed_after(r["trace"], r.get("start", start), r.get("optimum", optimum), n)
                   for n in ns] for r in rs]
        clip = [[max(v, -0.5) for v in c] for c in curves]
        med = [statistics.median(col) for col in zip(*clip, strict=True)]
        lowest = min(lowest, *(min(c) for c in clip))
        line, = ax.plot(ns, med, label=name)
        ax.fill_between(ns, [min(col) for col in zip(*clip, strict=True)],
                        [max(col) for col in zip(*clip, strict=True)],
                        color=line.get_color(), alpha=0.15, lw=0)
    for f in FRACTIONS:
        ax.axhline(f, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_ylim(lowest - 0.05, 1.05)
    ax.set_xlabel("trials")
    ax.set_ylabel("gap closed by the recommended point")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="specs/demo.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--algorithms", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--trials", type=int, default=40, help="budget per search on the proxy")
    ap.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="seeds of the searches on the proxy (one search each)")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="fresh training seeds of the final recommended points")
    ap.add_argument("--synthetic-trials", type=int, default=512)
    ap.add_argument("--synthetic-seeds", type=int, default=12)
    ap.add_argument("--synthetic-only", action="store_true")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default=None,
                    help="also write the section to this Markdown file, its figures to a "
                    "folder of the same name beside it")
    ap.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="run nothing: write --out again from the numbers of an earlier run "
                    "(its search_comparison.json)")
    args = ap.parse_args()
    if args.render:
        if not args.out:
            ap.error("--render needs --out")
        data = read_json(Path(args.render))
        data["rendered"] = "python benchmarks/search_comparison.py " + " ".join(sys.argv[1:])
        write_page(data, Path(args.out))
        return

    t0 = time.time()
    load_before = os.getloadavg()[0]
    spec = load_spec(args.spec, overrides=args.set)
    trrs = trrs_config(spec)
    radius = search_space(spec).radius
    searched_with = {spec.seed, *TRRS(search_space(spec), 0, spec.seed, trrs).reeval_seed_list}
    if not args.synthetic_only and searched_with & set(args.eval_seeds):
        ap.error(f"--eval-seeds {args.eval_seeds} overlap the seeds the searches train with "
                 f"({sorted(searched_with)}: spec seed and TRRS's re-evaluation seeds); "
                 "selection and evaluation must not share a seed")
    data: dict[str, Any] = {
        "format": FORMAT, "date": datetime.date.today().isoformat(), "machine": machine(),
        "commit": git_commit(),
        "command": "python benchmarks/search_comparison.py " + " ".join(sys.argv[1:]),
        "fractions": list(FRACTIONS),
        "contenders": {n: proposals(n, radius, trrs) for n in args.algorithms}}
    data["synthetic"] = synthetic_part(args, spec)
    if not args.synthetic_only:
        data["real"] = real_part(args, spec)
    data["wall_min"] = (time.time() - t0) / 60
    # The machine may be shared: the load says how much else ran meanwhile.
    data["load"] = [load_before, os.getloadavg()[0]]
    study = Study.at(args.results, spec.name)
    if not args.synthetic_only:
        write_json(study.search_comparison, data)
        print(f"[bench] numbers in {study.search_comparison}")
    if args.out:
        write_page(data, Path(args.out))


def write_page(data: dict[str, Any], out: Path) -> None:
    """The Markdown page at ``out``, its figures in the folder of the same name beside it."""
    figures = {"synthetic": plot_progress(
        data["synthetic"]["runs"], data["synthetic"]["budget"],
        out.with_suffix("") / "synthetic.png", "synthetic landscape")}
    r = data.get("real")
    if r and r["start"] > r["optimum"]:  # else nothing beat the start: no gap to draw
        figures["real"] = plot_progress(r["runs"], r["budget"], out.with_suffix("") / "proxy.png",
                                        f"{r['spec']} proxy (in-sample)", r["start"],
                                        r["optimum"])
    doc = Doc("Search algorithms compared")
    comparison_section(doc, data, level=1, figures=figures)
    write_text(out, doc.markdown(out.parent))
    print(f"[bench] written to {out}")


if __name__ == "__main__":
    main()
