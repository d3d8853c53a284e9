"""Stage 1, check: the coordinate check across width and depth as the study's guard. A failing
parameterisation stops the study before any sweep, with the plot's path in the error.
``cpt coord-check`` runs this same stage and prints its table."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..coord import CoordConfig, CoordResult, check_run, write_outputs
from ..doc import Doc
from ..study import Study, read_json, write_json
from .base import Context, Outputs, ReportContext, Stage, StageFailed, StagePlan, base_outputs

if TYPE_CHECKING:
    from ..spec import Spec


@dataclass
class CheckSpec(CoordConfig):
    """The coordinate check, run first as the study's guard: a failing parameterisation stops
    the study before any sweep."""

    enabled: bool = True
    """Run the check (and stop the study when it fails)."""


def measure(spec: Spec, echo: Any = print) -> CoordResult:
    """The coordinate check of the spec's parameterisation around its base model."""
    fields = {f.name for f in dataclasses.fields(CoordConfig)}
    ccfg = CoordConfig(**{k: v for k, v in dataclasses.asdict(spec.check).items()
                          if k in fields})
    echo(f"[check] coordinate check of {spec.parameterisation.name} at width "
         f"x{ccfg.width_ratios}, depth x{ccfg.depth_ratios} ({ccfg.steps} steps)")
    return check_run(spec.run_config(spec.base), ccfg, progress=lambda i, n, axis, r: echo(
        f"[check] {i}/{n} models ({axis} x{r:g})"))


def run(ctx: Context) -> dict:
    """The guard: raises StageFailed when a judged slope is off."""
    spec, study, echo = ctx.spec, ctx.study, ctx.echo
    if not spec.check.enabled:
        verdict: dict[str, Any] = {"status": "skipped"}
        write_json(study.check_verdict, verdict)
        echo("[check] disabled in the spec")
        return verdict
    result = measure(spec, echo)
    write_outputs(result, study.check_measurements, study.check_fits, study.check_plot)
    if not result.passed:
        bad = ", ".join(sorted({f"{f['group']} {f['quantity']} on {f['axis']} (slope "
                                f"{f['slope']:+.2f})" for f in result.failures()}))
        raise StageFailed(f"coordinate check failed for {result.parameterisation}: {bad}. "
                          f"See {study.check_plot}. Fix the parameterisation (or set "
                          "check.enabled: false to run anyway).")
    verdict = {"status": "pass", "parameterisation": result.parameterisation,
               "plot": str(study.check_plot), "fits": result.fits}
    write_json(study.check_verdict, verdict)
    echo(f"[check] pass: every judged coordinate is flat ({study.check_plot})")
    return verdict


def plan(spec: Spec) -> StagePlan:
    chk = spec.check
    if not chk.enabled:
        return StagePlan("check", 0, 0, "disabled")
    n = (len(chk.width_ratios) + len(chk.depth_ratios)) * chk.seeds
    return StagePlan("check", n, n * chk.steps * chk.batch * chk.seq_len,
                     f"{chk.steps} steps per model")


def outputs(study: Study) -> Outputs:
    out = base_outputs(study, "check")
    for path in (study.check_plot, study.check_fits, study.check_measurements,
                 study.check_verdict):
        out.add(path, "check")
    verdict = read_json(study.check_verdict, "status") if study.check_verdict.exists() else {}
    if verdict.get("status") == "pass":
        out.metrics.append(("check_passed", 1.0, 0))
    return out


def report(rc: ReportContext) -> None:
    study, doc = rc.study, rc.doc
    if not study.check_verdict.exists():
        return
    v = read_json(study.check_verdict, "status")
    doc.h(1, "Coordinate check")
    if v["status"] != "pass":
        doc.p("Skipped (disabled in the spec).")
        return
    judged = [f for f in v.get("fits", []) if f.get("verdict") in ("pass", "fail")]
    doc.p(f"**Pass** for {v['parameterisation']}: every judged coordinate stays flat across "
          f"width and depth ({len(judged)} judged slopes).")
    _copy_figure(study, doc)
    rc.found.claim("coordinate_check", f"**The coordinate check passes for "
                   f"{v['parameterisation']}**: all {len(judged)} judged log-log slopes of "
                   "activation and update size against width and depth are within tolerance "
                   "of their expected values.", passed=True)
    rc.found.metric("check.passed", 1.0)


def _copy_figure(study: Study, doc: Doc) -> None:
    if study.check_plot.exists():
        fig = study.report_figure("coord_check")
        shutil.copyfile(study.check_plot, fig)
        doc.fig(fig, "coordinate check: activation and update size against width and depth")


STAGE = Stage(name="check", summary="coordinate check across width and depth; a failing "
              "parameterisation stops the study", after=(), run=run,
              done=lambda study: study.check_verdict, plan=plan, outputs=outputs,
              report=report)
