"""The study folder: names stay inside it; every file is checked on read and a bad one is set
aside (renamed, never deleted) with a warning naming it."""

import json
from types import SimpleNamespace

import pytest

from cp.config import RunResult
from cp.study import CorruptFile, Study, read_json, read_table, write_parquet


def completed(run_id, loss=3.0):
    return RunResult(run_id=run_id, status="completed", diverged=False, reason=None, steps=40,
                     total_steps=40, tokens=10240, final_val_loss=loss,
                     eval_curve=[{"step": 40, "tokens": 10240, "val_loss": loss}])


@pytest.fixture
def study(tmp_path, tiny):
    """A study with two finished runs (configs as training writes them, results bound)."""
    study = Study(tmp_path / "study")
    ids = []
    for seed in (0, 1):
        cfg = tiny(seed=seed)
        rid = cfg.run_id()
        folder = study.run(rid)
        folder.write_config(rid, cfg.to_dict(), cfg.resolved())
        folder.write_result(completed(rid, 3.0 + seed))
        ids.append(rid)
    return SimpleNamespace(run=study.run, ids=ids)


@pytest.mark.parametrize("name", ["../../../tmp/x", "/tmp/x", "a/b", "..", ".hidden", ""])
def test_a_name_that_is_not_a_plain_name_never_becomes_a_path(tmp_path, name):
    with pytest.raises(ValueError, match="not a plain name"):
        Study.at(tmp_path, name)
    study = Study(tmp_path / "s")
    with pytest.raises(ValueError):
        study.transfer_dir(name, "global")
    with pytest.raises(ValueError):
        study.transfer_dir("target", name)
    with pytest.raises(ValueError):
        study.report_figure(name)


def test_a_good_result_reads_back_bound_to_its_config(study):
    for i, rid in enumerate(study.ids):
        result = study.run(rid).read_result()
        assert result.final_val_loss == 3.0 + i and result.config_hash


def corrupted(study, capsys, damage):
    """Damage the first run's files; the run's result must read as none, with the bad file
    set aside and named on stderr."""
    folder = study.run(study.ids[0])
    damage(folder)
    with pytest.raises(CorruptFile) as err:
        folder.read_result()
    bad = err.value.path
    assert str(bad) in str(err.value)
    assert folder.load_result() is None  # the launcher trains it again
    stderr = capsys.readouterr().err
    assert str(bad) in stderr and "set aside" in stderr
    assert not folder.result.exists()
    assert list(folder.path.glob("result.json.corrupt-*"))  # kept, renamed
    assert study.run(study.ids[1]).load_result().final_val_loss == 4.0  # the other run: fine
    return err.value


def test_a_truncated_result_is_corrupt(study, capsys):
    def damage(folder):
        folder.result.write_text(folder.result.read_text()[:50])

    assert "not valid JSON" in corrupted(study, capsys, damage).reason


def test_an_empty_object_result_is_corrupt(study, capsys):
    err = corrupted(study, capsys, lambda folder: folder.result.write_text("{}"))
    assert "missing field(s) run_id" in err.reason


def test_a_result_with_fields_of_the_wrong_type_is_corrupt(study, capsys):
    def damage(folder):
        d = json.loads(folder.result.read_text())
        d["status"] = "great"
        folder.result.write_text(json.dumps(d))

    assert "status" in corrupted(study, capsys, damage).reason


def test_another_runs_result_copied_in_is_corrupt(study, capsys):
    def damage(folder):
        folder.result.write_bytes(study.run(study.ids[1]).result.read_bytes())

    assert "is the result of run" in corrupted(study, capsys, damage).reason


def test_a_result_beside_another_config_is_corrupt(study, capsys, tiny):
    def damage(folder):  # a config whose own id is right, but not the one the result knew
        d = json.loads(folder.config.read_text())
        d["config"]["runtime"]["threads"] = 7
        folder.config.write_text(json.dumps(d))

    assert "another config.json" in corrupted(study, capsys, damage).reason


def test_another_runs_config_copied_in_is_corrupt_and_its_result_unverifiable(study, capsys):
    def damage(folder):
        folder.config.write_bytes(study.run(study.ids[1]).config.read_bytes())

    err = corrupted(study, capsys, damage)
    assert err.path.name == "config.json" and "is the config of run" in err.reason
    assert list(study.run(study.ids[0]).path.glob("config.json.corrupt-*"))


def test_an_edited_config_does_not_hash_to_its_run_id(study):
    folder = study.run(study.ids[0])
    d = json.loads(folder.config.read_text())
    d["resolved"]["seed"] = 99
    folder.config.write_text(json.dumps(d))
    with pytest.raises(CorruptFile, match="do not hash to its run id"):
        folder.read_config()


def test_a_torn_event_line_is_dropped_and_the_original_kept(study, capsys):
    from cp.execute import log_event, read_events

    folder = study.run(study.ids[0])
    log_event(folder, "start")
    log_event(folder, "finish", status="completed")
    text = folder.events.read_text()
    folder.events.write_text(text[: len(text) - 10])  # killed mid-line
    log_event(folder, "start")  # the next line is not glued to the torn one
    events = read_events(folder)
    assert [e["event"] for e in events] == ["start", "start"]
    assert str(folder.events) in capsys.readouterr().err
    assert list(folder.path.glob("events.jsonl.corrupt-*"))
    assert read_events(folder) == events  # clean now


def test_another_runs_event_log_is_set_aside(study, capsys):
    from cp.execute import log_event, read_events

    a, b = study.run(study.ids[0]), study.run(study.ids[1])
    log_event(b, "start")
    log_event(b, "finish", status="completed")
    a.events.write_bytes(b.events.read_bytes())
    assert read_events(a) == []
    assert "events are those of run" in capsys.readouterr().err
    assert len(read_events(b)) == 2


def test_tables_and_json_files_are_checked_on_read(tmp_path):
    table = tmp_path / "runs.parquet"
    write_parquet(table, [{"run_id": "a", "loss": 1.0}])
    assert read_table(table, ["run_id"]).height == 1
    with pytest.raises(CorruptFile, match="missing column"):
        read_table(table, ["run_id", "status"])
    table.write_bytes(table.read_bytes()[:40])
    with pytest.raises(CorruptFile, match=str(table)):
        read_table(table)
    empty = tmp_path / "empty.parquet"
    write_parquet(empty, [], schema={"run_id": str, "loss": float})
    assert read_table(empty, ["run_id", "loss"]).is_empty()
    js = tmp_path / "x.json"
    js.write_text('{"a": 1')
    with pytest.raises(CorruptFile, match="not valid JSON"):
        read_json(js)
    js.write_text('{"a": 1}')
    with pytest.raises(CorruptFile, match="missing 'b'"):
        read_json(js, "a", "b")
