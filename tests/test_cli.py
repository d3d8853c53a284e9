"""The cpt command line: the describe --json contract, exit codes, user errors without
tracebacks."""

import json
import subprocess
import sys

import pytest

from cp.cli import main
from cp.config import model_groups
from cp.spec import load_spec

KEYS = {"group", "layer", "init_std", "multiplier", "lr", "eps", "weight_decay", "beta1", "beta2"}


def cpt(*args):
    return subprocess.run([sys.executable, "-m", "cp.cli", *args], capture_output=True,
                          text=True)


def test_describe_json_lists_every_group_of_the_target():
    out = cpt("describe", "specs/demo.yaml", "--model", "target", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert set(info) == {"parameterisation", "alpha", "scale", "base_scale", "groups"}
    assert info["parameterisation"] == "completed_p" and isinstance(info["alpha"], float)
    for key in ("scale", "base_scale"):
        assert set(info[key]) == {"width", "depth", "batch", "tokens", "seq_len"}
    spec = load_spec("specs/demo.yaml")
    depth = spec.models["target"].depth
    seen = {(g["group"], g["layer"]) for g in info["groups"]}
    for group in model_groups(spec.arch):
        if group in ("embedding", "final_norm", "unembedding"):
            assert (group, None) in seen
        else:
            assert {(group, layer) for layer in range(depth)} <= seen
    for g in info["groups"]:
        assert set(g) == KEYS


def test_describe_table_shows_the_scale_and_settings():
    out = cpt("describe", "specs/demo.yaml", "--model", "target")
    assert out.returncode == 0
    assert "m_N=4" in out.stdout and "embedding" in out.stdout and "unembedding" in out.stdout


def test_user_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {proxy: {width: 64, depth: 2, batch: 4, tokens: 100000}}\n"
                   "hps: {lr: -1}\n")
    out = cpt("describe", str(bad), "--model", "proxy")
    assert out.returncode == 2
    assert "hps.lr" in out.stderr and "Traceback" not in out.stderr
    out = cpt("describe", "specs/demo.yaml", "--model", "targt")
    assert out.returncode == 2 and "did you mean 'target'" in out.stderr


def test_rules_prints_the_table():
    out = cpt("rules", "completed_p", "--alpha", "0.5")
    assert out.returncode == 0 and "m_L^-1/2" in out.stdout


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("""
name: tiny
arch: {head_dim: 16}
models:
  proxy: {width: 32, depth: 1, batch: 4, tokens: 4096, seq_len: 32}
train: {evals: 2, eval_sequences: 8}
tracking: {enabled: false}
""")
    return path


def test_train_writes_a_result_and_skips_a_finished_run(tiny_spec, tmp_path, capsys):
    args = ["train", str(tiny_spec), "--model", "proxy", "--results", str(tmp_path / "res")]
    assert main(args) == 0
    results = list((tmp_path / "res" / "tiny" / "runs").glob("*/result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["status"] == "completed"
    capsys.readouterr()
    assert main(args) == 0
    assert "already has a result" in capsys.readouterr().out


def test_coord_check_is_the_check_stage_and_its_exit_code_reflects_the_verdict(tiny_spec,
                                                                                tmp_path):
    from cp.study import Study

    common = ["--results", str(tmp_path), "--steps", "3"]
    assert main(["coord-check", str(tiny_spec), "--set", "hps.lr=0.01", *common]) == 0
    study = Study(tmp_path / "tiny")
    assert json.loads(study.check_verdict.read_text())["status"] == "pass"
    assert json.loads(study.stage_record("check").read_text())["status"] == "done"
    assert main(["coord-check", str(tiny_spec), "--set", "parameterisation.name=sp",
                 "--set", "hps.lr=0.01", *common]) == 1
    assert study.check_plot.exists()
    assert json.loads(study.stage_record("check").read_text())["status"] == "failed"
