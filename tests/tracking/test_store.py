"""What the MLflow UI reads from a study's experiment, against a real (embedded sqlite) store:
the experiment's kind, so the UI opens the training runs rather than the GenAI overview, and
each run's corpus as a training dataset input."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from mlflow import MlflowClient

from cp.data import DataConfig
from cp.study import Study
from cp.tracking.store import Store
from tests.conftest import tiny_run

# What MLflow 3.x's UI reads (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
RESULT = {"status": "completed", "steps": 40, "total_steps": 40, "final_val_loss": 2.5,
          "eval_curve": [{"step": 40, "val_loss": 2.5}], "wall_s": 1.0}


_names = itertools.count()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One store for the module (creating a sqlite store costs seconds); each test its own
    experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def store_for(tmp_path, db) -> tuple[str, Study, str]:
    study = Study(tmp_path / "study")
    study.root.mkdir()
    return db, study, f"exp{next(_names)}"


def test_a_new_experiment_is_tagged_as_model_development(tmp_path, db):
    uri, study, name = store_for(tmp_path, db)
    Store(uri, name, study)
    exp = MlflowClient(uri).get_experiment_by_name(name)
    assert exp.tags[KIND_TAG] == MODEL_DEVELOPMENT


def test_an_existing_experiment_without_a_kind_gets_one(tmp_path, db):
    uri, study, name = store_for(tmp_path, db)
    MlflowClient(uri).create_experiment(name)  # as an older cp, or a user, made it
    Store(uri, name, study)
    assert MlflowClient(uri).get_experiment_by_name(name).tags[KIND_TAG] == MODEL_DEVELOPMENT


def test_an_experiment_kind_a_user_set_is_kept(tmp_path, db):
    uri, study, name = store_for(tmp_path, db)
    MlflowClient(uri).create_experiment(name, tags={KIND_TAG: "finetuning"})
    Store(uri, name, study)
    assert MlflowClient(uri).get_experiment_by_name(name).tags[KIND_TAG] == "finetuning"


def test_each_run_shows_its_corpus_as_one_training_dataset(tmp_path, db):
    uri, study, name = store_for(tmp_path, db)
    store = Store(uri, name, study)
    parent = store.parent("sweep")
    text = tmp_path / "my-corpus.txt"
    text.write_text("to be or not to be " * 100)
    bundled = tiny_run().to_dict()
    own = dataclasses.replace(tiny_run(), data=DataConfig(corpus=str(text))).to_dict()
    children = [store.log_child(parent, "sweep", rid, {"seed": 0}, config, RESULT)
                for rid, config in (("r1", bundled), ("r2", bundled), ("r3", own))]
    client = MlflowClient(uri)
    inputs = [client.get_run(c).inputs.dataset_inputs for c in children]
    assert [len(i) for i in inputs] == [1, 1, 1]
    (d1,), (d2,), (d3,) = inputs
    assert d1.dataset.name == "shakespeare" and d3.dataset.name == "my-corpus.txt"
    assert str(text) in d3.dataset.source
    for d in (d1, d2, d3):
        assert {t.key: t.value for t in d.tags} == {"mlflow.data.context": "training"}
    # One corpus, one dataset: the same digest; another corpus, another digest.
    assert d1.dataset.digest == d2.dataset.digest != d3.dataset.digest
    # Logging the study again (a `cpt sync` into another experiment) gives the same dataset.
    again = Store(uri, f"{name}-again", study)
    child = again.log_child(again.parent("sweep"), "sweep", "r1", {"seed": 0}, bundled, RESULT)
    (d,) = client.get_run(child).inputs.dataset_inputs
    assert (d.dataset.name, d.dataset.digest) == (d1.dataset.name, d1.dataset.digest)


def test_a_run_whose_corpus_file_is_gone_is_logged_without_a_dataset(tmp_path, db):
    uri, study, name = store_for(tmp_path, db)
    store = Store(uri, name, study)
    gone = dataclasses.replace(tiny_run(), data=DataConfig(corpus=str(tmp_path / "gone.txt")))
    child = store.log_child(store.parent("sweep"), "sweep", "r1", {}, gone.to_dict(), RESULT)
    run = MlflowClient(uri).get_run(child)
    assert run.inputs.dataset_inputs == [] and run.info.status == "FINISHED"
