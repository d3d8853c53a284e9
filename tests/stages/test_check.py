"""The check stage: the guard stops a failing parameterisation with the plot's path."""

import pytest

from cp.pipeline import run_stage
from cp.stages import StageFailed
from cp.study import Study
from tests.study_helpers import quiet, smoke_spec


def test_the_check_stops_a_failing_parameterisation_with_the_plot_path(tmp_path):
    spec = smoke_spec(parameterisation={"name": "sp"})
    study = Study(tmp_path / "s")
    with pytest.raises(StageFailed, match=r"coordinate check failed for sp: .*coord_check\.png"):
        run_stage("check", spec, study, echo=quiet)
    assert not study.check_verdict.exists()
    assert study.check_plot.exists() and study.check_fits.exists()
