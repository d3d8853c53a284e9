"""End to end: the smoke study through Snakemake with a Hugging Face Llama from arch.factory,
trained on tokens that `cpt data prepare` made from the bundled corpus."""

import json
import math
import shutil
import subprocess
import sys

import polars as pl
import pytest
import yaml

from cp.study import Study
from tests.study_helpers import REPO, SMOKE, copy_workflow, cpt

pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")


@pytest.mark.slow
def test_the_smoke_study_runs_end_to_end_on_a_llama_factory_and_prepared_tokens(tmp_path):
    work = copy_workflow(tmp_path)
    (work / "tests").mkdir()
    for name in ("__init__.py", "hf_models.py"):  # the factory, importable from the workdir
        shutil.copy(REPO / "tests" / name, work / "tests" / name)
    out = cpt("data", "prepare", "shakespeare", "--out", "tokens", "--vocab-size", "320",
              cwd=work)
    assert out.returncode == 0, out.stderr
    meta = json.loads((work / "tokens" / "meta.json").read_text())

    raw = yaml.safe_load(SMOKE.read_text())
    raw["name"] = "smoke_llama"
    raw["arch"].update({"factory": "tests.hf_models:llama", "roles": "llama"})
    raw["data"] = {"tokens": "tokens"}
    # At the smoke's toy widths (32-256, two heads at the base) on BPE tokens, mlp_down's
    # output shrinks with width by a slope of about -0.2 in this check -- for our own GPT
    # just as for the Llama -- so the guard gets a little more room here.
    raw["check"]["tolerance"] = 0.3
    (work / "specs" / "smoke_llama.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local",
                           "--config", "spec=specs/smoke_llama.yaml"], cwd=work,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    study = Study(work / "results" / "smoke_llama")
    assert json.loads(study.check_verdict.read_text())["status"] == "pass"
    sweep = pl.read_parquet(study.sweep_table)
    assert sweep["status"].to_list().count("completed") == len(sweep)
    target = pl.read_parquet(study.target_table)
    assert set(target["arm"]) == {"global", "per_module"}
    assert study.report_file.exists()

    # Every run trained the factory's model on the prepared tokens.
    folders = [study.run(d.name) for d in study.runs_dir.iterdir()]
    assert {f.path.name for f in folders} >= set(sweep["run_id"]) | set(target["run_id"])
    for folder in folders:
        saved = json.loads(folder.config.read_text())
        assert saved["resolved"]["arch"]["factory"] == "tests.hf_models:llama"
        assert saved["resolved"]["data"]["tokens"] == "tokens"
        assert {s["group"] for s in saved["resolved"]["settings"]} == {
            "embedding", "attn_norm", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_norm",
            "mlp_gate", "mlp_up", "mlp_down", "final_norm", "unembedding"}
    for folder in folders:
        result = folder.load_result()
        assert result.status == "completed"
        assert result.final_val_loss < math.log(meta["vocab_size"])  # it learnt something
