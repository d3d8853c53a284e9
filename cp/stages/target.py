"""Stage 6, target: train every (target, arm, seed) the transfer stage wrote. With
``targets.sweep`` it first tunes each target directly (a grid of the global HPs at the
target, on choosing seeds), then trains the global arm at the target's own optimum
(``global_tuned``) with the arms on the judging seeds. The report's target section: each arm's
curves, its speedup over the transferred global arm and over the tuned one, with intervals;
the target's own optimum against the transferred one."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import TYPE_CHECKING, Optional

from ..analysis import (
    eval_curve,
    mean_curve,
    seed_means,
    select_optimum,
    speedup_ci,
    steps_to_reach,
    transfer_suboptimality,
)
from ..config import PlannedRun, RunConfig
from ..doc import fmt, fmt_interval
from ..launch import launch
from ..study import Study, read_json, write_json
from .base import (
    Context,
    Outputs,
    ReportContext,
    SeedUse,
    Stage,
    StageFailed,
    StagePlan,
    read_runs_table,
    read_selected,
    result_row,
    table_outputs,
    write_runs_table,
)
from .sweep import grid_points
from .transfer import read_index, read_runs

if TYPE_CHECKING:
    from ..spec import Spec


TUNED = "global_tuned"
"""The arm trained at each target's own optimum (with ``targets.sweep``)."""


def target_sweep_runs(spec: Spec, study: Study) -> list[PlannedRun]:
    """The grid of ``targets.sweep`` at each target: the global arm's HPs with the grid's
    values, on the sweep's (choosing) seeds."""
    selected = read_selected(study)
    table = spec.parameterisation.name
    values = selected.get(table, {}).get("values", {})
    runs = []
    for model in spec.target_models():
        for point in grid_points(spec.targets.sweep):
            for seed in spec.targets.sweep_seeds:
                cfg = spec.run_config(model, hps=spec.hps.with_values({**values, **point}),
                                      seed=seed)
                runs.append(PlannedRun(cfg, {"stage": "target", "model": model,
                                             "arm": "sweep", "parameterisation": table,
                                             "seed": seed, **point}))
    return runs


def tune(spec: Spec, study: Study, sweep: list[PlannedRun], results: dict) -> dict:
    """Each target's own optimum from its sweep, and the ``global_tuned`` runs there."""
    selected = read_selected(study)
    table = spec.parameterisation.name
    values = selected.get(table, {}).get("values", {})
    kinds = list(spec.targets.sweep)
    out: dict = {}
    for model in spec.target_models():
        rows = [{**{k: pr.tags[k] for k in kinds}, "seed": pr.tags["seed"],
                 "loss": results[pr.run_id].loss_or_inf()}
                for pr in sweep if pr.tags["model"] == model]
        try:
            found = select_optimum(rows, kinds, "fit")
        except ValueError as e:
            raise StageFailed(f"target sweep at {model}: {e}") from None
        tuned = [PlannedRun(spec.run_config(model, hps=spec.hps.with_values(
                     {**values, **found["values"]}), seed=seed, stream="judge"),
                 {"stage": "target", "model": model, "arm": TUNED, "parameterisation": table,
                  "seed": seed}) for seed in spec.targets.seeds]
        out[model] = {"values": found["values"], "intervals": found["intervals"],
                      "at_grid_argmin": found["argmin"], "transferred": values,
                      "runs": [pr.run_id for pr in tuned], "configs": [
                          {"tags": pr.tags, "config": pr.config.to_dict()} for pr in tuned]}
    return out


def transferred_runs(spec: Spec, study: Study) -> list[PlannedRun]:
    """The runs the transfer stage wrote, each executed as its model's ``parallel`` settings
    say now (they change no number, and may have been changed since: more GPUs, a smaller
    micro-batch after running out of memory)."""
    return [PlannedRun(dataclasses.replace(pr.config,
                                           parallel=spec.models[entry["model"]].parallel),
                       pr.tags)
            for entry in read_index(study)
            for pr in read_runs(study, entry["model"], entry["arm"])]


def run(ctx: Context) -> list[dict]:
    spec, study, echo = ctx.spec, ctx.study, ctx.echo
    plans = transferred_runs(spec, study)
    sweep: list[PlannedRun] = []
    if spec.targets.sweep:
        sweep = target_sweep_runs(spec, study)
        echo(f"[target] tuning each target directly: {len(sweep)} runs of targets.sweep")
        results = launch(sweep, study, spec.launcher, "target", ctx.on_result, echo)
        tuned = tune(spec, study, sweep, results)
        write_json(study.target_tuned, tuned)
        for model, t in tuned.items():
            echo(f"[target] {model}'s own optimum: " + ", ".join(
                f"{k}={v:.4g}" for k, v in t["values"].items()) + " (transferred: " +
                ", ".join(f"{k}={t['transferred'].get(k, spec.hps.get(k)):.4g}"
                          for k in t["values"]) + ")")
            plans += [PlannedRun(RunConfig.from_dict(c["config"]), c["tags"])
                      for c in t["configs"]]
    results = launch(sweep + plans, study, spec.launcher, "target", ctx.on_result, echo)
    rows = [result_row(pr, results[pr.run_id]) for pr in sweep + plans]
    write_runs_table(study, "target", rows)
    return rows


def plan(spec: Spec) -> StagePlan:
    n_runs = tokens = 0
    arms = [a.name for a in spec.arms]
    n_sweep = len(grid_points(spec.targets.sweep)) * len(spec.targets.sweep_seeds) \
        if spec.targets.sweep else 0
    if n_sweep:
        arms.append(TUNED)
    for model in spec.target_models():
        scale = spec.models[model]
        k = len(arms) * len(spec.targets.seeds) + n_sweep
        n_runs += k
        tokens += k * scale.steps * scale.tokens_per_step
    note = ", ".join(arms) + (f"; {n_sweep} sweep runs per target" if n_sweep else "")
    return StagePlan("target", n_runs, tokens, note)


def outputs(study: Study) -> Outputs:
    import polars as pl

    out = table_outputs(study, "target")
    if study.target_table.exists():
        df = read_runs_table(study, "target").filter(pl.col("status") == "completed")
        for r in df.group_by("model", "arm").agg(pl.col("final_val_loss").mean()).to_dicts():
            out.metrics.append((f"{r['model']}.{r['arm']}.final_val_loss",
                                float(r["final_val_loss"]), 0))
    return out


# ---------------------------------------------------------------------------------------------
# Report.


def _arm_curves(study: Study, run_ids: list[str]) -> tuple[dict[int, list], list[float], int]:
    """(curve by seed of the completed runs, their final losses, runs planned)."""
    curves: dict[int, list] = {}
    finals: list[float] = []
    for rid in run_ids:
        folder = study.run(rid)
        r = folder.read_result()
        if r is None or not r.ok:
            continue
        cfg = folder.read_config()
        seed = cfg["config"]["seed"] if cfg is not None else len(curves)
        curves[seed] = eval_curve(r.to_dict())
        finals.append(r.final_val_loss)
    return curves, finals, len(run_ids)


def _band(curves: dict[int, list]) -> Optional[tuple[list, list, list]]:
    cs = list(curves.values())
    if len(cs) < 2 or any([s for s, _ in c] != [s for s, _ in cs[0]] for c in cs):
        return None
    steps = [s for s, _ in cs[0]]
    return (steps, [min(c[i][1] for c in cs) for i in range(len(steps))],
            [max(c[i][1] for c in cs) for i in range(len(steps))])


def _speedup_text(s: dict) -> str:
    if s["ci_low"] is None:
        return f"{fmt(s['speedup'], 3)}x (one seed pair: no interval)"
    return fmt_interval(s["speedup"], s["ci_low"], s["ci_high"]) + "x"


def report(rc: ReportContext) -> None:
    from ..plots import plot_target_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not study.transfer_done.exists():
        return
    entries = read_index(study)
    tuned = read_json(study.target_tuned) if study.target_tuned.exists() else {}
    baseline = next((a.name for a in spec.arms if a.factors == "none"), spec.arms[0].name)
    doc.h(1, "Targets")
    doc.p(f"Each arm's HPs transferred to each target, trained on the judging seeds "
          f"{list(spec.targets.seeds)}. Speedup of an arm over a reference = steps the "
          "reference needs to reach its own final loss / steps the arm needs to reach it, per "
          "seed pair (the same seed in both); the figure is the geometric mean over seed "
          "pairs, with a Student-t 95% interval on their logarithms. An interval that "
          "contains 1 means the difference is below what these seeds resolve. "
          + (f"`{TUNED}` is the global arm at the target's own optimum (`targets.sweep`): "
             "the speedup over it is what per-module HPs buy against the best global "
             "setting at the target, without the transfer's own error." if tuned else
             "No arm is tuned at the target (`targets.sweep` is empty): the speedups are "
             "against the transferred global HPs, so transfer error and per-module gain are "
             "not separated."))
    for model in spec.target_models():
        arms = {e["arm"]: _arm_curves(study, e["runs"]) for e in entries
                if e["model"] == model}
        if model in tuned:
            arms[TUNED] = _arm_curves(study, tuned[model]["runs"])
        means = {arm: mean_curve(list(c.values())) for arm, (c, _, _) in arms.items()
                 if c and len({len(x) for x in c.values()}) == 1}
        refs = [r for r in (baseline, TUNED) if r in arms and arms[r][0]]
        stats = {(ref, arm): speedup_ci(arms[ref][0], c) for ref in refs
                 for arm, (c, _, _) in arms.items() if arm not in (ref, baseline) and c}
        ref = means.get(baseline)
        marks = {arm: steps_to_reach(curve, ref[-1][1]) for arm, curve in means.items()
                 if ref and arm != baseline}
        fig = study.report_figure(f"target_{model}")
        if means:
            plot_target_curves(means, fig, f"{model}: validation loss per arm",
                               {a: s["speedup"] for (r, a), s in stats.items()
                                if r == baseline}, baseline,
                               bands={a: b for a, (c, _, _) in arms.items()
                                      if (b := _band(c)) is not None},
                               marks=marks)
        doc.h(2, model)
        doc.fig(fig, f"{model}: validation loss against steps per arm (seed means; band: "
                "lowest to highest seed); ▼ where each arm reaches the reference's final loss")
        rows = []
        for arm, (_, finals, n) in arms.items():
            mean = statistics.fmean(finals) if finals else math.nan
            std = statistics.stdev(finals) if len(finals) > 1 else 0.0
            cells = [_speedup_text(stats[r, arm]) if (r, arm) in stats
                     else ("1 (reference)" if arm == r else "-") for r in refs]
            rows.append([arm, f"{fmt(mean)} ± {fmt(std, 2)}", f"{len(finals)}/{n}", *cells])
        doc.table(["arm", "final val loss (mean ± std over seeds)", "runs completed",
                   *(f"speedup over {r} [95% CI]" for r in refs)], rows)
        for (r, arm), st in stats.items():
            key = f"speedup.{model}.{arm}" + ("" if r == baseline else f".vs.{r}")
            found.metric(key, st["speedup"], st["ci_low"], st["ci_high"])
            found.claim("speedup", _speedup_verdict(model, arm, r, st, len(spec.targets.seeds)),
                        model=model, arm=arm, reference=r, speedup=st["speedup"],
                        ci_low=st["ci_low"], ci_high=st["ci_high"], seeds=st["n"],
                        verdict=_speedup_word(st))
        if model in tuned:
            _target_sweep(rc, model, tuned[model])
        _tuned_directly(rc, model)


def _speedup_word(s: dict) -> str:
    if s["ci_low"] is None:
        return "cannot tell"
    return "faster" if s["ci_low"] > 1 else "slower" if s["ci_high"] < 1 else "cannot tell"


def _speedup_verdict(model: str, arm: str, ref_arm: str, s: dict, n_seeds: int) -> str:
    z = s["speedup"]
    if z is None or not math.isfinite(z):
        return (f"**No speedup measurable for {arm} over {ref_arm} at {model}**: neither "
                "reaches the other's final loss.")
    text = _speedup_text(s)
    word = _speedup_word(s)
    if s["ci_low"] is None:
        return (f"**Cannot tell whether {arm} is faster than {ref_arm} at {model}**: one seed "
                f"pair gives {text}; set targets.seeds to two or more seeds for an interval.")
    if word == "faster":
        return (f"**{arm} reaches {ref_arm}'s final loss {z:.2f}x as fast at {model}**: "
                f"{text} over {s['n']} seed pairs; the interval excludes 1.")
    if word == "slower":
        return (f"**{arm} is slower than {ref_arm} at {model}**: {text} over {s['n']} seed "
                "pairs; the interval excludes 1.")
    return (f"**Cannot tell whether {arm} is faster than {ref_arm} at {model}**: {text} over "
            f"{s['n']} seed pairs includes 1, so the difference is below what these seeds "
            "resolve; more seed pairs (targets.seeds) would narrow it.")


def _target_sweep(rc: ReportContext, model: str, tuned: dict) -> None:
    """The target tuned directly: its own optimum against the transferred value, and the
    loss given up by transferring instead of tuning there."""
    import polars as pl

    from ..plots import plot_transfer_curves

    if not rc.study.target_table.exists():
        return
    table = read_runs_table(rc.study, "target")
    sweep = table.filter((pl.col("arm") == "sweep") & (pl.col("model") == model))
    for kind, value in tuned["values"].items():
        if kind not in sweep.columns:
            continue
        points = sweep.select("parameterisation", kind, "seed", "loss").unique(
            ["parameterisation", kind, "seed"]).with_columns(
            pl.lit("target").alias("axis"), pl.lit(model).alias("axis_value"))
        transferred = tuned["transferred"].get(kind, rc.spec.hps.get(kind))
        sub = transfer_suboptimality(points, {rc.spec.parameterisation.name: transferred}, kind)
        i = tuned["intervals"].get(kind)
        fig = rc.study.report_figure(f"target_sweep_{model}_{kind}")
        plot_transfer_curves(seed_means(points, kind).to_dicts(), "target", fig, kind=kind,
                             optima={(rc.spec.parameterisation.name, model): (
                                 value, i and i["low"], i and i["high"])})
        rc.doc.h(3, f"{model} tuned directly: {kind}")
        rc.doc.fig(fig, f"{model}: final loss against base {kind} (targets.sweep, seeds "
                   f"{list(rc.spec.targets.sweep_seeds)}); dashed: its own optimum")
        own = fmt_interval(value, i["low"], i["high"]) if i else fmt(value)
        octaves = math.log2(transferred / value)
        text = (f"**{model}'s own optimal {kind} is {own}**, the transferred one "
                f"{fmt(transferred)}: {octaves:+.2f} octaves from it")
        if i:
            lo, hi = math.log2(transferred / i["high"]), math.log2(transferred / i["low"])
            text += f" [{lo:+.2f}, {hi:+.2f}]"
        if not sub.is_empty():
            r = sub.to_dicts()[0]
            if r["suboptimality"] is not None:
                price = fmt_interval(r["suboptimality"], r["sub_low"], r["sub_high"])
                text += (f"; transferring instead of tuning here costs {price} nats" +
                         ("" if r["resolved"] else ", below what the sweep's seeds resolve"))
                rc.found.metric(f"target_suboptimality.{model}.{kind}", r["suboptimality"],
                                r["sub_low"], r["sub_high"])
        rc.doc.p(text + ".")
        rc.found.claim("target_tuned", text + ".", model=model, kind=kind, own=value,
                       transferred=transferred, octaves=octaves)
        rc.found.metric(f"target_optimum.{model}.{kind}", value, i and i["low"],
                        i and i["high"])


def _tuned_directly(rc: ReportContext, model: str) -> None:
    """Where the sweep also covers the target's scale, the target was tuned directly: how far
    the transferred HP is from its own optimum. Not for the base model, where nothing is
    transferred (every axis's sweep passes through it)."""
    spec = rc.spec
    m = spec.models[model]
    if model == spec.base:
        return
    for r in rc.notes.get("suboptimality", []):
        same = all(r.get(k) == getattr(m, k) for k in ("width", "depth", "batch", "tokens",
                                                       "seq_len"))
        if same and r.get("suboptimality") is not None:
            rc.found.metric(f"target_suboptimality.{model}.{r['kind']}.{r['parameterisation']}",
                            r["suboptimality"])
            rc.found.claim(
                "target_suboptimality",
                f"**{model} was also tuned directly** (the {r['axis']} sweep covers its "
                f"scale): under {r['parameterisation']} the transferred {r['kind']} "
                f"{fmt(r['transferred'])} gives {fmt(r['loss_transferred'])} against "
                f"{fmt(r['opt_loss'])} at its own optimum {fmt(r['opt'])}, "
                f"{r['suboptimality']:.3f} nats worse.",
                model=model, kind=r["kind"], parameterisation=r["parameterisation"],
                suboptimality=r["suboptimality"])


def seeds(spec: Spec) -> list[SeedUse]:
    """The targets' arms judge; the target sweep (`targets.sweep`) chooses."""
    uses = [SeedUse("judge", s, f"targets.seeds[{i}]") for i, s in enumerate(spec.targets.seeds)]
    if spec.targets.sweep:
        uses += [SeedUse("choose", s, f"targets.sweep_seeds[{i}]")
                 for i, s in enumerate(spec.targets.sweep_seeds)]
    return uses


STAGE = Stage(name="target", summary="every (target, arm, seed)", after=("transfer",), run=run,
              done=lambda study: study.target_table, plan=plan, outputs=outputs, report=report,
              trains=True, seeds=seeds)
