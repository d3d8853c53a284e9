"""The GPT: parameters carry their group and layer, multipliers act, shapes hold."""

import dataclasses

import pytest
import torch

from cp.config import ArchConfig, count_params, model_groups
from cp.model import GPT
from cp.scaling import Scale


def build(cfg, arch=None, **scale):
    run = dataclasses.replace(cfg, arch=arch or cfg.arch,
                              scale=dataclasses.replace(cfg.scale, **scale))
    torch.manual_seed(0)
    return run, GPT(run.model_config(256), run.settings())


GPT2_ARCH = ArchConfig(head_dim=16, mlp="gelu", mlp_ratio=4.0, qk_norm=False, norm="layernorm",
                       fused_qkv=True, positions="learned")


@pytest.mark.parametrize("arch", [ArchConfig(head_dim=16), ArchConfig(head_dim=16, mlp="gelu",
                                                                      qk_norm=False),
                                  GPT2_ARCH, ArchConfig(head_dim=16, norm="layernorm")])
def test_every_parameter_reports_a_group_of_the_architecture_and_a_layer(tiny, arch):
    _, model = build(tiny(), arch=arch, depth=3)
    tags = list(model.tagged_parameters())
    assert len(tags) == len(list(model.parameters()))
    groups = {g for g, *_ in tags}
    assert groups == set(model_groups(arch))
    for _, layer, name, _ in tags:
        if name.startswith("blocks."):
            assert layer == int(name.split(".")[1])
        else:
            assert layer is None
    assert sum(p.numel() for p in model.parameters()) == count_params(model.cfg)


def test_init_std_follows_the_resolved_settings(tiny):
    run, model = build(tiny(), width=256)
    settings = {(s.group, s.layer): s for s in run.settings()}
    for group, layer, _, p in model.tagged_parameters():
        std = settings[group, layer].init_std
        if std is None:
            assert torch.all(p == 1.0)  # gains start at one
        else:
            assert p.std().item() == pytest.approx(std, rel=0.1)


def test_residual_branch_multiplier_scales_the_branch_output(tiny):
    base = tiny()
    deep = dataclasses.replace(base, scale=dataclasses.replace(base.scale, depth=8))
    torch.manual_seed(0)
    model = GPT(deep.model_config(256), deep.settings())
    assert model.blocks[0].attn.out.multiplier == pytest.approx(0.25)  # (8/2)^-1 at alpha=1
    assert model.blocks[0].mlp.down.multiplier == pytest.approx(0.25)
    x = torch.randn(2, 5, model.cfg.mlp_hidden)
    y = model.blocks[0].mlp.down(x)
    assert torch.allclose(y, 0.25 * x @ model.blocks[0].mlp.down.weight.T)


def test_forward_gives_logits_and_a_loss_near_log_vocab_at_init(tiny):
    _, model = build(tiny())
    idx = torch.randint(0, 256, (3, 32))
    assert model(idx).shape == (3, 32, 256)
    loss, ce = model(idx, idx)
    assert loss == ce  # no z-loss by default
    assert ce.item() == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.1)


def test_z_loss_adds_the_mean_squared_log_partition(tiny):
    run = tiny(arch=ArchConfig(head_dim=16, z_loss=1e-2))
    torch.manual_seed(0)
    model = GPT(run.model_config(256), run.settings())
    idx = torch.randint(0, 256, (2, 16))
    loss, ce = model(idx, idx)
    z = torch.logsumexp(model(idx).float(), dim=-1)
    assert loss.item() == pytest.approx(ce.item() + 1e-2 * (z * z).mean().item(), rel=1e-5)


def test_attention_is_causal(tiny):
    _, model = build(tiny())
    idx = torch.randint(0, 256, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 256
    assert torch.allclose(model(idx)[0, :10], model(changed)[0, :10], atol=1e-6)


def test_width_must_be_a_multiple_of_head_dim(tiny):
    run = tiny(scale=Scale(width=40, depth=1, batch=2, tokens=1000, seq_len=8))
    with pytest.raises(ValueError, match="multiple of head_dim"):
        GPT(run.model_config(256), run.settings())


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_the_norm_is_the_one_the_architecture_names(tiny, norm):
    _, model = build(tiny(), arch=ArchConfig(head_dim=16, norm=norm))
    x = 3.0 + 2.0 * torch.randn(4, 7, model.cfg.width)  # rows with a mean: the two differ
    with torch.no_grad():
        model.blocks[0].attn_norm.gain.fill_(1.0)
        y = model.blocks[0].attn_norm(x)
        q = model.blocks[0].attn.q_norm(x[..., :16])
    for out in (y, q):
        if norm == "layernorm":  # rows of mean 0 and variance 1
            assert torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5)
            assert torch.allclose(out.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
        else:  # rows of mean square 1, their mean kept
            assert torch.allclose(out.square().mean(-1), torch.ones(()), atol=1e-3)
            assert out.mean() > 0.5


def test_learned_positions_take_the_embedding_groups_settings_and_replace_rope(tiny):
    from cp.optim import build_optimizer
    from cp.schedule import ScheduleConfig

    run, model = build(tiny(), arch=GPT2_ARCH, width=64)
    assert not hasattr(model, "rope_cos")
    table = model.pos_embedding
    assert table.shape == (model.cfg.seq_len, model.cfg.width)
    settings = {(s.group, s.layer): s for s in run.settings()}
    assert table.std().item() == pytest.approx(settings["embedding", None].init_std, rel=0.1)
    opt, _ = build_optimizer(model.tagged_parameters(), run.settings(), ScheduleConfig(), 10)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    ours, embedding = group_of[id(table)], group_of[id(model.embedding)]
    assert {k: ours[k] for k in ("lr", "eps", "weight_decay", "betas")} == \
        {k: embedding[k] for k in ("lr", "eps", "weight_decay", "betas")}
    # Without RoPE the table is what tells positions apart: the same token at every position
    # gives the same logits once it is zeroed, and different ones before.
    idx = torch.full((1, 8), 5)
    with torch.no_grad():
        logits = model(idx)[0]
        assert not torch.allclose(logits[1], logits[7], atol=1e-4)
        table.zero_()
        logits = model(idx)[0]
    assert torch.allclose(logits[1], logits[7], atol=1e-5)


def test_a_fused_qkv_projection_computes_what_three_separate_ones_do(tiny):
    run, separate = build(tiny())
    fused_run = dataclasses.replace(run, arch=dataclasses.replace(run.arch, fused_qkv=True))
    fused = GPT(fused_run.model_config(256), fused_run.settings())
    state = separate.state_dict()
    for i in range(len(separate.blocks)):
        prefix = f"blocks.{i}.attn."
        state[prefix + "qkv.weight"] = torch.cat([state.pop(prefix + f"{p}.weight")
                                                  for p in "qkv"])
    fused.load_state_dict(state)
    idx = torch.randint(0, 256, (2, 16))
    assert torch.allclose(fused(idx), separate(idx), atol=1e-5)
    assert {g for g, *_ in fused.tagged_parameters()} == \
        {g for g, *_ in separate.tagged_parameters()} - {"attn_k", "attn_v"}
