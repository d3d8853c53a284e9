"""Specs: the shipped ones load; each malformed case fails early with a message a person can
act on (file, key path, value, what is allowed)."""

import copy
from pathlib import Path

import pytest
import yaml

from cp.spec import SpecError, build_spec, load_spec

SPECS = Path(__file__).parent.parent / "specs"


@pytest.fixture
def demo():
    return yaml.safe_load((SPECS / "demo.yaml").read_text())


def problems(raw, file="specs/x.yaml"):
    with pytest.raises(SpecError) as err:
        build_spec(raw, file)
    text = err.value.format()
    assert text.startswith(file)
    return text


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path):
    spec = load_spec(path)
    assert spec.base in spec.models
    for name in spec.models:
        assert spec.run_config(name).scale.steps >= 1


def test_demo_names_a_proxy_and_a_larger_target():
    spec = load_spec(SPECS / "demo.yaml")
    proxy, target = spec.models["proxy"], spec.models["target"]
    assert target.width > proxy.width and target.depth >= proxy.depth


def set_key(raw, dotted, value):
    raw = copy.deepcopy(raw)
    *path, last = dotted.split(".")
    node = raw
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("key,value,expected", [
    ("parameterisation.nmae", "x", ["parameterisation.nmae", "unknown key",
                                    "did you mean 'name'", "allowed: name, alpha, base, rules"]),
    ("modles", {}, ["modles", "did you mean 'models'"]),
    ("parameterisation.name", "completedp", ["parameterisation.name", "'completedp'",
                                             "did you mean 'completed_p'", "allowed:"]),
    ("arch.mlp", "relu", ["arch.mlp", "'relu' is not allowed", "'swiglu', 'gelu'"]),
    ("models.target.width", 100, ["models.target.width", "100 is not a multiple of arch.head_dim",
                                  "a positive multiple of 16"]),
    ("models.target.depth", 0, ["models.target.depth", "0 is out of range", "positive integer"]),
    ("models.target.batch", "big", ["models.target.batch", "'big' is not an integer"]),
    ("models.proxy.tokens", 100, ["models.proxy.tokens", "make no optimiser step"]),
    ("hps.beta2", 1.0, ["hps.beta2", "1.0 is out of range", "0 < beta < 1"]),
    ("hps.lr", -1, ["hps.lr", "out of range", "> 0"]),
    ("hps.groups", {"atn_q": {"lr": 0.1}}, ["hps.groups.atn_q", "did you mean 'attn_q'"]),
    ("hps.groups", {"attn_q": {"learning_rate": 0.1}}, ["hps.groups.attn_q.learning_rate",
                                                       "unknown HP kind"]),
    ("base", "small", ["base", "'small' is not a model", "proxy, target"]),
    ("parameterisation.alpha", 2.0, ["parameterisation.alpha", "0.5 <= alpha <= 1"]),
    ("parameterisation.rules", {"hidden": {"lr": {"depht": 1}}},
     ["parameterisation.rules.hidden.lr.depht", "did you mean 'depth'"]),
    ("parameterisation.rules", {"hidden": {"lr": {"depth": "alpha +"}}},
     ["parameterisation.rules.hidden.lr.depth", "not an arithmetic expression"]),
    ("parameterisation.rules", {"hidden": {"lr": {"depth": "beta"}}},
     ["only numbers, 'alpha'"]),
    ("factors.per_layer", {"lr": []}, ["factors.per_layer.lr", "empty list"]),
    ("factors.per_type", {"lr": {"attn_q": -2}}, ["factors.per_type.lr.attn_q",
                                                      "out of range"]),
    ("schedule.warmup", 1.5, ["schedule.warmup", "0 <= warmup < 1"]),
    ("data.corpus", "nothing.bin", ["data.corpus", "neither a bundled corpus"]),
    ("train.precision", "fp16", ["train.precision", "'fp32', 'bf16'"]),
    # stage sections
    ("sweep", {"grid": {"lr": [0.01]}}, ["sweep", "unknown key", "did you mean 'sweeps'"]),
    ("sweeps.grid", {"lr": []}, ["sweeps.grid.lr", "empty grid"]),
    ("sweeps.grid", {"learning_rate": [0.1]}, ["sweeps.grid.learning_rate", "unknown HP kind"]),
    ("sweeps.grid", {"qk_norm.eps": [1e-6]}, ["sweeps.grid.qk_norm.eps",
                                              "unknown group 'qk_norm'",
                                              "did you mean 'qk_norms'"]),
    ("sweeps.grid", {"qk_norms.epsilon": [1e-6]}, ["sweeps.grid.qk_norms.epsilon",
                                                   "unknown HP kind"]),
    ("sweeps.grid", {"qk_norms.eps": [0.0]}, ["sweeps.grid.qk_norms.eps[0]", "out of range"]),
    ("search.trials", -5, ["search.trials", "-5 is out of range", "an integer >= 1"]),
    ("search.parallel", 0, ["search.parallel", "out of range"]),
    ("search.algorithm", "bayes", ["search.algorithm", "'bayes' is not allowed"]),
    ("models.target.width", 16, ["models.target.width", "smaller than the base's 32",
                                 "must not shrink"]),
    ("models.target.tokens", 4096, ["models.target.tokens", "smaller than the base"]),
    ("sweeps.parameterisations", ["spp"], ["sweeps.parameterisations[0]",
                                           "unknown parameterisation 'spp'",
                                           "did you mean 'sp'"]),
    ("arms", [{"name": "x", "parameterisation": "mupp"}], ["arms[0].parameterisation",
                                                          "did you mean 'mup'"]),
    ("sweeps.axes", {"widht": [64]}, ["sweeps.axes.widht", "did you mean 'width'"]),
    ("targets.models", ["tagret"], ["targets.models[0]", "did you mean 'target'"]),
    ("arms", [{"name": "a"}, {"name": "a"}], ["arms[1].name", "used twice"]),
    ("sweeps.extra", [{"name": "x", "parameterisations": ["cdp"], "axes": {"depth": [2]},
                       "grid": {"lr": [0.01]}}], ["sweeps.extra[0].parameterisations[0]",
                                                  "unknown parameterisation 'cdp'"]),
    ("sweeps.extra", [{"name": "x", "parameterisations": ["sp"], "axes": {"depht": [2]},
                       "grid": {"lr": []}}], ["sweeps.extra[0].axes.depht",
                                              "sweeps.extra[0].grid.lr", "empty grid"]),
])
def test_each_malformed_spec_names_key_value_and_what_is_allowed(demo, key, value, expected):
    text = problems(set_key(demo, key, value))
    for fragment in expected:
        assert fragment in text, (fragment, text)


def test_an_arm_using_an_unswept_table_for_its_global_optimum_is_refused(demo):
    raw = set_key(demo, "sweeps", {"grid": {"lr": [0.01, 0.02]}})
    raw["arms"] = [{"name": "sp", "parameterisation": "sp"}]
    assert "not swept" in problems(raw)
    raw["sweeps"]["parameterisations"] = ["sp"]
    build_spec(raw)  # fine once sp is swept


def test_spec_tables_can_be_swept_and_used_by_arms(demo):
    raw = set_key(demo, "tables", {"cdp_wd_depth": {"rules": {"hidden": {
        "weight_decay": {"depth": "1 - alpha"}}}}})
    raw["sweeps"] = {"grid": {"lr": [0.01]}, "parameterisations": ["cdp_wd_depth"]}
    raw["arms"] = [{"name": "ablation", "parameterisation": "cdp_wd_depth"}]
    spec = build_spec(raw)
    from cp.stages.sweep import sweep_runs
    from cp.stages.transfer import arm_run

    assert {r.tags["parameterisation"] for r in sweep_runs(spec)} == {"completed_p",
                                                                      "cdp_wd_depth"}
    run = arm_run(spec, spec.arms[0], "target", 0, {"cdp_wd_depth": {"values": {}}}, None)
    assert run.config.table().name == "cdp_wd_depth"
    assert "tables.sp" in problems(set_key(demo, "tables", {"sp": {"base": "mup"}}))


def test_missing_required_model_field(demo):
    raw = copy.deepcopy(demo)
    del raw["models"]["target"]["width"]
    assert "models.target.width: missing (required)" in problems(raw)


def test_every_problem_is_reported_at_once(demo):
    raw = set_key(set_key(demo, "arch.mlp", "relu"), "train.precision", "fp16")
    text = problems(raw)
    assert "2 problem(s)" in text and "arch.mlp" in text and "train.precision" in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nmodels:\n  proxy: {width: 64,\n")
    with pytest.raises(SpecError, match=r"broken.yaml.*\n.*not valid YAML: line \d+"):
        load_spec(bad)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spec(tmp_path / "nope.yaml")


def test_numbers_in_scientific_notation_are_accepted(demo):
    raw = set_key(set_key(demo, "models.target.tokens", "4e6"), "hps.eps", "1e-8")
    spec = build_spec(raw)
    assert spec.models["target"].tokens == 4_000_000 and spec.hps.eps == 1e-8


def test_command_line_overrides_take_effect():
    spec = load_spec(SPECS / "demo.yaml", overrides=["hps.lr=0.02", "models.target.depth=8"])
    assert spec.hps.lr == 0.02 and spec.models["target"].depth == 8
    with pytest.raises(SpecError, match=r"hps\.lr"):
        load_spec(SPECS / "demo.yaml", overrides=["hps.lr=fast"])


def test_spec_overrides_of_the_rule_table_reach_the_run(demo):
    raw = set_key(demo, "parameterisation.rules", {"embedding": {"lr": {"width": -1}}})
    spec = build_spec(raw)
    target = {(s.group, s.layer): s for s in spec.run_config("target").settings()}
    plain = {(s.group, s.layer): s for s in build_spec(demo).run_config("target").settings()}
    m_n = spec.models["target"].width / spec.models["proxy"].width
    assert target["embedding", None].lr == pytest.approx(plain["embedding", None].lr / m_n)


def test_a_renamed_key_is_read_under_its_new_name_with_a_note(demo, capsys, monkeypatch):
    from cp import schema

    monkeypatch.setattr(schema, "_NOTED", set())  # notes are said once per process
    raw = set_key(demo, "search.parallel", None)
    del raw["search"]["parallel"]
    raw["search"]["batch"] = 3
    raw["arms"] = [{"name": "global"}, {"name": "pm", "multipliers": "search"}]
    raw["parameterisation"] = {"name": "completed_p", "rules": {"all": {"lr": {"horizon": -0.3}}}}
    spec = build_spec(raw)
    assert spec.search.parallel == 3 and spec.arms[1].factors == "search"
    assert spec.parameterisation.rules["all"]["lr"] == {"tokens": -0.3}
    err = capsys.readouterr().err
    for old, new in (("search.batch", "search.parallel"), ("arms[1].multipliers",
                                                           "arms[1].factors"),
                     ("parameterisation.rules.all.lr.horizon",
                      "parameterisation.rules.all.lr.tokens")):
        assert f"'{old}' is deprecated and read as '{new}'" in err, err
    raw["search"]["parallel"] = 2
    assert "both 'batch' and its new name 'parallel'" in problems(raw)


def test_a_study_whose_judging_seeds_overlap_its_choosing_seeds_is_refused(demo):
    raw = set_key(demo, "targets.seeds", [0, 1])   # sweeps.seeds is [0]: seed 0 chose
    text = problems(raw)
    assert "targets.seeds[0]: seed 0 judges" in text and "sweeps.seeds[0]" in text
    assert "in-sample" in text
    raw = set_key(demo, "search.reeval_seeds", [1000])  # TRRS re-evaluates on seed + 1000
    assert "search.trrs.reeval_seeds" in problems(raw)
    build_spec(set_key(demo, "targets.seeds", [7, 8]))  # disjoint: fine


# ---------------------------------------------------------------------------------------------
# Hardening (issue 13): specs that passed the check and failed late, or lied, or hurt the checker.


@pytest.mark.parametrize("key,value,expected", [
    # the study name, models, arms and sweep blocks name folders and files: plain names only
    ("name", "../../../tmp/x", ["name", "'../../../tmp/x' is not a plain name"]),
    ("name", "/tmp/x", ["name", "'/tmp/x' is not a plain name"]),
    ("models", {"proxy": {"width": 32, "depth": 2, "batch": 8, "tokens": 65536, "seq_len": 64},
                "../x": {"width": 64, "depth": 2, "batch": 8, "tokens": 65536, "seq_len": 64}},
     ["models.../x", "is not a plain name"]),
    ("arms", [{"name": "a/../../b"}], ["arms[0].name", "is not a plain name"]),
    ("sweeps.extra", [{"name": "../up", "parameterisations": ["sp"], "axes": {"depth": [2]},
                       "grid": {"lr": [0.01]}}], ["sweeps.extra[0].name", "not a plain name"]),
    # late failures and lies
    ("arms", [], ["arms", "empty", "one or more arms"]),
    ("targets.seeds", [0, 0], ["targets.seeds[1]", "seed 0 is listed twice"]),
    ("targets.models", ["target", "target"], ["targets.models[1]", "'target' is listed twice"]),
    ("sweeps.seeds", [1, 1], ["sweeps.seeds[1]", "listed twice"]),
    ("sweeps.grid", {"lr": [0.01, 0.01]}, ["sweeps.grid.lr[1]", "listed twice"]),
    ("search.reeval_seeds", [], ["search.reeval_seeds", "empty"]),
    ("parameterisation.rules", {"hidden": {"lr": {"width": int("1" + "0" * 400)}}},
     ["parameterisation.rules.hidden.lr.width", "not a finite number"]),
    ("models.target.width", int("1" + "0" * 400), ["models.target.width", "too large"]),
    ("models.target.width", 6_400_000, ["models.target", "parameters", "at most"]),
    ("models.target.seq_len", 400_000, ["models.target.seq_len", "400000",
                                        "validation split", "tokens"]),
    ("check.seq_len", 400_000, ["check.seq_len", "validation split"]),
])
def test_specs_that_used_to_fail_late_or_lie_are_refused_by_the_check(demo, key, value, expected):
    text = problems(set_key(demo, key, value))
    assert "Traceback" not in text
    for fragment in expected:
        assert fragment in text, (fragment, text)


def test_an_exponent_that_divides_by_zero_at_the_tables_own_alpha_is_refused(demo):
    """The check used to evaluate expressions at alpha = 1 only: at the table's alpha 0.5 this
    one divides by zero, and only `cpt describe` (or the target stage) found out."""
    raw = set_key(demo, "parameterisation", {"name": "completed_p", "alpha": 0.5, "rules": {
        "hidden": {"lr": {"depth": "1/(alpha-0.5)"}}}})
    text = problems(raw)
    assert "parameterisation.rules.hidden.lr.depth" in text and "division by zero" in text
    raw = set_key(demo, "tables", {"mine": {"alpha": 0.5, "rules": {
        "hidden": {"lr": {"depth": "1/(alpha-0.5)"}}}}})
    assert "tables.mine.rules.hidden.lr.depth" in problems(raw)


def test_a_model_above_the_devices_size_warns_in_spec_check_and_plan(demo, tmp_path):
    from cp.spec import size_warnings

    spec = build_spec(set_key(set_key(demo, "models.target.width", 4096), "runtime.device",
                              "cpu"))
    warnings = size_warnings(spec)
    assert len(warnings) == 1 and "models.target" in warnings[0]
    assert "runtime.warn_params" in warnings[0] and "cpu" in warnings[0]
    # on a GPU the same model is ordinary; the limit is a spec key
    assert size_warnings(build_spec(set_key(demo, "models.target.width", 4096))) == []
    spec = build_spec(set_key(demo, "runtime.warn_params", 1000))
    assert {w.split(":")[0] for w in size_warnings(spec)} == {"models.proxy", "models.target"}


def test_plan_shows_each_models_parameter_count(demo, tmp_path):
    from cp.cli import main

    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(set_key(set_key(demo, "models.target.width", 4096),
                                           "runtime.device", "cpu")))
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["plan", str(path)]) == 0
    from cp.config import count_params

    spec = load_spec(path)
    n = count_params(spec.run_config("target").model_config(256))
    assert f"{n / 1e6:,.1f}M" in out.getvalue()
    assert "models.target" in err.getvalue() and "warn_params" in err.getvalue()


def test_duplicate_yaml_keys_are_refused_with_the_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nhps:\n  lr: 0.01\n  eps: 1.0e-8\n  lr: 0.02\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = err.value.format()
    assert "dup.yaml" in text and "line 5" in text and "'lr'" in text and "twice" in text


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="alias"):
        load_spec(path)
    assert time.perf_counter() - t0 < 5


def test_a_huge_spec_file_is_refused_before_it_is_parsed(tmp_path):
    import time

    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("name: huge\ndescription: |\n")
        line = "  " + "x" * 98 + "\n"
        for _ in range(500_000):  # 50 MB
            f.write(line)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="bytes"):
        load_spec(path)
    assert time.perf_counter() - t0 < 2


def test_the_saved_spec_keeps_environment_interpolations_as_written(demo, tmp_path,
                                                                     monkeypatch):
    from cp.spec import read_study_spec
    from cp.study import Study

    monkeypatch.setenv("CP_TEST_SECRET_URI", "http://user:s3cret@tracking:5000")
    raw = set_key(demo, "tracking", {"uri": "${oc.env:CP_TEST_SECRET_URI}"})
    raw["description"] = "lr from ${hps.lr}"
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path, overrides=["hps.lr=0.02"])
    assert spec.tracking.uri == "http://user:s3cret@tracking:5000"  # used resolved
    study = Study(tmp_path / "study")
    spec.save(study)
    saved = study.spec_file.read_text()
    assert "s3cret" not in saved and "${oc.env:CP_TEST_SECRET_URI}" in saved
    again = read_study_spec(study)  # cpt report / cpt sync read it back
    assert again.tracking.uri == "http://user:s3cret@tracking:5000"
    assert again.hps.lr == 0.02 and again.description == "lr from 0.02"
    monkeypatch.delenv("CP_TEST_SECRET_URI")
    assert read_study_spec(study).tracking.uri is None  # unset here: its default, with a note
