"""Stage 5, transfer: each (target, arm)'s HPs carried from the base model by its table, written
as resolved per-group settings (``cpt describe --json``'s format, for any trainer) and as the
run configs the target stage trains. Owns the ``targets`` and ``arms`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Optional

from ..config import PlannedRun, RunConfig
from ..scaling import Factors
from ..schema import Problems
from ..study import CorruptFile, Study, plain_name_problem, read_json_list, write_json
from .base import Context, Outputs, Stage, StagePlan, read_selected
from .search import best_factors

if TYPE_CHECKING:
    from ..spec import Spec

#: A target is at least the base model along these axes.
GROW_AXES = ("width", "depth", "tokens")


@dataclass
class ArmSpec:
    """One way of setting the targets' HPs."""

    name: str
    """Arm name (in tables and plots)."""
    hps: Literal["global", "spec"] = "global"
    """``global``: the selected global optimum; ``spec``: the spec's ``hps`` as written."""
    factors: Literal["none", "search"] = "none"
    """``search``: the per-module search's recommended factors; ``none``: all 1."""
    parameterisation: Optional[str] = None
    """Table that transfers this arm's HPs (default: the study's)."""

    RENAMED: ClassVar[dict[str, str]] = {"multipliers": "factors"}

    def check(self, at: str, spec: Spec, problems: Problems) -> None:
        if self.parameterisation is not None:
            problems.choice(f"{at}.parameterisation", self.parameterisation, spec.table_names(),
                            "parameterisation")
            swept = {spec.parameterisation.name, *spec.sweeps.parameterisations}
            if self.hps == "global" and spec.sweeps.grid and self.parameterisation not in swept:
                problems(f"{at}.parameterisation", f"arm {self.name!r} takes the global "
                         f"optimum of {self.parameterisation!r}, which is not swept",
                         "add it to sweeps.parameterisations, or set the arm's hps: spec")
        if self.factors == "search" and not spec.search.enabled:
            problems(f"{at}.factors", "'search' needs the search stage, which is disabled",
                     "none, or search.enabled: true")


def default_arms() -> list[ArmSpec]:
    return [ArmSpec(name="global"), ArmSpec(name="per_module", factors="search")]


def check_arms(at: str, arms: list[ArmSpec], spec: Spec, problems: Problems) -> None:
    problems.nonempty(at, arms, "one or more arms (e.g. {name: global})")
    names = [a.name for a in arms]
    for i, arm in enumerate(arms):
        if plain_name_problem(arm.name):  # it names the arm's folder under transfer/<target>/
            problems(f"{at}[{i}].name", str(plain_name_problem(arm.name)))
        elif names.count(arm.name) > 1:
            problems(f"{at}[{i}].name", f"arm name {arm.name!r} is used twice", "unique names")
        arm.check(f"{at}[{i}]", spec, problems)


@dataclass
class TargetsSpec:
    """Which models the transferred HPs are trained on, and whether each is also tuned
    directly."""

    models: list[str] = field(default_factory=list)
    """Model names; empty: every model but the base."""
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    """Seeds of every (target, arm). They judge (the speedups; two or more give an
    interval), so no choosing run (sweeps, search trials, the target sweep) may use them."""
    sweep: dict[str, list[float]] = field(default_factory=dict)
    """Grid swept at each target to tune it directly: HP kind -> base values (as
    ``sweeps.grid``), the other HPs as the global arm has them. The report then gives the
    target's own optimum against the transferred one, the price of transferring there, and
    the speedups against the best global setting at the target: an arm ``global_tuned``,
    the global arm at the target's own optimum, trained on ``seeds``."""
    sweep_seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the target sweep. They choose (the target's optimum), so they must differ
    from ``seeds``."""

    def check(self, at: str, spec: Spec, problems: Problems) -> None:
        from .sweep import check_grid

        for i, name in enumerate(self.models):
            problems.choice(f"{at}.models[{i}]", name, spec.models, "model")
        problems.unique(f"{at}.models", self.models, "model")
        problems.nonempty(f"{at}.seeds", self.seeds, "one or more seeds")
        problems.unique(f"{at}.seeds", self.seeds, "seed")
        check_grid(problems, f"{at}.sweep", self.sweep)
        if self.sweep:
            problems.nonempty(f"{at}.sweep_seeds", self.sweep_seeds, "one or more seeds")
            problems.unique(f"{at}.sweep_seeds", self.sweep_seeds, "seed")
        base = spec.models.get(spec.base)
        if base is None:
            return
        for name in spec.target_models():
            model = spec.models.get(name)
            if model is None or name == spec.base:
                continue
            for axis in GROW_AXES:
                if getattr(model, axis) < getattr(base, axis):
                    problems(f"models.{name}.{axis}", f"target {name!r} has {axis} "
                             f"{getattr(model, axis)}, smaller than the base's "
                             f"{getattr(base, axis)}; a target must not shrink on "
                             f"{', '.join(GROW_AXES)}", f">= {getattr(base, axis)}")


def arm_run(spec: Spec, arm: ArmSpec, model: str, seed: int, selected: dict[str, dict],
            searched: Optional[Factors]) -> PlannedRun:
    """The run of ``arm`` at target ``model``: its HPs transferred from the base."""
    table = arm.parameterisation or spec.parameterisation.name
    hps = spec.hps
    if arm.hps == "global" and table in selected:
        hps = spec.hps.with_values(selected[table]["values"])
    factors = Factors()
    if arm.factors == "search":
        if searched is None:
            raise ValueError(f"arm {arm.name!r} needs the search's recommended factors, "
                             "which are not available (run the search stage first)")
        factors = searched
    cfg = spec.run_config(model, parameterisation=spec.table_config(table), hps=hps,
                          factors=factors, seed=seed, stream="judge")
    return PlannedRun(cfg, {"stage": "target", "model": model, "arm": arm.name,
                            "parameterisation": table, "seed": seed})


def target_plans(spec: Spec, study: Study) -> list[PlannedRun]:
    """Every (target, arm, seed) run, with HPs from the select and search outputs."""
    tables = {arm.parameterisation or spec.parameterisation.name for arm in spec.arms
              if arm.hps == "global"}
    selected = read_selected(study, sorted(tables) if spec.sweeps.grid else [])
    searched = best_factors(study)
    return [arm_run(spec, arm, model, seed, selected, searched)
            for model in spec.target_models() for arm in spec.arms
            for seed in spec.targets.seeds]


def run(ctx: Context) -> list[dict]:
    spec, study = ctx.spec, ctx.study
    plans = target_plans(spec, study)
    index = []
    for model in spec.target_models():
        for arm in spec.arms:
            mine = [p for p in plans if p.tags["model"] == model and p.tags["arm"] == arm.name]
            write_json(study.transfer_settings(model, arm.name), mine[0].config.describe())
            write_json(study.transfer_runs(model, arm.name),
                       [{"run_id": p.run_id, "seed": p.tags["seed"], "tags": p.tags,
                         "config": p.config.to_dict()} for p in mine])
            index.append({"model": model, "arm": arm.name,
                          "folder": str(study.transfer_dir(model, arm.name)),
                          "runs": [p.run_id for p in mine]})
            ctx.echo(f"[transfer] {model}/{arm.name}: settings in "
                     f"{study.transfer_settings(model, arm.name)}")
    write_json(study.transfer_done, index)
    return index


def read_index(study: Study) -> list[dict]:
    """``transfer/done.json``: one entry per (target, arm), checked."""
    return read_json_list(study.transfer_done, "model", "arm", "runs")


def read_runs(study: Study, model: str, arm: str) -> list[PlannedRun]:
    """The runs of (target ``model``, ``arm``) as the transfer stage wrote them, checked: each
    config resolves to its run id, and its tags name this target and arm."""
    path = study.transfer_runs(model, arm)
    runs = []
    for i, r in enumerate(read_json_list(path, "run_id", "seed", "tags", "config")):
        try:
            pr = PlannedRun(RunConfig.from_dict(r["config"]), r["tags"])
            ok = (pr.run_id == r["run_id"] and isinstance(r["tags"], dict)
                  and r["tags"].get("model") == model and r["tags"].get("arm") == arm)
        except Exception as e:  # OmegaConf's errors, a bad value in a section's field
            raise CorruptFile(path, f"entry {i} is not a run config ({type(e).__name__})"
                              ) from None
        if not ok:
            raise CorruptFile(path, f"entry {i} is not a run of {model}/{arm} (swapped or "
                              "edited)")
        runs.append(pr)
    return runs


def plan(spec: Spec) -> StagePlan:
    return StagePlan("transfer", 0, 0, f"{len(spec.target_models())} target(s) x "
                     f"{len(spec.arms)} arm(s)")


def outputs(study: Study) -> Outputs:
    """The settings of each (target, arm), the index and the stage record. Not the runs.json
    files: their run configs are each target run's config.json in MLflow (with any value read
    from the environment left out)."""
    out = Outputs()
    out.add(study.spec_file, None)
    out.add(study.stage_record("transfer"), "transfer")
    out.add(study.transfer_done, "transfer")
    if study.transfer_done.exists():
        for entry in read_index(study):
            out.add(study.transfer_settings(entry["model"], entry["arm"]),
                    f"transfer/{entry['model']}/{entry['arm']}")
    return out


STAGE = Stage(name="transfer", summary="each (target, arm)'s resolved per-group settings, for "
              "any trainer", after=("select", "search"), run=run,
              done=lambda study: study.transfer_done, plan=plan, outputs=outputs)
