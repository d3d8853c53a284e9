"""The study report, built from the study folder alone: ``report/report.md``, the same as a
self-contained ``report/report.html``, the figures, ``runs.parquet`` (every run of the study)
and ``summary.json`` (each claim's numbers and verdict, for MLflow and for scripts).

Each claim gets a one-paragraph verdict written from the numbers: transfer along each swept
axis (the optimum's shift per doubling, the loss given up by transferring), the per-module
search's gain at the proxy, and each arm's speedup at each target with its interval over seeds.
"""

from __future__ import annotations

import datetime
import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Optional

from .analysis import (
    SHIFT_TOLERANCE,
    _seed_means,
    block_points,
    eval_curve,
    main_block,
    mean_curve,
    optima,
    optimum_shift,
    runs_table,
    speedup_ci,
    steps_to_reach,
    sweep_points,
    transfer_suboptimality,
)
from .config import load_result
from .doc import Doc
from .spec import Spec
from .study import Study, read_json, write_json, write_text


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "diverged"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


class Findings:
    """The claims found while writing the sections: verdict paragraphs and their numbers."""

    def __init__(self) -> None:
        self.claims: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}

    def claim(self, what: str, text: str, **numbers: Any) -> None:
        self.claims.append({"claim": what, "text": text, **numbers})

    def metric(self, key: str, value: Optional[float]) -> None:
        if value is not None and math.isfinite(value):
            self.metrics[key] = float(value)


# ---------------------------------------------------------------------------------------------
# Sections.


def check_section(study: Study, doc: Doc, found: Findings) -> None:
    if not study.check_verdict.exists():
        return
    v = read_json(study.check_verdict)
    doc.h(1, "Coordinate check")
    if v["status"] != "pass":
        doc.p("Skipped (disabled in the spec).")
        return
    judged = [f for f in v.get("fits", []) if f.get("verdict") in ("pass", "fail")]
    doc.p(f"**Pass** for {v['parameterisation']}: every judged coordinate stays flat across "
          f"width and depth ({len(judged)} judged slopes).")
    fig = study.report_dir / "coord_check.png"
    src = study.check_dir / "coord_check.png"
    if src.exists():
        shutil.copyfile(src, fig)
        doc.fig(fig, "coordinate check: activation and update size against width and depth")
    found.claim("coordinate_check", f"**The coordinate check passes for "
                f"{v['parameterisation']}**: all {len(judged)} judged log-log slopes of "
                "activation and update size against width and depth are within tolerance of "
                "their expected values.", passed=True)
    found.metric("check.passed", 1.0)


def select_section(study: Study, doc: Doc) -> None:
    if not study.select_file.exists():
        return
    selected = read_json(study.select_file)
    doc.h(1, "Global optimum at the base model")
    doc.table(["parameterisation", "values", "grid best loss", "method"],
              [[table, ", ".join(f"{k} = {_fmt(v)}" for k, v in s["values"].items())
                or "spec's hps", _fmt(s["loss"]), s["method"]]
               for table, s in selected.items()])


def _transfer_verdict(kind: str, s: dict, sub: Optional[dict]) -> str:
    axis, table, shift = s["axis"], s["parameterisation"], s["shift_per_doubling"]
    span = f"{axis} {s['from_value']} to {s['to_value']}, {s['points']} points"
    cost = ""
    if sub is not None and sub.get("suboptimality") is not None:
        cost = (f" Transferring the base optimum to {axis} {sub['axis_value']} costs "
                f"{sub['suboptimality']:.3f} nats of validation loss against that point's own "
                "optimum.")
    if s["holds"] is None:
        if s["edges"]:
            at = ", ".join(str(v) for v in s["edges"])
            why = (f"the lowest loss at {axis} {at} is at the edge of the {kind} grid, so the "
                   f"optimum may lie beyond it; widen sweeps.grid.{kind}")
        else:
            why = "fewer than two points have an optimum"
        moved = ("" if shift is None else f" As measured, the optimum moves {shift:+.2f} "
                 f"octaves per doubling of {axis} ({span}).")
        return f"**Inconclusive: {kind} across {axis} under {table}**: {why}.{moved}{cost}"
    if s["holds"]:
        return (f"**{kind} transfers across {axis} under {table}**: the fitted optimum moves "
                f"{shift:+.2f} octaves per doubling of {axis} ({_fmt(s['opt_from'])} to "
                f"{_fmt(s['opt_to'])} over {span}), within the ±{SHIFT_TOLERANCE:g} tolerance."
                + cost)
    return (f"**{kind} does not transfer across {axis} under {table}**: the optimum moves "
            f"{shift:+.2f} octaves per doubling of {axis} ({_fmt(s['opt_from'])} to "
            f"{_fmt(s['opt_to'])} over {span}), beyond the ±{SHIFT_TOLERANCE:g} tolerance."
            + cost)


def transfer_section(spec: Spec, study: Study, doc: Doc, found: Findings) -> list[dict]:
    """Loss against each swept HP along each axis; optima, their shift, and the loss given up
    by transferring. Returns the suboptimality rows (targets look for their own scale)."""
    import polars as pl

    from .plots import plot_optimum_shift, plot_transfer_curves

    if not study.sweep_table.exists() or not spec.sweeps.axes:
        return []
    sweep = main_block(pl.read_parquet(study.sweep_table))
    selected = read_json(study.select_file) if study.select_file.exists() else {}
    kinds = [k for k in spec.sweeps.axes_kinds if k in spec.sweeps.grid]
    base_values = {ax: getattr(spec.models[spec.base], ax) for ax in spec.sweeps.axes}
    fixed = {k: spec.hps.get(k) for k in spec.sweeps.grid}
    doc.h(1, "Transfer sweeps")
    doc.p("Final validation loss against the base value of each swept HP at several points of "
          "each axis, the HPs transferred from the base model by each parameterisation. Where "
          "transfer holds, the minima line up. Optima are quadratic fits of the seed-mean loss "
          "in log2(HP) around the grid's argmin; the shift per doubling is the slope of "
          "log2(optimum) against log2(axis value); the suboptimality is the loss at the base "
          "optimum carried to that point, minus the loss at that point's own optimum (the "
          "lowest value of the grid's interpolated loss curve; both read off that curve). At "
          "the base model, where nothing is transferred, it shows how well the grid pins the "
          "optimum down.")
    all_sub: list[dict] = []
    for kind in kinds:
        points = sweep_points(sweep, base_values, kind, fixed)
        if points.is_empty():
            continue
        opt = optima(points, kind)
        shifts = optimum_shift(opt)
        chosen = {t: s["values"][kind] for t, s in selected.items() if kind in s["values"]}
        sub = transfer_suboptimality(points, chosen, kind)
        sub_rows = sub.to_dicts() if not sub.is_empty() else []
        all_sub += [{**r, "kind": kind} for r in sub_rows]
        means = _seed_means(points, kind).to_dicts()
        for axis in spec.sweeps.axes:
            rows = [m for m in means if m["axis"] == axis]
            marks = {(r["parameterisation"], r["axis_value"]): r["opt"]
                     for r in opt.filter(pl.col("axis") == axis).to_dicts()}
            fig = study.report_dir / f"transfer_{axis}_{kind}.png"
            plot_transfer_curves(rows, axis, fig, kind=kind, optima=marks)
            doc.h(2, f"{kind} across {axis}")
            doc.fig(fig, f"final loss against base {kind}, one line per {axis}, one panel per "
                    "parameterisation")
            table = []
            for r in (x for x in sub_rows if x["axis"] == axis):
                table.append([r["parameterisation"], str(r["axis_value"]), _fmt(r["opt"]),
                              "yes" if r["fitted"] else "no (argmin)", _fmt(r["argmin"]),
                              _fmt(r["opt_loss"]), _fmt(r["loss_transferred"]),
                              _fmt(r["suboptimality"], 3)])
            doc.table(["parameterisation", axis, f"optimal {kind}", "fitted", "grid argmin",
                       "loss at optimum", "loss at transferred", "suboptimality"], table)
        fig = study.report_dir / f"optimum_shift_{kind}.png"
        plot_optimum_shift(opt.to_dicts(), shifts.to_dicts(), fig, kind)
        doc.h(2, f"Shift of the optimal {kind}")
        doc.fig(fig, f"optimal {kind} against each axis (log-log): flat lines transfer")
        doc.table(["parameterisation", "axis", "octaves per doubling", "points", "verdict"],
                  [[s["parameterisation"], s["axis"], _fmt(s["shift_per_doubling"], 3),
                    str(s["points"]), {True: "holds", False: "does not hold"}.get(
                        s["holds"], "inconclusive")] for s in shifts.to_dicts()])
        for s in shifts.to_dicts():
            last = [r for r in sub_rows if r["parameterisation"] == s["parameterisation"]
                    and r["axis"] == s["axis"] and r["axis_value"] == s["to_value"]]
            found.claim("transfer", _transfer_verdict(kind, s, last[0] if last else None),
                        kind=kind, axis=s["axis"], parameterisation=s["parameterisation"],
                        shift_per_doubling=s["shift_per_doubling"], holds=s["holds"],
                        suboptimality=last[0]["suboptimality"] if last else None)
            found.metric(f"shift.{kind}.{s['axis']}.{s['parameterisation']}",
                         s["shift_per_doubling"])
            if last:
                found.metric(f"suboptimality.{kind}.{s['axis']}.{s['parameterisation']}",
                             last[0]["suboptimality"])
    return all_sub


def ablation_section(spec: Spec, study: Study, doc: Doc, found: Findings) -> None:
    """Each extra sweep block: the swept HP's optimum along the block's axis under each of its
    tables, and which table keeps it stiller (the smaller shift per doubling)."""
    import polars as pl

    from .plots import plot_transfer_curves

    if not spec.sweeps.extra or not study.sweep_table.exists():
        return
    sweep = pl.read_parquet(study.sweep_table)
    doc.h(1, "Ablations")
    doc.p("Each block sweeps the HP a rule governs along the axis the rule is about, under "
          "tables with and without the rule. A rule that is right keeps the optimum still: "
          "its optimum moves fewer octaves per doubling of the axis.")
    for block in spec.sweeps.extra:
        for kind in block.grid:
            points = block_points(sweep, block.name, kind)
            if points.is_empty():
                continue
            opt = optima(points, kind)
            shifts = optimum_shift(opt).to_dicts()
            means = _seed_means(points, kind).to_dicts()
            for axis in block.axes:
                marks = {(r["parameterisation"], r["axis_value"]): r["opt"]
                         for r in opt.filter(pl.col("axis") == axis).to_dicts()}
                fig = study.report_dir / f"ablation_{block.name}_{kind}_{axis}.png"
                plot_transfer_curves([m for m in means if m["axis"] == axis], axis, fig,
                                     kind=kind, optima=marks)
                doc.h(2, f"{block.name}: {kind} across {axis}")
                doc.fig(fig, f"final loss against base {kind}, one line per {axis}, one panel "
                        "per table")
            doc.table(["table", "axis", "octaves per doubling", "points", "verdict"],
                      [[s["parameterisation"], s["axis"], _fmt(s["shift_per_doubling"], 3),
                        str(s["points"]), {True: "holds", False: "does not hold"}.get(
                            s["holds"], "inconclusive")] for s in shifts])
            for axis in block.axes:
                mine = [s for s in shifts if s["axis"] == axis]
                found.claim("ablation", _ablation_verdict(block.name, kind, axis, mine),
                            block=block.name, kind=kind, axis=axis,
                            shifts={s["parameterisation"]: s["shift_per_doubling"]
                                    for s in mine})
                for s in mine:
                    found.metric(f"ablation.{block.name}.{s['parameterisation']}",
                                 s["shift_per_doubling"])


def _ablation_verdict(block: str, kind: str, axis: str, shifts: list[dict]) -> str:
    parts = ", ".join(f"{s['parameterisation']} {_fmt(s['shift_per_doubling'], 3)}"
                      + (" (inconclusive: optimum at the grid's edge)" if s["inconclusive"]
                         else "") for s in shifts)
    judged = [s for s in shifts if s["shift_per_doubling"] is not None
              and not s["inconclusive"]]
    head = f"**Ablation {block}** ({kind} along {axis}; octaves per doubling): {parts}."
    if len(judged) < 2:
        return head + " Too few conclusive optima to say which table keeps it stiller."
    best = min(judged, key=lambda s: abs(s["shift_per_doubling"]))
    rest = [s for s in judged if s is not best]
    margin = min(abs(s["shift_per_doubling"]) for s in rest) - abs(best["shift_per_doubling"])
    if margin < 0.1:
        return head + (f" The shifts differ by {margin:.2f} octaves per doubling: within what "
                       "a coarse grid and seed noise can tell apart, the rule makes no "
                       "difference here.")
    return head + f" **{best['parameterisation']}** keeps the optimum stillest."


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
              f"{real['dims']} log2 multipliers (kinds {', '.join(real['kinds'])}) in "
              f"±{real['radius']:g}; {real['batch']} trials in flight; search seed "
              f"{real['seed']}; every trial trained with seed {real['explore_seed']} "
              "(re-evaluations inside TRRS use other seeds and count against the budget). "
              "Best single-seed final validation loss seen after n trials, and the point each "
              f"algorithm recommends re-evaluated on seeds {real['reeval_seeds']}:")
        budgets = [b for b in BUDGETS if b < real["trials"]] + [real["trials"]]
        algs = real["algorithms"]
        target = algs["random"]["best_so_far"][-1] if "random" in algs else None

        def reach(curve: list[float]) -> str:
            if target is None:
                return "-"
            return next((str(i + 1) for i, v in enumerate(curve) if v <= target), "never")

        g = real["global"]
        rows = [[alg, *(_fmt(a["best_so_far"][b - 1]) for b in budgets),
                 reach(a["best_so_far"]),
                 f"{_fmt(a['recommended']['mean'])} ± {_fmt(a['recommended']['std'], 2)}"]
                for alg, a in algs.items()]
        rows.append(["global optimum (no search)", *("" for _ in budgets), "",
                     f"{_fmt(g['mean'])} ± {_fmt(g['std'], 2)}"])
        doc.table(["algorithm", *(f"n={b}" for b in budgets),
                   "trials to reach random's final best", "recommended, fresh seeds"], rows)
        best = min(algs, key=lambda a: algs[a]["recommended"]["mean"])
        beat = [a for a, v in algs.items()
                if v["recommended"]["mean"] < g["mean"] - g["std"]]
        text = (f"**Search comparison**: on fresh seeds, {best}'s recommended point is best "
                f"({_fmt(algs[best]['recommended']['mean'])} against the global optimum's "
                f"{_fmt(g['mean'])} ± {_fmt(g['std'], 2)}); "
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
              f"is within 1% of the optimum (budget {syn['budget']}, batch 4), per landscape "
              "seed:")
        doc.table(["algorithm", *(f"seed {i}" for i in range(syn["seeds"])), "reached",
                   "final loss (mean)"],
                  [[alg, *(str(r) if r else "-" for r in a["reached"]),
                    f"{sum(r is not None for r in a['reached'])}/{syn['seeds']}",
                    _fmt(statistics.fmean(a["final"]))] for alg, a in syn["algorithms"].items()])


def search_section(study: Study, doc: Doc, found: Findings) -> None:
    from .plots import plot_multiplier_heatmap

    if not study.search_best.exists():
        return
    best = read_json(study.search_best)
    doc.h(1, "Per-module search")
    if best.get("status") != "done":
        doc.p("Disabled in the spec.")
        return
    b, g = best["reeval"], best["global_reeval"]
    doc.p(f"{best['algorithm']} search, {best['trials']} trials over {len(best['dims'])} log2 "
          f"multipliers. Best trial {best['best_trial']}: loss {_fmt(best['best_loss'])}. "
          f"Re-evaluated on seeds {b['seeds']}: **{_fmt(b['mean'])} ± {_fmt(b['std'], 2)}** "
          f"against the global optimum's {_fmt(g['mean'])} ± {_fmt(g['std'], 2)}.")
    src = study.search_dir / "best_so_far.png"
    if src.exists():
        shutil.copyfile(src, study.report_dir / "search_progress.png")
        doc.fig(study.report_dir / "search_progress.png", "search: each trial's loss and the "
                "best so far")
    heat = study.report_dir / "search_multipliers.png"
    plot_multiplier_heatmap(best["dims"], best["x"], heat,
                            f"best trial {best['best_trial']}: type factor + layer factor")
    doc.fig(heat, "per-module multipliers found (log2, per type and layer)")
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
              "(every multiplier 1), so the per-module arm equals the global one.")
        return
    spread = max(b["std"], g["std"])
    if gain > 0 and (n < 2 or gain > spread):
        head = "**The per-module search improves the proxy**"
    else:
        head = "**No clear gain from the per-module search at the proxy**"
    seeds = (f"on {n} fresh seed(s)" + ("" if n > 1 else "; one seed gives no spread, so add "
                                        "search.reeval_seeds to judge noise"))
    found.claim("search", f"{head}: re-evaluated {seeds}, the best multipliers reach "
                f"{_fmt(b['mean'])} against the global optimum's {_fmt(g['mean'])} (a "
                f"difference of {gain:+.4f} nats; seed spread {spread:.4f}).", gain=gain)
    doc.p("Largest multipliers found (log2, 0 = the global optimum):")
    ranked = sorted(zip(best["dims"], best["x"], strict=True), key=lambda p: -abs(p[1]))
    doc.table(["coordinate", "log2 multiplier"], [[n_, f"{v:+.2f}"] for n_, v in ranked[:10]])


def _arm_curves(study: Study, run_ids: list[str]) -> tuple[dict[int, list], list[float], int]:
    """(curve by seed of the completed runs, their final losses, runs planned)."""
    curves, finals = {}, []
    for rid in run_ids:
        r = load_result(study.run_dir(rid))
        if r is None or not r.ok:
            continue
        cfg = study.run_dir(rid) / "config.json"
        seed = read_json(cfg)["config"]["seed"] if cfg.exists() else len(curves)
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


def target_section(spec: Spec, study: Study, doc: Doc, found: Findings,
                   sub_rows: list[dict]) -> None:
    from .plots import plot_target_curves

    if not study.transfer_done.exists():
        return
    entries = read_json(study.transfer_done)
    baseline = next((a.name for a in spec.arms if a.multipliers == "none"), spec.arms[0].name)
    doc.h(1, "Targets")
    doc.p(f"Each arm's HPs transferred to each target. Speedup = steps the `{baseline}` arm "
          "needs to reach its final loss / steps the arm needs to reach it, on seed-mean "
          "curves with linear interpolation between evaluations; ▼ marks where each arm gets "
          "there. The interval is over seeds: a Student-t interval on the log speedups of seed "
          "pairs (the same seed in both arms), exponentiated.")
    for model in spec.target_models():
        arms = {e["arm"]: _arm_curves(study, e["runs"]) for e in entries
                if e["model"] == model}
        means = {arm: mean_curve(list(c.values())) for arm, (c, _, _) in arms.items()
                 if c and len({len(x) for x in c.values()}) == 1}
        ref = means.get(baseline)
        stats = {arm: speedup_ci(arms[baseline][0], c) for arm, (c, _, _) in arms.items()
                 if baseline in arms and arm != baseline and c}
        marks = {arm: steps_to_reach(curve, ref[-1][1]) for arm, curve in means.items()
                 if ref and arm != baseline}
        fig = study.report_dir / f"target_{model}.png"
        if means:
            plot_target_curves(means, fig, f"{model}: validation loss per arm",
                               {a: s["speedup"] for a, s in stats.items()}, baseline,
                               bands={a: b for a, (c, _, _) in arms.items()
                                      if (b := _band(c)) is not None},
                               marks=marks)
        doc.h(2, model)
        doc.fig(fig, f"{model}: validation loss against steps per arm (seed means; band: "
                "lowest to highest seed)")
        rows = []
        for arm, (_, finals, n) in arms.items():
            mean = statistics.fmean(finals) if finals else math.nan
            std = statistics.stdev(finals) if len(finals) > 1 else 0.0
            s = stats.get(arm)
            if arm == baseline:
                up, ci = "1 (reference)", "-"
            elif s is None:
                up, ci = "-", "-"
            else:
                up = _fmt(s["speedup"], 3) + "x"
                ci = (f"{_fmt(s['geo_mean'], 3)}x [{_fmt(s['ci_low'], 3)}, "
                      f"{_fmt(s['ci_high'], 3)}]" if s["ci_low"] is not None
                      else f"{_fmt(s['geo_mean'], 3)}x (one seed)")
            rows.append([arm, f"{_fmt(mean)} ± {_fmt(std, 2)}", f"{len(finals)}/{n}", up, ci])
        doc.table(["arm", "final val loss (mean ± std over seeds)", "runs completed",
                   "speedup (seed-mean curves)", "per-seed geometric mean [95% CI]"], rows)
        for arm, s in stats.items():
            found.metric(f"speedup.{model}.{arm}", s["speedup"])
            if s["ci_low"] is not None:
                found.metric(f"speedup.{model}.{arm}.ci_low", s["ci_low"])
                found.metric(f"speedup.{model}.{arm}.ci_high", s["ci_high"])
            found.claim("speedup", _speedup_verdict(model, arm, baseline, s, ref, marks.get(arm),
                                                    len(spec.targets.seeds)),
                        model=model, arm=arm, reference=baseline, speedup=s["speedup"],
                        ci_low=s["ci_low"], ci_high=s["ci_high"], seeds=s["n"])
        _tuned_directly(spec, model, sub_rows, found)


def _speedup_verdict(model: str, arm: str, ref_arm: str, s: dict, ref: Optional[list],
                     mark: Optional[float], n_seeds: int) -> str:
    z = s["speedup"]
    if z is None or not math.isfinite(z):
        return (f"**No speedup measurable for {arm} at {model}**: neither {arm} nor "
                f"{ref_arm} reaches the other's final loss.")
    steps = ""
    if ref and mark:
        steps = (f": {ref_arm} needs {ref[-1][0]:.0f} steps for its final loss "
                 f"{ref[-1][1]:.4f}, {arm} gets there at step {mark:.0f}")
    if s["ci_low"] is not None:
        ci = (f" Over {s['n']} seed pairs the speedup is {s['geo_mean']:.2f}x, 95% CI "
              f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
              + ("; the interval excludes 1." if s["ci_low"] > 1 or s["ci_high"] < 1
                 else "; the interval includes 1, so the difference is within seed noise."))
    else:
        ci = (f" With {n_seeds} seed there is no interval; set targets.seeds to two or more "
              "to get one.")
    if abs(z - 1) < 0.005:
        head = f"**{arm} matches {ref_arm} at {model}**, speedup {z:.2f}x"
    elif z > 1:
        head = f"**{arm} reaches {ref_arm}'s final loss {z:.2f}x as fast at {model}**"
    else:
        head = (f"**{arm} is slower than {ref_arm} at {model}**: speedup {z:.2f}x (it needs "
                f"{1 / z:.2f}x the steps)")
    return head + steps + "." + ci


def _tuned_directly(spec: Spec, model: str, sub_rows: list[dict], found: Findings) -> None:
    """Where the sweep also covers the target's scale, the target was tuned directly: how far
    the transferred HP is from its own optimum. Not for the base model, where nothing is
    transferred (every axis's sweep passes through it)."""
    m = spec.models[model]
    if model == spec.base:
        return
    for r in sub_rows:
        same = all(r.get(k) == getattr(m, k) for k in ("width", "depth", "batch", "tokens",
                                                       "seq_len"))
        if same and r.get("suboptimality") is not None:
            found.metric(f"target_suboptimality.{model}.{r['kind']}.{r['parameterisation']}",
                         r["suboptimality"])
            found.claim("target_suboptimality",
                        f"**{model} was also tuned directly** (the {r['axis']} sweep covers its "
                        f"scale): under {r['parameterisation']} the transferred {r['kind']} "
                        f"{_fmt(r['transferred'])} gives {_fmt(r['loss_transferred'])} against "
                        f"{_fmt(r['opt_loss'])} at its own optimum {_fmt(r['opt'])}, "
                        f"{r['suboptimality']:.3f} nats worse.",
                        model=model, kind=r["kind"], parameterisation=r["parameterisation"],
                        suboptimality=r["suboptimality"])


def runs_section(study: Study, doc: Doc) -> None:
    import polars as pl

    table = runs_table(study)
    if table.is_empty():
        return
    path = study.report_dir / "runs.parquet"
    table.write_parquet(path)
    doc.h(1, "Runs")
    status = "status" if "status" in table.columns else "run_status"  # no stage table yet
    counts = (table.with_columns(pl.col("stage").fill_null("(none)"))
              .group_by("stage", maintain_order=True)
              .agg(pl.col("run_id").n_unique().alias("runs"),
                   *(pl.col("run_id").filter(pl.col(status) == s).n_unique().alias(s)
                     for s in ("completed", "diverged", "failed"))))
    doc.p(f"Every run of the study, one row per (stage, role), is in `{path.name}` beside this "
          "report (`cp.analysis.runs_table`).")
    doc.table(["stage", "runs", "completed", "diverged", "failed"],
              [[str(r["stage"]), str(r["runs"]), str(r["completed"]), str(r["diverged"]),
                str(r["failed"])] for r in counts.to_dicts()])


# ---------------------------------------------------------------------------------------------


def document(spec: Spec, study: Study) -> tuple[Doc, Findings]:
    """The report of ``study`` as a document (figures written to the report folder)."""
    study.report_dir.mkdir(parents=True, exist_ok=True)
    body, found = Doc(""), Findings()
    check_section(study, body, found)
    select_section(study, body)
    sub_rows = transfer_section(spec, study, body, found)
    ablation_section(spec, study, body, found)
    search_section(study, body, found)
    comparison = study.root / "search_comparison.json"
    if comparison.exists():
        body.h(1, "Search algorithms compared")
        search_comparison_section(body, read_json(comparison), level=2, found=found)
    target_section(spec, study, body, found, sub_rows)
    runs_section(study, body)

    doc = Doc(f"Study `{spec.name}`")
    doc.p(spec.description.strip())
    doc.p(f"Built {datetime.datetime.now().isoformat(timespec='seconds')} from "
          f"`{study.root}`. Parameterisation: **{spec.parameterisation.name}**; base model "
          f"`{spec.base}`; targets: {', '.join(spec.target_models()) or '-'}.")
    doc.h(1, "Verdicts")
    if not found.claims:
        doc.p("No claim can be judged yet: the study has no finished stage with results.")
    for c in found.claims:
        doc.p(c["text"])
    doc.blocks += body.blocks
    return doc, found


def build_report(spec: Spec, study: Study) -> Path:
    """Write the report of ``study`` (report.md, report.html, figures, summary.json); return
    the Markdown file's path."""
    doc, found = document(spec, study)
    write_text(study.report_file, doc.markdown(study.report_dir))
    write_text(study.report_dir / "report.html", doc.html())
    write_json(study.report_dir / "summary.json",
               {"study": spec.name, "claims": found.claims, "metrics": found.metrics})
    return study.report_file


def provenance(study: Study) -> str:
    """Where a study's numbers came from: the machines and commits in its stage records."""
    from .provenance import STAGE_RECORD

    records = [read_json(p) for p in sorted(study.root.glob(f"*/{STAGE_RECORD}"))]
    commits = sorted({r["git_commit"] for r in records if r.get("git_commit")})
    machines = sorted({r.get("machine") or r.get("host", "?") for r in records})
    ran = [r["started"] for r in records if r.get("started")]
    days = sorted({datetime.date.fromtimestamp(t).isoformat() for t in ran})
    when = ("on unknown dates" if not days else f"on {days[0]}" if len(days) == 1
            else f"from {days[0]} to {days[-1]}")
    return (f"The study ran {when}, on {'; '.join(machines) or 'an unrecorded machine'}, "
            f"from commit {', '.join(c[:12] for c in commits) or 'unknown'}.")


def publish(study: Study, path: str | Path) -> Path:
    """The report as ``path`` (Markdown) with its figures in a folder beside it (``results.md``
    -> ``results/``), headed by where the numbers came from: for a repository's docs."""
    import shutil

    from .doc import Figure
    from .study import read_spec

    path = Path(path)
    figures = path.with_suffix("")
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    spec = read_spec(study)
    doc, _ = document(spec, study)
    for i, b in enumerate(doc.blocks):
        if isinstance(b, Figure):
            dest = figures / b.path.name
            shutil.copyfile(b.path, dest)
            doc.blocks[i] = Figure(dest, b.alt)
    text = doc.markdown(path.parent)
    head, _, rest = text.partition("\n\n")
    note = (f"Generated by `cpt report {study.root} --publish {path}` on "
            f"{datetime.date.today().isoformat()}, from the study folder alone (not typed by "
            f"hand). {provenance(study)}")
    write_text(path, f"{head}\n\n{note}\n\n{rest}")
    return path


def rebuild(folder: str | Path) -> Path:
    """`cpt report STUDY`: the report rebuilt from the study folder alone (its spec.yaml,
    tables and run folders)."""
    from .study import read_spec

    study = Study(Path(folder))
    return build_report(read_spec(study), study)
