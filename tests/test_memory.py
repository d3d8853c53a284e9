"""The memory plan (cp/memory.py): the activation formula counts exactly the tensors autograd
saves on CPU, tensor for tensor; sharding divides what each GPU holds; a spec whose model cannot
fit its GPUs, or whose batch cannot be split over its ranks, is refused with the numbers."""

import dataclasses
from pathlib import Path

import pytest
import torch

from cp.config import ArchConfig, ModelConfig, ParallelConfig, count_params
from cp.memory import (
    BF16,
    FP32,
    USABLE_FRACTION,
    GiB,
    activation_bytes,
    block_activation_bytes,
    estimate,
    head_activation_bytes,
    memory_plan,
)
from cp.model import GPT
from cp.scaling import Scale
from cp.spec import SpecError, load_spec
from tests.conftest import tiny_run

REPO = Path(__file__).parent.parent
SMOKE = REPO / "specs" / "smoke.yaml"
PAPER_7B = REPO / "specs" / "paper-7b.yaml"


def model_config(depth: int, **arch) -> ModelConfig:
    return ModelConfig(width=64, depth=depth, seq_len=32, vocab_size=256,
                       arch=ArchConfig(head_dim=16, **arch))


def saved_bytes(cfg: ModelConfig, batch: int, dtype=torch.float32, autocast=False,
                checkpointing=False) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward of a model
    (parameters and buffers, which the plan counts elsewhere, left out)."""
    run = tiny_run(scale=Scale(width=cfg.width, depth=cfg.depth, batch=8, tokens=8 * 32 * 4,
                               seq_len=cfg.seq_len), arch=cfg.arch)
    torch.manual_seed(0)
    model = GPT(cfg, run.settings()).to(dtype)
    if checkpointing:
        from cp.parallel import checkpoint_blocks

        checkpoint_blocks(model)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x, x)
        else:
            model(x, x)
    return sum(saved.values())


@pytest.mark.parametrize("arch", [{}, {"qk_norm": False}, {"mlp": "gelu"}, {"z_loss": 1e-4},
                                  {"norm": "layernorm"}, {"positions": "learned"},
                                  {"fused_qkv": True},
                                  {"fused_qkv": True, "positions": "learned"}])
@pytest.mark.parametrize("dtype,elem", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_the_activation_formula_counts_what_autograd_saves(arch, dtype, elem):
    batch = 3
    tokens = batch * 32
    one, two = (saved_bytes(model_config(d, **arch), batch, dtype) for d in (1, 2))
    cfg = model_config(1, **arch)
    assert two - one == block_activation_bytes(cfg, tokens, elem)
    assert 2 * one - two == head_activation_bytes(cfg, tokens, elem)
    deep = model_config(3, **arch)
    assert saved_bytes(deep, batch, dtype) == activation_bytes(deep, tokens, elem, False)


def test_with_activation_checkpointing_a_block_keeps_only_its_input():
    cfg = model_config(3)
    tokens = 2 * 32
    measured = saved_bytes(cfg, 2, checkpointing=True)
    inputs = cfg.depth * tokens * cfg.width * FP32
    assert measured == inputs + head_activation_bytes(cfg, tokens, FP32)
    # the plan adds the one block recomputed at a time in backward
    assert activation_bytes(cfg, tokens, FP32, True) == \
        measured + block_activation_bytes(cfg, tokens, FP32)
    assert activation_bytes(cfg, tokens, FP32, True) < activation_bytes(cfg, tokens, FP32, False)


def test_under_bf16_autocast_the_fp32_count_bounds_the_saved_tensors():
    cfg = model_config(2)
    run = tiny_run(scale=Scale(width=cfg.width, depth=cfg.depth, batch=8, tokens=8 * 32 * 4,
                               seq_len=cfg.seq_len), arch=cfg.arch)
    # autocast saves a bf16 copy of each matmul's weight too: the plan counts those under
    # buffers ("autocast copies"), not activations
    weights = sum(p.numel() for name, p in GPT(cfg, run.settings()).named_parameters()
                  if p.ndim == 2 and name != "embedding")
    measured = saved_bytes(cfg, 2, autocast=True) - BF16 * weights
    bound = activation_bytes(cfg, 2 * 32, FP32, False)
    assert 0.7 * bound < measured <= bound


def test_sharding_divides_what_each_gpu_holds_and_micro_batches_the_activations():
    cfg = ModelConfig(width=1024, depth=8, seq_len=512, vocab_size=32000,
                      arch=ArchConfig(head_dim=64))
    p = count_params(cfg)
    one = estimate(cfg, ParallelConfig(), 1, 8, "fp32")
    assert (one.params, one.grads, one.optimizer) == (4 * p, 4 * p, 8 * p)
    ddp = estimate(cfg, ParallelConfig(), 8, 64, "fp32")  # the same 8 sequences per rank
    assert ddp.params == one.params and ddp.activations == one.activations
    assert ddp.buffers - one.buffers == 4 * p  # DDP's gradient buckets
    fsdp = estimate(cfg, ParallelConfig(strategy="fsdp"), 8, 64, "bf16")
    assert (fsdp.params, fsdp.grads, fsdp.optimizer) == (4 * p // 8, 4 * p // 8, 8 * p // 8)
    assert fsdp.micro_batch == 8  # the rank's share, 64 / 8
    kept = estimate(cfg, ParallelConfig(strategy="fsdp", reshard_after_forward=False), 8, 64,
                    "bf16")
    assert kept.buffers > fsdp.buffers  # every block stays gathered from forward to backward
    micro = estimate(cfg, ParallelConfig(strategy="fsdp", micro_batch=2), 8, 64, "bf16")
    assert micro.micro_batch == 2 and micro.activations < fsdp.activations / 3
    ckpt = estimate(cfg, ParallelConfig(strategy="fsdp", activation_checkpointing=True), 8, 64,
                    "bf16")
    assert ckpt.activations == ckpt.activations_with_checkpointing < fsdp.activations
    assert ckpt.total < fsdp.total < one.total


# ---------------------------------------------------------------------------------------------
# The spec's check.


def on_gpus(*overrides: str) -> list[str]:
    return ["launcher.kind=slurm", "launcher.slurm.gpus_per_node=2", *overrides]


def test_a_model_that_cannot_fit_its_gpus_is_refused_with_the_numbers():
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, on_gpus("launcher.slurm.gpu_mem_gb=0.001"))
    (problem, *others) = err.value.problems
    assert problem.key == "models.proxy"
    for words in ("GB per GPU in the sweep/search stage's jobs (2 rank(s), ddp)",
                  "parameters", "gradients", "AdamW state", "activations", "at a micro-batch "
                  "of 4", "the GPUs have 0.001 GB (launcher.slurm.gpu_mem_gb)", "is usable"):
        assert words in problem.message, (words, problem.message)
    assert "parallel.strategy: fsdp" in problem.allowed
    assert {p.key for p in others} <= {"models.proxy", "models.target"}


def test_the_plan_fits_where_the_gpus_are_large_enough_and_names_every_model():
    spec = load_spec(SMOKE, on_gpus("launcher.slurm.gpu_mem_gb=1"))
    rows = memory_plan(spec)
    assert [r.model for r in rows] == ["proxy", "proxy @ width=64", "target"]
    assert all(r.fits for r in rows)
    assert all(r.estimate.total <= USABLE_FRACTION * GiB for r in rows)


def test_a_batch_that_cannot_be_split_over_the_ranks_is_refused():
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, on_gpus("launcher.stages.target.gpus_per_node=16"))
    assert [p.key for p in err.value.problems] == ["models.target.batch"]
    assert "a batch of 8 sequences cannot be split over the 16 ranks" in \
        err.value.problems[0].message


def test_a_micro_batch_must_divide_every_ranks_share():
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, on_gpus("launcher.stages.target.gpus_per_node=3",
                                 "models.target.parallel.micro_batch=2"))
    (problem,) = err.value.problems
    assert problem.key == "models.target.parallel.micro_batch"
    assert "a batch of 8 over 3 rank(s): 2 or 3 each" in problem.message
    load_spec(SMOKE, on_gpus("models.target.parallel.micro_batch=2"))  # 4 each: fine


def test_parallel_settings_change_no_run_id():
    plain = load_spec(SMOKE)
    sharded = load_spec(SMOKE, ["models.target.parallel.strategy=fsdp",
                                "models.target.parallel.micro_batch=4",
                                "models.target.parallel.activation_checkpointing=true"])
    assert sharded.run_config("target").parallel.strategy == "fsdp"
    assert sharded.run_config("target").run_id() == plain.run_config("target").run_id()
    assert type(sharded.run_config("target").scale) is Scale
    assert dataclasses.asdict(sharded.run_config("target").scale) == \
        dataclasses.asdict(plain.models["target"].scale)


@pytest.mark.parametrize("setting,allowed", [
    ("models.target.parallel.strategy=zero3", "'ddp', 'fsdp'"),
    ("models.proxy.parallel.micro_batch=-1", "an integer >= 0"),
    ("models.proxy.parallel.activation_checkpointing=3", ""),
])
def test_a_bad_parallel_setting_is_refused_with_what_is_allowed(setting, allowed):
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, [setting])
    (problem,) = err.value.problems
    assert problem.key == setting.split("=")[0] and allowed in problem.allowed


def test_the_paper_7b_spec_is_a_7b_target_that_fits_80_gb_gpus_on_8_nodes():
    spec = load_spec(PAPER_7B)  # loading checks that every model fits its GPUs
    target, proxy = spec.models["target"], spec.models["proxy"]
    cfg = spec.run_config("target").model_config(spec.data.vocab_size)
    assert (cfg.width, cfg.depth, cfg.arch.head_dim, cfg.n_heads) == (4096, 32, 128, 32)
    assert cfg.arch.mlp == "swiglu" and 2.6 <= cfg.mlp_hidden / cfg.width <= 3.0
    assert cfg.mlp_hidden % 256 == 0
    assert 7.1e9 < count_params(cfg) < 7.3e9
    proxy_cfg = spec.run_config("proxy").model_config(spec.data.vocab_size)
    embeddings = 2 * proxy_cfg.vocab_size * proxy_cfg.width + proxy_cfg.width
    assert 45e6 < count_params(proxy_cfg) - embeddings < 60e6  # "~50M" without embeddings
    rows = {r.model: r for r in memory_plan(spec)}
    ratio = rows["target"].flops_per_token * target.tokens / (
        rows["proxy"].flops_per_token * proxy.tokens)
    assert 0.95e4 < ratio < 1.05e4
    assert rows["target"].ranks == 64 and target.parallel.strategy == "fsdp"
    assert all(r.gpu_mem_gb == 80 and r.fits for r in rows.values())
