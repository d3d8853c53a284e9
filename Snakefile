# The study pipeline. One rule per stage; each rule runs a whole stage (a batch of runs) through
# `cpt stage`, so a sweep of 200 runs is one job, not 200 Python start-ups.
#
#   snakemake --profile profiles/local                             # the demo study
#   snakemake --profile profiles/local --config spec=specs/x.yaml  # another study
#
# Config keys (the profile's config file, overridable with --config): spec, results, and
# `overrides`, a mapping of spec keys the profile sets (launcher, tracking...).

import shlex
import sys

from cp.lock import StudyLocked, hold_for_pipeline
from cp.schema import SpecError
from cp.spec import load_spec
from cp.stages import get as stage
from cp.study import StorageError, Study
from cp.tracking.hub import start_hub

SPEC = config.get("spec", "specs/demo.yaml")
RESULTS = config.get("results", "results")


def _flatten(prefix, value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else k, v)
    else:
        yield f"{prefix}={value}"


OVERRIDES = list(_flatten("", config.get("overrides") or {}))
try:
    STUDY_SPEC = load_spec(SPEC, overrides=OVERRIDES)
except SpecError as e:
    sys.stderr.write(e.format() + "\n")
    raise WorkflowError(f"invalid spec {SPEC}") from None

STUDY = Study.at(RESULTS, STUDY_SPEC.name)
# The interpreter running Snakemake has cp installed; no dependence on PATH.
CPT = shlex.quote(sys.executable) + " -m cp.cli stage {stage} " + shlex.quote(SPEC) + " --results " + shlex.quote(RESULTS) + "".join(
    " --set " + shlex.quote(o) for o in OVERRIDES)


def cpt(name):
    """The command of stage ``name``."""
    return CPT.format(stage=name)


def done(name):
    """The file whose existence says stage ``name`` has finished (cp.stages)."""
    return str(stage(name).done(STUDY))


def after(name):
    """The spec and the files of the stages ``name`` reads."""
    return [SPEC] + [done(a) for a in stage(name).after]


include: "workflow/rules/check.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/target.smk"
include: "workflow/rules/report.smk"


# The study lock (cp.lock): taken when jobs are about to run, so a second pipeline on the same
# study folder -- from this checkout or another -- is refused before it trains anything. The
# stages this pipeline starts inherit its token (CP_STUDY_LOCK) and join the lock.
# The tracking hub (cp.tracking.hub): this process, which mostly waits on its jobs, imports
# mlflow and opens the store once, and every stage logs through it (CP_TRACKING_HUB).
LOCK, HUB = [], []


onstart:
    try:
        LOCK.append(hold_for_pipeline(STUDY, f"snakemake pipeline of {SPEC}"))
    except (StudyLocked, StorageError) as e:
        raise WorkflowError(str(e)) from None
    HUB.append(start_hub(STUDY_SPEC, STUDY))


def _release():
    for hub in HUB:
        if hub is not None:
            hub.close()
    for lock in LOCK:
        lock.release()


onsuccess:
    _release()
    print(f"\nstudy {STUDY_SPEC.name} done: report at {done('report')}\n")


onerror:
    _release()


rule all:
    input:
        done("report"),
    default_target: True
