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

from ..config import PlannedRun, Stream, model_groups
from ..doc import Doc, Findings, fmt, fmt_interval
from ..estimate import Interval, interval
from ..launch import Launcher
from ..scaling import GAIN_GROUPS, Factors, check_group, check_kind, expand_groups
from ..schema import Problems
from ..search import ALGORITHMS, SearchSpace, TRRSConfig, make_searcher
from ..search.base import Trial
from ..search.driver import drive
from ..search.trrs import reeval_seeds
from ..study import CorruptFile, Study, read_json, write_json, write_parquet
from .base import (
    Context,
    Outputs,
    ReportContext,
    SeedUse,
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
               tags: dict[str, Any], stream: Stream = "choose") -> PlannedRun:
    """One per-module search run: the base model at the global optimum times factors; a
    trial chooses, the final re-evaluation judges (``stream``)."""
    cfg = spec.run_config(spec.base, hps=spec.hps.with_values(global_values), factors=factors,
                          seed=seed, stream=stream)
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
                               {"trial": f"{label}-reeval", "purpose": "reeval"}, "judge")
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
    gain = paired_gain(g["losses"], b["losses"])
    doc.p(f"{best['algorithm']} search, {best['trials']} trials over {len(best['dims'])} log2 "
          f"factors (trials train on the choosing seed {rc.spec.seed}). Recommended point: "
          f"trial {best['best_trial']}, loss {fmt(best['best_loss'])} -- in-sample: that loss "
          "chose it, so it flatters it. Re-evaluated on the judging seeds "
          f"{b['seeds']}: **{fmt(b['mean'])} ± {fmt(b['std'], 2)}** against the global "
          f"optimum's {fmt(g['mean'])} ± {fmt(g['std'], 2)} on the same seeds.")
    if study.search_progress_plot.exists():
        fig = study.report_figure("search_progress")
        shutil.copyfile(study.search_progress_plot, fig)
        doc.fig(fig, "search: each trial's loss and the best so far (in-sample)")
    heat = study.report_figure("search_factors")
    plot_multiplier_heatmap(best["dims"], best["x"], heat,
                            f"best trial {best['best_trial']}: type factor + layer factor")
    doc.fig(heat, "per-module factors found (log2, per type and layer)")
    found.metric("search.gain", gain.estimate, gain.low, gain.high)
    found.metric("search.best_reeval", b["mean"])
    found.metric("search.global_reeval", g["mean"])
    found.metric("search.best_in_sample", best["best_loss"])
    if not any(best["x"]):
        found.claim("search", "**The per-module search found nothing better than the global "
                    f"optimum** at the proxy: its best trial ({best['trials']} trials) is the "
                    "global optimum itself, so the per-module arm equals the global one.",
                    gain=0.0, verdict="no gain")
        doc.p("No trial beat the global optimum: the best point is the global optimum itself "
              "(every factor 1), so the per-module arm equals the global one.")
        return
    text = fmt_interval(gain.estimate, gain.low, gain.high, signed=True)
    if not gain.known:
        word = "cannot tell"
        head = ("**Cannot tell whether the per-module search improves the proxy**: one "
                f"judging seed gives a difference of {text} nats; add search.reeval_seeds")
    elif gain.above(0):
        word = "improves"
        head = (f"**The per-module search improves the proxy** by {text} nats on "
                f"{gain.seeds} judging seeds (paired with the global optimum)")
    elif gain.below(0):
        word = "worse"
        head = (f"**The per-module search's point is worse than the global optimum** at the "
                f"proxy by {text} nats on {gain.seeds} judging seeds")
    else:
        word = "cannot tell"
        head = (f"**Cannot tell whether the per-module search improves the proxy**: {text} "
                f"nats on {gain.seeds} judging seeds includes 0; more search.reeval_seeds "
                "would narrow it")
    found.claim("search", head + ".", gain=gain.estimate, ci_low=gain.low, ci_high=gain.high,
                verdict=word)
    doc.p("Largest factors found (log2, 0 = the global optimum):")
    ranked = sorted(zip(best["dims"], best["x"], strict=True), key=lambda p: -abs(p[1]))
    doc.table(["coordinate", "log2 factor"], [[n_, f"{v:+.2f}"] for n_, v in ranked[:10]])


def paired_gain(global_losses: list[float], best_losses: list[float]) -> Interval:
    """How much lower the recommended point's loss is than the global optimum's, paired over
    the judging seeds (the same seed for both), with a Student-t 95% interval."""
    diffs = [g - b for g, b in zip(global_losses, best_losses, strict=True)
             if math.isfinite(g) and math.isfinite(b)]
    if not diffs:
        return Interval(math.nan, None, None, 0)
    mean = statistics.fmean(diffs)
    return interval(mean, [statistics.fmean(diffs[:i] + diffs[i + 1:])
                           for i in range(len(diffs))] if len(diffs) > 1 else [])


def search_comparison_section(doc: Doc, data: dict, level: int = 1,
                              found: Optional[Findings] = None) -> None:
    """The per-module searchers compared (benchmarks/search_comparison.py's numbers): on a
    synthetic landscape with a known optimum, and on the study's proxy (`cp.search.compare`
    computes and renders it)."""
    from ..search.compare import comparison_section

    comparison_section(doc, data, level, found)


def seeds(spec: Spec) -> list[SeedUse]:
    """The trials choose (on the spec's seed, and TRRS's re-evaluations on seeds of their
    own); the final re-evaluation of the recommended point and the global optimum judges."""
    s = spec.search
    if not s.enabled:
        return []
    uses = [SeedUse("choose", spec.seed, "seed (the search's trials)")]
    if s.algorithm == "trrs":
        uses += [SeedUse("choose", r, "search.trrs.reeval_seeds (TRRS re-evaluates on "
                         f"seed + 1000 + k = {r})")
                 for r in reeval_seeds(spec.seed, s.trrs.reeval_seeds)]
    return uses + [SeedUse("judge", r, f"search.reeval_seeds[{i}]")
                   for i, r in enumerate(s.reeval_seeds)]


STAGE = Stage(name="search", summary="per-module factors at the base model, from the global "
              "optimum", after=("select",), run=run, done=lambda study: study.search_best,
              plan=plan, outputs=outputs, report=report, trains=True, seeds=seeds)

__all__ = ["ALGORITHMS", "STAGE", "SearchSpec", "best_factors", "search_run", "search_space"]
