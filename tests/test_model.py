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


@pytest.mark.parametrize("arch", [ArchConfig(head_dim=16), ArchConfig(head_dim=16, mlp="gelu",
                                                                      qk_norm=False)])
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
