"""MLflow down part-way and back up (the tracking tests' study: tests/conftest.py
``tracked_smoke``): the study finishes with the uninterrupted study's numbers, trains nothing
twice, and says which store failed."""

import pytest

from tests.faults.helpers import assert_no_traceback, assert_same_numbers, assert_trained_once


@pytest.mark.slow
def test_mlflow_down_and_back_up_changes_no_number(tracked_smoke, reference):
    t = tracked_smoke
    assert t.pipeline_rc == 0, t.pipeline_out[-4000:]
    assert "cpt: warning: MLflow tracking at http://127.0.0.1:" in t.pipeline_out  # the store
    assert_no_traceback(t.pipeline_out)
    assert_trained_once(t.study)
    assert_same_numbers(t.study, reference.study)
    assert all(rc == 0 for rc, _ in t.sync_out)  # and once it is back, sync fills it
