"""arch.factory: a user's model trained by every stage, checked before any training, with run
ids that follow the factory and its roles."""

import dataclasses
import math
import re

import pytest

from cp.pipeline import run_stage
from cp.roles import PRESETS
from cp.schema import SpecError
from cp.study import RunFolder, Study
from cp.train import train
from tests.study_helpers import cpt, quiet, smoke_spec

LLAMA = {"factory": "tests.hf_models:llama", "roles": "llama"}


def factory_spec(**arch):
    return smoke_spec(arch={"head_dim": 16, **arch})


def test_runs_of_our_gpt_hash_no_factory_roles_or_token_directory(tiny):
    resolved = tiny().resolved()
    assert not {"factory", "roles"} & set(resolved["arch"])
    assert "tokens" not in resolved["data"]


def test_the_run_id_follows_the_factory_and_the_roles():
    pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")
    ours = smoke_spec().run_config("proxy")
    llama = factory_spec(**LLAMA).run_config("proxy")
    explicit = factory_spec(factory=LLAMA["factory"], roles=PRESETS["llama"]).run_config("proxy")
    tied = factory_spec(factory="tests.hf_models:llama_tied", roles="llama").run_config("proxy")
    assert len({ours.run_id(), llama.run_id(), explicit.run_id(), tied.run_id()}) == 4


def test_a_llama_factory_run_trains_and_resumes_identically(tmp_path):
    pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")
    cfg = factory_spec(**LLAMA).run_config("proxy")
    cfg = dataclasses.replace(cfg, scale=dataclasses.replace(cfg.scale, tokens=40 * 8 * 32))
    cfg.runtime.checkpoint_seconds = 0
    whole = train(cfg)
    assert whole.status == "completed"
    losses = [e["val_loss"] for e in whole.eval_curve]
    assert losses[0] < math.log(256) and losses[-1] < losses[0] - 0.2
    stopped = train(cfg, tmp_path, stop_after=17)
    assert stopped.status == "stopped" and RunFolder(tmp_path).checkpoint.exists()
    resumed = train(cfg, tmp_path)  # the hooks come back with the model, the weights from disk
    assert resumed.eval_curve == whole.eval_curve and resumed.train_curve == whole.train_curve


@pytest.mark.parametrize("factory,roles,key,message", [
    ("tests.factories:unmatched", "llama", "arch.roles",
     "matched by no role of role map 'llama': embed.weight, mystery.weight, mystery.bias, "
     "head.weight"),
    ("tests.factories:fails", "llama", "arch.factory",
     "the factory failed: ValueError: no model of width 32 here"),
    ("tests.factories:not_a_module", "llama", "arch.factory", "returned int, not a"),
    ("tests.factories:unmatched", {r"embed\.weight": "embedding",
                                   r"mystery\.(?:weight|bias)": "final_norm",
                                   r"head\.weight": "unembedding"}, "arch.factory",
     "block layers|depth 0"),
])
def test_the_spec_check_builds_every_model_on_meta_and_names_what_does_not_fit(
        factory, roles, key, message):
    spec = factory_spec(factory=factory, roles=roles)  # loads: the cheap checks pass
    with pytest.raises(SpecError) as e:
        spec.check_models()
    problems = e.value.problems
    assert {p.key for p in problems} == {key}
    assert all(p.message.startswith("model ") for p in problems)
    assert re.search(message, problems[0].message), problems[0].message


@pytest.mark.parametrize("arch,key,message", [
    ({"factory": "tests.hf_models.llama"}, "arch.factory", "not of the form"),
    ({"factory": "tests.no_such_module:f", "roles": "llama"}, "arch.factory",
     "no module 'tests.no_such_module'"),
    ({"factory": "tests.factories:fails"}, "arch.roles", "needs a role map"),
    ({"roles": "llama"}, "arch.roles", "roles without a factory"),
    ({"factory": "tests.factories:fails", "roles": "lama"}, "arch.roles",
     "unknown role preset"),
])
def test_loading_a_spec_checks_the_factorys_form_and_the_roles_without_importing(
        arch, key, message):
    with pytest.raises(SpecError) as e:
        factory_spec(**arch)
    assert any(p.key == key and message in p.message for p in e.value.problems), \
        e.value.format()


def test_a_stage_that_builds_models_refuses_a_factory_that_does_not_fit(tmp_path):
    spec = factory_spec(factory="tests.factories:unmatched", roles="llama")
    study = Study(tmp_path / "s")
    with pytest.raises(SpecError, match=r"arch\.roles"):
        run_stage("check", spec, study, echo=quiet)
    assert not study.root.exists() or not any(study.root.iterdir())  # before anything


def test_cpt_spec_check_reports_the_factory(tmp_path):
    pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")
    import yaml

    from tests.study_helpers import SMOKE

    raw = yaml.safe_load(SMOKE.read_text())
    raw["arch"].update(LLAMA)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(raw))
    out = cpt("spec", "check", str(good))
    assert out.returncode == 0, out.stderr
    assert "model from tests.hf_models:llama (roles fit)" in out.stdout
    raw["arch"]["factory"] = "tests.factories:unmatched"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = cpt("spec", "check", str(bad))
    assert out.returncode == 2 and "arch.roles: model proxy" in out.stderr
    assert "Traceback" not in out.stderr
