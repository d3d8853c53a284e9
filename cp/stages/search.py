"""Stage 4, search: per-module factors at the base model, from the global optimum, in the
paper's type x depth space; resumable (the searcher's state is saved after every round). The
recommended point and the global optimum are then re-evaluated on fresh seeds."""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from ..config import PlannedRun, model_groups
from ..doc import Doc, Findings, fmt
from ..launch import Launcher
from ..scaling import GAIN_GROUPS, Factors, check_group, check_kind, expand_groups
from ..schema import Problems
from ..search import ALGORITHMS, SearchSpace, TRRSConfig, make_searcher
from ..search.base import Trial
from ..search.driver import drive
from ..study import CorruptFile, Study, read_json, write_json, write_parquet
from .base import (
    Context,
    Outputs,
    ReportContext,
    Stage,
    StageFailed,
    StagePlan,
    read_selected,
    result_row,
    table_outputs,
    write_runs_table,
)

if TYPE_CHECKING:
    from ..spec import Spec


@dataclass
class SearchSpec:
    """Per-module search at the base model, starting from the global optimum."""

    enabled: bool = True
    """Run the search (arms with ``factors: search`` need it)."""
    algorithm: Literal["trrs", "random", "tpe", "cmaes"] = "trrs"
    """``trrs`` (trust-region random search, the paper's), ``random``, or Optuna's ``tpe`` /
    ``cmaes``."""
    kinds: list[str] = field(default_factory=lambda: ["lr"])
    """HP kinds that get per-module factors (``multiplier`` on ``branch_out`` is the
    residual-branch multiplier)."""
    groups: list[str] = field(default_factory=list)
    """Module groups (types) searched, group sets allowed; empty: every group of the model.
    Groups where a kind cannot act (init_std of a norm gain, a kind whose base value is 0)
    are left out."""
    groups_per_kind: dict[str, list[str]] = field(default_factory=dict)
    """Kind -> groups, for kinds that search other groups than ``groups`` (e.g.
    ``multiplier: [branch_out]``)."""
    per_layer: bool = True
    """Also search one factor per layer and kind (the paper's type x depth factorisation)."""
    log2_radius: float = 2.0
    """Factors are searched within 2^-radius .. 2^radius of the global optimum."""
    trials: int = 16
    """Budget: training runs of the base model, re-evaluations inside the search included
    (the final re-evaluation on ``reeval_seeds`` is not)."""
    parallel: int = 2
    """Trials in flight at once."""
    reeval_seeds: list[int] = field(default_factory=lambda: [1, 2])
    """Fresh seeds on which the recommended point and the global optimum are re-evaluated at
    the end (the per-module gain at the proxy, with its seed spread)."""
    seed: int = 0
    """Seed of the search algorithm."""
    trrs: TRRSConfig = field(default_factory=TRRSConfig)
    """Settings of trust-region random search."""

    RENAMED: ClassVar[dict[str, str]] = {"batch": "parallel"}

    def check(self, at: str, problems: Problems) -> None:
        for k in ("trials", "parallel"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 1, "an integer >= 1")
        problems.range(f"{at}.log2_radius", self.log2_radius, 0 < self.log2_radius <= 10,
                       "0 < log2_radius <= 10")
        for i, kind in enumerate(self.kinds):
            check_kind(problems, f"{at}.kinds[{i}]", kind)
        problems.nonempty(f"{at}.kinds", self.kinds, "one or more HP kinds")
        if self.enabled:  # the re-evaluation is the search's verdict
            problems.nonempty(f"{at}.reeval_seeds", self.reeval_seeds, "one or more seeds")
        problems.unique(f"{at}.reeval_seeds", self.reeval_seeds, "seed")
        for i, g in enumerate(self.groups):
            check_group(problems, f"{at}.groups[{i}]", g)
        for kind, groups in self.groups_per_kind.items():
            if check_kind(problems, f"{at}.groups_per_kind.{kind}", kind):
                for i, g in enumerate(groups):
                    check_group(problems, f"{at}.groups_per_kind.{kind}[{i}]", g)
        self.trrs.check(f"{at}.trrs", problems)


# ---------------------------------------------------------------------------------------------
# Planning.


def search_space(spec: Spec) -> SearchSpace:
    """The per-module space of the spec, without (kind, group) pairs that cannot act: the
    init scale of a norm gain (initialised to 1), and kinds whose base value is 0 there (a
    multiple of 0 is 0, e.g. weight decay on gains)."""
    s = spec.search
    groups = model_groups(spec.arch)
    exclude = {("init_std", g) for g in GAIN_GROUPS}
    exclude |= {(k, g) for k in s.kinds for g in groups if spec.hps.value(g, k) == 0.0}
    wanted = s.groups or groups
    per_kind = {k: [g for g in expand_groups(v) if g in groups]
                for k, v in s.groups_per_kind.items()}
    return SearchSpace.build(s.kinds, [g for g in expand_groups(wanted) if g in groups],
                             spec.models[spec.base].depth, s.per_layer, s.log2_radius,
                             groups_per_kind=per_kind, exclude=exclude)


def search_run(spec: Spec, global_values: dict[str, float], factors: Factors, seed: int,
               tags: dict[str, Any]) -> PlannedRun:
    """One per-module search trial: the base model at the global optimum times factors."""
    cfg = spec.run_config(spec.base, hps=spec.hps.with_values(global_values), factors=factors,
                          seed=seed)
    return PlannedRun(cfg, {"stage": "search", "seed": seed, **tags})


def plan(spec: Spec) -> StagePlan:
    if not spec.search.enabled:
        return StagePlan("search", 0, 0, "disabled")
    proxy = spec.models[spec.base]
    n = spec.search.trials + 2 * len(spec.search.reeval_seeds)
    return StagePlan("search", n, n * proxy.steps * proxy.tokens_per_step,
                     f"{spec.search.algorithm}, {spec.search.trials} trials + re-evaluation "
                     "of the best and the global optimum")


# ---------------------------------------------------------------------------------------------
# Running.


def run(ctx: Context) -> dict:
    spec, study, echo = ctx.spec, ctx.study, ctx.echo
    if not spec.search.enabled:
        best = {"status": "disabled", "factors": None}
        write_json(study.search_best, best)
        echo("[search] disabled in the spec")
        return best
    s = spec.search
    selected = read_selected(study, [spec.parameterisation.name])
    global_values = selected[spec.parameterisation.name]["values"]
    space = search_space(spec)
    trrs = dataclasses.replace(s.trrs, round_size=s.trrs.round_size or s.parallel)
    resume = study.search_state.exists()
    searcher = make_searcher(s.algorithm, space, s.seed, explore_seed=spec.seed,
                             journal=study.search_journal, trrs=trrs, resume=resume)
    if resume:
        state = read_json(study.search_state, "trials")
        try:
            searcher.load_state_dict(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise CorruptFile(study.search_state, f"not a {s.algorithm} searcher's state "
                              f"({type(e).__name__}: {e})") from None
        echo(f"[search] resuming: {len(searcher.trials)} trials asked, "
             f"{sum(not t.pending for t in searcher.trials)} told")
    counts = ", ".join(f"{k}: {c['type']} types + {c['layer']} layers"
                       for k, c in space.counts().items())
    echo(f"[search] {s.algorithm} over {space.dim} log2 factors in +-{s.log2_radius} "
         f"({counts}); budget {s.trials} trials, {s.parallel} in flight")

    def planned(trial: Trial) -> PlannedRun:
        return search_run(spec, global_values, space.factors(trial.x), trial.seed,
                          {"trial": trial.id, "purpose": trial.purpose})

    def save() -> None:
        write_json(study.search_state, searcher.state_dict())

    def evaluate(trials: Sequence[Trial]) -> list[float]:
        runs = [planned(t) for t in trials]
        results = runner.run(runs)
        for t, pr in zip(trials, runs, strict=True):
            t.run_id = pr.run_id
        return [results[pr.run_id].loss_or_inf() for pr in runs]

    def told(_trials: Any) -> None:
        save()
        rec = searcher.recommend()
        echo(f"[search] {len(searcher.trials)}/{s.trials} trials; recommended point's loss "
             f"{rec[1] if rec else math.inf:.4f}" + (
                 f", trust radius {searcher.radius:.3g}" if hasattr(searcher, "radius") else ""))

    runner = Launcher(study, spec.launcher, "search", max_parallel=s.parallel,
                      on_result=ctx.on_result, echo=echo)
    with runner:
        # The asked points are on disk before their runs start, the told ones after.
        drive(searcher, evaluate, s.trials, s.parallel, before=lambda _: save(), after=told)
        rec = searcher.recommend()
        if rec is None or not math.isfinite(rec[1]):
            raise StageFailed("search: every trial diverged or failed")
        best_x, best_loss = rec
        # Re-evaluate the recommended point and the global optimum on the same fresh seeds,
        # so the per-module gain at the proxy comes with its seed spread.
        reeval = {}
        reeval_rows = []
        for label, x in (("best", best_x), ("global", space.center())):
            runs = [search_run(spec, global_values, space.factors(x), seed,
                               {"trial": f"{label}-reeval", "purpose": "reeval"})
                    for seed in s.reeval_seeds]
            results = runner.run(runs)
            reeval_rows += [result_row(r, results[r.run_id]) for r in runs]
            losses = [results[r.run_id].loss_or_inf() for r in runs]
            finite = [v for v in losses if math.isfinite(v)]
            reeval[label] = {"seeds": list(s.reeval_seeds), "losses": losses,
                             "mean": statistics.fmean(finite) if finite else math.inf,
                             "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}
    best_trial = next((t.id for t in searcher.trials if t.x == list(best_x)), None)
    out = {"status": "done", "algorithm": s.algorithm, "trials": len(searcher.trials),
           "best_trial": best_trial, "best_loss": best_loss, "x": best_x,
           "dims": [d.name for d in space.dims],
           "factors": dataclasses.asdict(space.factors(best_x)),
           "global_values": global_values, "reeval": reeval["best"],
           "global_reeval": reeval["global"]}
    write_parquet(study.search_trials, [
        {"trial": t.id, "purpose": t.purpose, "seed": t.seed, "loss": t.loss,
         "run_id": t.run_id, **{d.name: v for d, v in zip(space.dims, t.x, strict=True)}}
        for t in searcher.trials])
    # Every search run with its tags, like the sweep's and target's tables (tracking and the
    # study's runs table read it). Trials told before a restart have their results on disk
    # (one found corrupt there is set aside and trained again).
    asked = [planned(t) for t in searcher.trials if t.run_id]
    with Launcher(study, spec.launcher, "search", max_parallel=s.parallel,
                  on_result=ctx.on_result, echo=echo) as again:
        trial_results = again.run(asked)
    trial_rows = [result_row(pr, trial_results[pr.run_id]) for pr in asked]
    rows = [{**r, "trial": str(r["trial"])} for r in trial_rows + reeval_rows]
    write_runs_table(study, "search", rows)
    write_json(study.search_best, out)
    from ..plots import plot_search_progress

    plot_search_progress([t.loss for t in searcher.trials], study.search_progress_plot,
                         title=f"{s.algorithm} search at {spec.base}")
    echo(f"[search] recommended point (trial {best_trial}): loss {best_loss:.4f}; re-evaluated "
         f"{reeval['best']['mean']:.4f} +- {reeval['best']['std']:.4f} vs global optimum "
         f"{reeval['global']['mean']:.4f} +- {reeval['global']['std']:.4f} "
         f"(seeds {list(s.reeval_seeds)})")
    return out


#: What ``search/best.json`` holds once a search is done.
BEST_KEYS = ("algorithm", "trials", "best_trial", "best_loss", "x", "dims", "factors",
             "reeval", "global_reeval")


def read_best(study: Study) -> dict:
    """``search/best.json``, checked (`CorruptFile` if a done search's keys are missing)."""
    best = read_json(study.search_best, "status")
    if best["status"] == "done":
        missing = [k for k in BEST_KEYS if k not in best]
        if missing:
            raise CorruptFile(study.search_best, f"missing {', '.join(missing)}")
    return best


def best_factors(study: Study) -> Optional[Factors]:
    """The per-module factors the search recommends (None: no search, or it is disabled)."""
    if not study.search_best.exists():
        return None
    best = read_best(study)
    found = best.get("factors", best.get("multipliers"))  # the key's name before v0.2
    try:
        return Factors(**found) if found else None
    except TypeError as e:
        raise CorruptFile(study.search_best, f"its factors are not factors ({e})") from None


def outputs(study: Study) -> Outputs:
    out = table_outputs(study, "search")
    for path in (study.search_best, study.search_trials, study.search_progress_plot,
                 study.search_state):
        out.add(path, "search")
    if study.search_best.exists():
        best = read_best(study)
        if best.get("status") == "done":
            out.metrics.append(("best_loss", float(best["best_loss"]), 0))
            for key, src in (("reeval_best_mean", "reeval"),
                             ("reeval_global_mean", "global_reeval")):
                mean = best.get(src, {}).get("mean")
                if isinstance(mean, float) and math.isfinite(mean):
                    out.metrics.append((key, mean, 0))
    if study.search_state.exists():
        running = math.inf
        for t in read_json(study.search_state, "trials")["trials"]:
            if t["purpose"] != "explore" or t["loss"] is None:
                continue
            if math.isfinite(t["loss"]):
                out.metrics.append(("trial_loss", float(t["loss"]), int(t["id"])))
                running = min(running, t["loss"])
            if math.isfinite(running):
                out.metrics.append(("best_so_far", float(running), int(t["id"])))
    return out


# ---------------------------------------------------------------------------------------------
# Report.


def report(rc: ReportContext) -> None:
    search_section(rc)
    if rc.study.search_comparison.exists():
        rc.doc.h(1, "Search algorithms compared")
        search_comparison_section(rc.doc, read_json(rc.study.search_comparison), level=2,
                                  found=rc.found)


def search_section(rc: ReportContext) -> None:
    from ..plots import plot_multiplier_heatmap

    study, doc, found = rc.study, rc.doc, rc.found
    if not study.search_best.exists():
        return
    best = read_best(study)
    doc.h(1, "Per-module search")
    if best.get("status") != "done":
        doc.p("Disabled in the spec.")
        return
    b, g = best["reeval"], best["global_reeval"]
    doc.p(f"{best['algorithm']} search, {best['trials']} trials over {len(best['dims'])} log2 "
          f"factors. Best trial {best['best_trial']}: loss {fmt(best['best_loss'])}. "
          f"Re-evaluated on seeds {b['seeds']}: **{fmt(b['mean'])} ± {fmt(b['std'], 2)}** "
          f"against the global optimum's {fmt(g['mean'])} ± {fmt(g['std'], 2)}.")
    if study.search_progress_plot.exists():
        fig = study.report_figure("search_progress")
        shutil.copyfile(study.search_progress_plot, fig)
        doc.fig(fig, "search: each trial's loss and the best so far")
    heat = study.report_figure("search_factors")
    plot_multiplier_heatmap(best["dims"], best["x"], heat,
                            f"best trial {best['best_trial']}: type factor + layer factor")
    doc.fig(heat, "per-module factors found (log2, per type and layer)")
    gain = g["mean"] - b["mean"]
    found.metric("search.gain", gain)
    found.metric("search.best_reeval", b["mean"])
    found.metric("search.global_reeval", g["mean"])
    n = len(b["seeds"])
    if not any(best["x"]):
        found.claim("search", "**The per-module search found nothing better than the global "
                    f"optimum** at the proxy: its best trial ({best['trials']} trials) is the "
                    "global optimum itself, so the per-module arm equals the global one.",
                    gain=0.0)
        doc.p("No trial beat the global optimum: the best point is the global optimum itself "
              "(every factor 1), so the per-module arm equals the global one.")
        return
    spread = max(b["std"], g["std"])
    if gain > 0 and (n < 2 or gain > spread):
        head = "**The per-module search improves the proxy**"
    else:
        head = "**No clear gain from the per-module search at the proxy**"
    seeds = (f"on {n} fresh seed(s)" + ("" if n > 1 else "; one seed gives no spread, so add "
                                        "search.reeval_seeds to judge noise"))
    found.claim("search", f"{head}: re-evaluated {seeds}, the best factors reach "
                f"{fmt(b['mean'])} against the global optimum's {fmt(g['mean'])} (a "
                f"difference of {gain:+.4f} nats; seed spread {spread:.4f}).", gain=gain)
    doc.p("Largest factors found (log2, 0 = the global optimum):")
    ranked = sorted(zip(best["dims"], best["x"], strict=True), key=lambda p: -abs(p[1]))
    doc.table(["coordinate", "log2 factor"], [[n_, f"{v:+.2f}"] for n_, v in ranked[:10]])


BUDGETS = (8, 16, 32, 48, 64, 96, 128, 200, 256, 400)


def search_comparison_section(doc: Doc, data: dict, level: int = 1,
                              found: Optional[Findings] = None) -> None:
    """The per-module searchers compared (benchmarks/search_comparison.py's numbers): on the
    study's proxy, and on a synthetic landscape with a known optimum."""
    doc.p(f"Run {data['date']} on {data['machine']}, commit {data['commit']}, by "
          f"`{data['command']}` ({data['wall_min']:.0f} min).")
    real = data.get("real")
    if real:
        p = real["proxy"]
        doc.h(level, f"Per-module search of the `{real['spec']}` proxy")
        doc.p(f"Proxy: width {p['width']}, depth {p['depth']}, {p['tokens']:,} tokens; "
              f"{real['dims']} log2 factors (kinds {', '.join(real['kinds'])}) in "
              f"±{real['radius']:g}; {real.get('parallel', real.get('batch'))} trials in "
              f"flight; search seed {real['seed']}; every trial trained with seed "
              f"{real['explore_seed']} (re-evaluations inside TRRS use other seeds and count "
              "against the budget). Best single-seed final validation loss seen after n "
              f"trials, and the point each algorithm recommends re-evaluated on seeds "
              f"{real['reeval_seeds']}:")
        budgets = [b for b in BUDGETS if b < real["trials"]] + [real["trials"]]
        algs = real["algorithms"]
        target = algs["random"]["best_so_far"][-1] if "random" in algs else None

        def reach(curve: list[float]) -> str:
            if target is None:
                return "-"
            return next((str(i + 1) for i, v in enumerate(curve) if v <= target), "never")

        g = real["global"]
        rows = [[alg, *(fmt(a["best_so_far"][b - 1]) for b in budgets),
                 reach(a["best_so_far"]),
                 f"{fmt(a['recommended']['mean'])} ± {fmt(a['recommended']['std'], 2)}"]
                for alg, a in algs.items()]
        rows.append(["global optimum (no search)", *("" for _ in budgets), "",
                     f"{fmt(g['mean'])} ± {fmt(g['std'], 2)}"])
        doc.table(["algorithm", *(f"n={b}" for b in budgets),
                   "trials to reach random's final best", "recommended, fresh seeds"], rows)
        best = min(algs, key=lambda a: algs[a]["recommended"]["mean"])
        beat = [a for a, v in algs.items()
                if v["recommended"]["mean"] < g["mean"] - g["std"]]
        text = (f"**Search comparison**: on fresh seeds, {best}'s recommended point is best "
                f"({fmt(algs[best]['recommended']['mean'])} against the global optimum's "
                f"{fmt(g['mean'])} ± {fmt(g['std'], 2)}); "
                + (f"{', '.join(beat)} beat the global optimum by more than its seed spread."
                   if beat else "none beats the global optimum by more than its seed spread."))
        doc.p(text)
        if found is not None:
            found.claim("search_comparison", text, best=best,
                        recommended={a: v["recommended"]["mean"] for a, v in algs.items()},
                        global_mean=g["mean"])
    syn = data.get("synthetic")
    if syn:
        doc.h(level, f"Synthetic landscape, {syn['dim']} dimensions")
        doc.p(f"`cp.search.synthetic.CliffLandscape(dim={syn['dim']})`: a quadratic bowl with "
              "curvatures spanning 15x, optimum loss 1.0 just below a wiggly divergence "
              "cliff, seed noise 0.002. Trials until the recommended point's noise-free loss "
              f"is within 1% of the optimum (budget {syn['budget']}, 4 in flight), per landscape "
              "seed:")
        doc.table(["algorithm", *(f"seed {i}" for i in range(syn["seeds"])), "reached",
                   "final loss (mean)"],
                  [[alg, *(str(r) if r else "-" for r in a["reached"]),
                    f"{sum(r is not None for r in a['reached'])}/{syn['seeds']}",
                    fmt(statistics.fmean(a["final"]))] for alg, a in syn["algorithms"].items()])


STAGE = Stage(name="search", summary="per-module factors at the base model, from the global "
              "optimum", after=("select",), run=run, done=lambda study: study.search_best,
              plan=plan, outputs=outputs, report=report, trains=True)

__all__ = ["ALGORITHMS", "STAGE", "SearchSpec", "best_factors", "search_run", "search_space"]
