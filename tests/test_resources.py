"""The launcher section of a spec: SLURM resources, per-stage overrides, and the problems a
cluster user can make in them, each reported with its key and what is allowed."""

from pathlib import Path

import pytest

from cp.spec import SlurmSpec, SpecError, load_spec

REPO = Path(__file__).parent.parent
SMOKE = REPO / "specs" / "smoke.yaml"


def test_stage_overrides_are_merged_over_the_common_resources():
    spec = load_spec(SMOKE, ["launcher.kind=slurm", "launcher.slurm.partition=gpu",
                             "launcher.slurm.gpus_per_node=1", "launcher.slurm.mem_gb=32",
                             "launcher.stages.target.gpus_per_node=8",
                             "launcher.stages.target.nodes=2",
                             "models.target.batch=16"])  # a sequence for each of 16 ranks
    target, sweep = spec.launcher.slurm_for("target"), spec.launcher.slurm_for("sweep")
    assert (target.partition, target.gpus_per_node, target.nodes, target.mem_gb) == \
        ("gpu", 8, 2, 32.0)
    assert (sweep.partition, sweep.gpus_per_node, sweep.nodes) == ("gpu", 1, 1)
    assert spec.launcher.slurm_for("search") == spec.launcher.slurm


def test_the_slurm_profile_loads_with_every_shipped_spec():
    import yaml

    config = yaml.safe_load((REPO / "profiles" / "slurm" / "study.yaml").read_text())

    def flat(prefix, value):  # as the Snakefile turns `overrides` into --set arguments
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(f"{prefix}.{k}" if prefix else k, v)
        else:
            yield f"{prefix}={value}"

    for path in sorted((REPO / "specs").glob("*.yaml")):
        spec = load_spec(path, list(flat("", config["overrides"])))
        assert spec.launcher.kind == "slurm"
        assert spec.launcher.slurm_for("target").gpus_per_node == 8


@pytest.mark.parametrize("override,expected", [
    ("launcher.kind=slrum", ["launcher.kind", "did you mean 'slurm'"]),
    ("launcher.slurm.partion=gpu", ["launcher.slurm.partion", "did you mean 'partition'"]),
    ("launcher.slurm.nodes=0", ["launcher.slurm.nodes", "an integer >= 1"]),
    ("launcher.slurm.mem_gb=-4", ["launcher.slurm.mem_gb", "> 0"]),
    ("launcher.slurm.gpus_per_node=two", ["launcher.slurm.gpus_per_node", "not an integer"]),
    ("launcher.slurm.time_min=1", ["launcher.slurm.signal_delay_s", "signal_delay_s < 60"]),
    ("launcher.stages.targte.nodes=2", ["launcher.stages.targte", "did you mean 'target'",
                                        "sweep, search, target"]),
    ("launcher.stages.check.nodes=2", ["launcher.stages.check", "not a stage that trains"]),
    ("launcher.stages.target.gpus=8", ["launcher.stages.target.gpus", "unknown key",
                                       "gpus_per_node"]),
    ("launcher.stages.target.cpus_per_task=0", ["launcher.stages.target.cpus_per_task",
                                                "an integer >= 1"]),
])
def test_each_bad_launcher_setting_names_its_key_and_what_is_allowed(override, expected):
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, [override])
    text = err.value.format()
    for piece in expected:
        assert piece in text, (piece, text)


def test_a_stage_override_is_checked_once_not_with_the_common_keys():
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, ["launcher.slurm.mem_gb=-1", "launcher.stages.target.nodes=2"])
    assert [p.key for p in err.value.problems] == ["launcher.slurm.mem_gb"]


@pytest.mark.parametrize("resources,tasks", [
    ({}, 1),                                                # a CPU job: one process
    ({"gpus_per_node": 8}, 8),                              # one rank per GPU
    ({"gpus_per_node": 4, "nodes": 2}, 8),                  # on every node
    ({"tasks_per_node": 2, "nodes": 3}, 6),                 # CPU ranks (gloo)
])
def test_a_job_runs_one_data_parallel_rank_per_gpu_unless_told_otherwise(resources, tasks):
    assert SlurmSpec(**resources).ranks == tasks
