"""train(): the loss goes down, a killed run resumes identically, divergence is a result."""

import dataclasses
import json
import math

import pytest

from cp.config import RunConfig
from cp.scaling import HPs
from cp.study import RunFolder
from cp.train import eval_steps, train


# GPT-2's learned positions must first learn what RoPE gives from the first step: in 40 steps
# its loss falls less (0.14 here, against 0.36).
@pytest.mark.parametrize("arch,drop", [({}, 0.3), ({"mlp": "gelu", "qk_norm": False,
                                                    "norm": "layernorm", "fused_qkv": True,
                                                    "positions": "learned"},
                                                   0.1)], ids=["defaults", "gpt2"])
def test_a_short_run_lowers_the_validation_loss(tiny, arch, drop):
    run = tiny()
    result = train(dataclasses.replace(run, arch=dataclasses.replace(run.arch, **arch)))
    assert result.status == "completed" and not result.diverged
    losses = [e["val_loss"] for e in result.eval_curve]
    assert losses[0] < math.log(256)            # learnt something by the first eval
    assert losses[-1] < losses[0] - drop         # and kept learning
    assert result.final_val_loss == losses[-1]
    assert result.steps == result.total_steps == 40
    assert result.tokens == 40 * 8 * 32 and result.tokens_per_s > 0


def test_resume_after_a_checkpoint_gives_the_same_losses_as_an_uninterrupted_run(tiny, tmp_path):
    cfg = tiny()
    uninterrupted = train(cfg)
    stopped = train(cfg, tmp_path, stop_after=17)   # a kill between log and eval points
    assert stopped.status == "stopped" and stopped.steps == 17
    assert RunFolder(tmp_path).checkpoint.exists()
    assert RunFolder(tmp_path).load_result() is None            # a stopped run has no result yet
    resumed = train(cfg, tmp_path)
    assert resumed.status == "completed"
    assert resumed.eval_curve == uninterrupted.eval_curve      # bit-identical on CPU
    assert resumed.train_curve == uninterrupted.train_curve
    assert not RunFolder(tmp_path).checkpoint.exists()           # cleaned up once done
    assert RunFolder(tmp_path).load_result().final_val_loss == uninterrupted.final_val_loss


def test_a_nan_run_returns_diverged(tiny):
    result = train(tiny(hps=HPs(lr=1e9)))
    assert result.diverged and result.status == "diverged"
    assert "non-finite" in result.reason
    assert math.isnan(result.final_val_loss)
    assert result.steps < result.total_steps       # stopped early


def test_a_loss_blow_up_returns_diverged(tiny):
    result = train(tiny(hps=HPs(lr=3.0)))
    assert result.diverged and result.steps < result.total_steps
    assert "blew up" in result.reason or "non-finite" in result.reason


def test_run_folder_holds_config_and_result(tiny, tmp_path):
    cfg = tiny()
    train(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["run_id"] == cfg.run_id()
    assert RunConfig.from_dict(saved["config"]).run_id() == cfg.run_id()
    assert len(saved["resolved"]["settings"]) == len(cfg.settings())
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "completed"


def test_run_id_hashes_what_changes_the_numbers_only(tiny):
    cfg = tiny()
    assert tiny().run_id() == cfg.run_id()
    assert dataclasses.replace(cfg, seed=1).run_id() != cfg.run_id()
    assert dataclasses.replace(cfg, hps=HPs(lr=2e-2)).run_id() != cfg.run_id()
    other_runtime = dataclasses.replace(cfg, runtime=dataclasses.replace(
        cfg.runtime, checkpoint_every=5, threads=1))
    assert other_runtime.run_id() == cfg.run_id()
    gpt2 = dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, norm="layernorm"))
    assert gpt2.run_id() != cfg.run_id()


def test_keys_added_to_arch_leave_the_ids_of_earlier_runs_alone(tiny):
    # The id this run had before arch.norm and arch.positions existed: a study resumed after
    # an upgrade finds its runs done instead of training them again.
    assert tiny().run_id() == "92df41855d89ee91"


@pytest.mark.parametrize("total,evals", [(40, 4), (7, 20), (1000, 3)])
def test_evaluations_are_spread_and_end_at_the_last_step(total, evals):
    steps = eval_steps(total, evals)
    assert steps[-1] == total and len(steps) == min(total, evals)


def test_bf16_autocast_trains_and_keeps_fp32_master_weights(tiny, tmp_path):
    import torch

    from cp.config import TrainConfig

    cfg = tiny(train=TrainConfig(evals=2, eval_sequences=8, precision="bf16"))
    cfg.runtime.keep_checkpoint = True
    result = train(cfg, tmp_path)
    assert result.status == "completed"
    assert result.eval_curve[-1]["val_loss"] < result.eval_curve[0]["val_loss"] + 0.05
    assert result.final_val_loss < math.log(256) - 0.5
    state = torch.load(RunFolder(tmp_path).checkpoint, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    assert bf16_differs_from_fp32(cfg, result)


def bf16_differs_from_fp32(cfg, bf16_result):
    """The autocast path really ran: bf16 numerics are not bit-identical to fp32."""
    import dataclasses

    fp32 = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                    precision="fp32")))
    return fp32.final_val_loss != bf16_result.final_val_loss


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_a_crafted_checkpoint_runs_no_code_and_is_set_aside(tiny, tmp_path, capsys, how):
    import pickle

    import torch

    cfg = tiny()
    marker = tmp_path / "pwned"
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    payload = {"model": {}, "opt": {}, "sched": {}, "state": _RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, folder.checkpoint)
    else:
        folder.checkpoint.write_bytes(pickle.dumps(payload))
    result = train(cfg, folder)
    assert not marker.exists(), "unpickling the checkpoint ran a command"
    assert result.status == "completed"
    assert result.eval_curve == train(cfg).eval_curve  # trained from step 0, as if fresh
    err = capsys.readouterr().err
    assert str(folder.checkpoint) in err and "set aside" in err
    assert list(folder.path.glob("checkpoint.pt.corrupt-*"))  # kept, renamed


def test_a_checkpoint_of_another_run_or_a_truncated_one_is_not_resumed_from(tiny, tmp_path,
                                                                            capsys):
    a, b = tiny(), tiny(seed=1)
    train(a, tmp_path / "a", stop_after=17)
    train(b, tmp_path / "b", stop_after=9)
    (tmp_path / "b" / "checkpoint.pt").replace(tmp_path / "a" / "checkpoint.pt")  # swapped
    assert train(a, tmp_path / "a").eval_curve == train(a).eval_curve
    assert "is the checkpoint of run" in capsys.readouterr().err
    train(a, tmp_path / "c", stop_after=17)
    ck = tmp_path / "c" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])  # truncated
    assert train(a, tmp_path / "c").eval_curve == train(a).eval_curve
    assert "cannot be resumed from" in capsys.readouterr().err


def test_checkpoints_load_with_weights_only(tiny, tmp_path):
    import torch

    cfg = tiny()
    train(cfg, tmp_path, stop_after=17)
    ck = torch.load(RunFolder(tmp_path).checkpoint, weights_only=True)
    assert ck["state"]["step"] == 17 and ck["state"]["run_id"] == cfg.run_id()
