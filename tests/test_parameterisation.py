"""cp.parameterise on Hugging Face models: the settings our GPT gets, forward multipliers through
hooks that come off, a saved parameterisation that applies again, schedules that keep ratios,
and wrappers (torch.compile, FSDP) that change nothing."""

import dataclasses
import json
import math

import pytest
import torch

import cp
from cp.cli import describe_json
from cp.model import GPT
from cp.optim import set_lr_factor
from cp.parameterisation import ParameterisationError
from cp.roles import PRESETS, RoleError
from tests.study_helpers import smoke_spec

hf = pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")

BASE = {"width": 32, "depth": 1, "batch": 8, "tokens": 16_384, "seq_len": 32}
HPS = {"lr": 0.01, "eps": 1e-7, "weight_decay": 0.05, "beta2": 0.98, "init_std": 0.03,
       "groups": {"hidden": {"eps": 3e-8}, "unembedding": {"init_std": 0.01}}}
FACTORS = {"per_type": {"lr": {"mlp_down": 2.0}, "eps": {"attn_q": 0.5}},
           "per_layer": {"lr": [1.0, 0.5], "weight_decay": [2.0, 1.0, 0.5]}}
VOCAB = 256


def target(width, depth):
    return {"width": width, "depth": depth, "batch": 16, "tokens": 65_536, "seq_len": 32}


def our_gpt_described(scale):
    """What `cpt describe --json` gives our GPT at ``scale`` with the same HPs and factors."""
    spec = smoke_spec(models={"proxy": BASE, "target": scale}, hps=HPS, factors=FACTORS)
    return describe_json(spec, "target")


def llama_at(scale, builder=None, seed=0):
    torch.manual_seed(seed)
    return (builder or hf.llama)(scale["width"], scale["depth"], VOCAB, scale["seq_len"])


def parameterised_llama(scale, **kw):
    model = llama_at(scale)
    p = cp.parameterise(model, "completed_p", base=BASE, scale=scale, roles="llama", hps=HPS,
                        factors=FACTORS, **kw)
    return model, p


def group_key(name):
    group, _, layer = name.partition("[")
    return group, int(layer[:-1]) if layer else None


@pytest.mark.parametrize("width,depth", [(64, 2), (128, 2), (64, 4), (128, 4)])
def test_llama_groups_get_what_cpt_describe_gives_our_gpt(width, depth):
    scale = target(width, depth)
    ours = {(g["group"], g["layer"]): g for g in our_gpt_described(scale)["groups"]}
    model, p = parameterised_llama(scale)
    p.init_(torch.Generator().manual_seed(0))
    groups = p.param_groups()
    seen = set()
    for g in groups:
        key = group_key(g["name"])
        seen.add(key)
        want = ours[key]
        assert (g["lr"], g["eps"], g["weight_decay"], g["betas"]) == (
            want["lr"], want["eps"], want["weight_decay"], (want["beta1"], want["beta2"])), key
        for t in g["params"]:
            if want["init_std"] is None:
                assert torch.all(t == 1.0), key  # norm gains start at one
            else:
                assert t.std().item() == pytest.approx(want["init_std"], rel=0.1), key
    assert len(seen) == len(groups) == 2 + 9 * depth + 1  # embedding, 9 per block, norm, head
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups)  # AdamW takes them as they are
    assert len(opt.param_groups) == len(groups)


def test_the_residual_branches_are_scaled_by_m_L_to_the_minus_alpha_and_remove_undoes_it():
    scale = target(64, 4)  # m_L = 4, alpha = 1
    model, p = parameterised_llama(scale)
    x = torch.randint(0, VOCAB, (2, 16))
    seen = {}

    def probe(name):
        def pre(_m, args):
            seen[name, "in"] = args[0].detach()

        def post(_m, _args, out):
            seen[name, "out"] = out.detach()
        return pre, post

    probes = []
    for i, layer in enumerate(model.model.layers):
        for name, module in ((f"o{i}", layer.self_attn.o_proj), (f"d{i}", layer.mlp.down_proj),
                             (f"u{i}", layer.mlp.up_proj)):
            pre, post = probe(name)
            probes += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    hooked = model(x).logits
    for i, layer in enumerate(model.model.layers):
        for name, module, mult in ((f"o{i}", layer.self_attn.o_proj, 0.25),
                                   (f"d{i}", layer.mlp.down_proj, 0.25),
                                   (f"u{i}", layer.mlp.up_proj, 1.0)):
            plain = torch.nn.functional.linear(seen[name, "in"], module.weight)
            assert torch.allclose(seen[name, "out"], mult * plain, atol=1e-6), name
    for h in probes:
        h.remove()

    p.remove()
    unhooked = llama_at(scale)
    unhooked.load_state_dict(model.state_dict())
    assert torch.equal(model(x).logits, unhooked(x).logits)
    assert not torch.allclose(hooked, unhooked(x).logits)
    assert not model.model.layers[0].self_attn.o_proj._forward_hooks


def test_a_saved_parameterisation_reloads_to_identical_groups_and_forward(tmp_path):
    scale = target(64, 2)
    model, p = parameterised_llama(scale)
    p.init_()
    path = p.save(tmp_path / "p.json")
    assert path.stat().st_size < 10_000
    json.loads(path.read_text())  # plain JSON

    again = llama_at(scale, seed=1)
    again.load_state_dict(model.state_dict())  # a checkpoint: weights only, no metadata
    q = cp.load_parameterisation(path, again)

    def plain(groups, m):
        names = {id(t): n for n, t in m.named_parameters()}
        return [{**{k: v for k, v in g.items() if k != "params"},
                 "params": [names[id(t)] for t in g["params"]]} for g in groups]

    assert plain(q.param_groups(), again) == plain(p.param_groups(), model)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(again(x).logits, model(x).logits)
    assert q.describe() == p.describe()


def test_nothing_is_stored_on_tensors_or_modules():
    model = llama_at(target(64, 2))
    before = {n: set(vars(t)) for n, t in model.named_parameters()}
    modules = {n: set(vars(m)) - {"_forward_hooks"} for n, m in model.named_modules()}
    p = cp.parameterise(model, "completed_p", base=BASE, scale=target(64, 2), roles="llama")
    p.init_()
    assert {n: set(vars(t)) for n, t in model.named_parameters()} == before
    assert {n: set(vars(m)) - {"_forward_hooks"} for n, m in model.named_modules()} == modules


@pytest.mark.parametrize("schedule", ["lambda_cosine", "cosine_annealing"])
def test_a_cosine_schedule_keeps_every_ratio_of_the_table(schedule):
    _, p = parameterised_llama(target(64, 4))
    opt = torch.optim.AdamW(p.param_groups())
    peaks = [g["lr"] for g in opt.param_groups]
    assert len(set(peaks)) > 3  # the table gives the groups different learning rates
    if schedule == "lambda_cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 50)))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    for _ in range(49):
        opt.step()
        sched.step()
        lrs = [g["lr"] for g in opt.param_groups]
        factor = lrs[0] / peaks[0]
        assert 0 < factor < 1
        assert lrs == pytest.approx([factor * peak for peak in peaks], rel=1e-9)


def test_set_lr_factor_keeps_ratios_for_a_loop_that_computes_an_absolute_lr():
    _, p = parameterised_llama(target(64, 2))
    opt = torch.optim.AdamW(p.param_groups())
    peaks = [g["lr"] for g in opt.param_groups]
    peak = 3e-3
    for step in range(10):
        lr = peak * (1 - step / 10)   # the user's schedule, absolute
        set_lr_factor(opt, lr / peak)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [x * (1 - step / 10) for x in peaks])


def test_gpt2_tied_embedding_takes_the_embedding_rule_and_the_logits_the_readout_multiplier():
    scale = target(128, 1)  # m_N = 4, m_L = 1: the readout's is the only multiplier
    torch.manual_seed(0)
    model = hf.gpt2(128, 1, VOCAB, 32)
    assert model.lm_head.weight is model.transformer.wte.weight
    p = cp.parameterise(model, "completed_p", base=BASE, scale=scale, roles="gpt2")
    info = p.describe()
    assert info["tied_readout"]["multiplier"] == pytest.approx(1 / 4)
    settings = {(g["group"], g["layer"]): g for g in info["groups"]}
    (emb,) = [g for g in p.param_groups() if g["name"] == "embedding"]
    assert any(t is model.transformer.wte.weight for t in emb["params"])
    assert emb["lr"] == settings["embedding", None]["lr"]  # not the unembedding's m_N^-1
    assert not [g for g in p.param_groups() if g["name"] == "unembedding"]

    x = torch.randint(0, VOCAB, (2, 8))
    hooked = model(x).logits
    p.remove()
    assert torch.allclose(hooked, model(x).logits / 4, atol=1e-6)


def test_gpt2_biases_take_their_blocks_norm_rule_and_start_at_zero():
    scale = target(64, 2)
    model = hf.gpt2(64, 2, VOCAB, 32)
    p = cp.parameterise(model, "completed_p", base=BASE, scale=scale, roles="gpt2")
    p.init_()
    names = {id(t): n for n, t in model.named_parameters()}
    by_name = {g["name"]: [names[id(t)] for t in g["params"]] for g in p.param_groups()}
    assert "transformer.h.1.attn.c_attn.bias" in by_name["attn_norm[1]"]
    assert "transformer.h.1.mlp.c_proj.bias" in by_name["mlp_norm[1]"]
    assert torch.all(model.transformer.h[1].attn.c_attn.bias == 0)
    assert torch.all(model.transformer.h[1].ln_1.weight == 1)


def test_qwen2_fits_the_llama_preset():
    model = hf.qwen2(64, 2, VOCAB, 32)
    p = cp.parameterise(model, "completed_p", base=BASE, scale=target(64, 2), roles="llama")
    assert {g["name"] for g in p.param_groups()} >= {"attn_norm[0]", "attn_k[1]", "mlp_down[1]"}


def test_our_gpt_through_the_cp_preset_is_our_gpt():
    """A GPT built plainly (every multiplier 1) and parameterised through hooks computes what
    the GPT built from the target's resolved settings computes, with the same param groups."""
    run = smoke_spec(models={"proxy": BASE, "target": target(64, 4)}).run_config("target")
    torch.manual_seed(0)
    ours = GPT(run.model_config(VOCAB), run.settings())
    plain_run = dataclasses.replace(run, base_scale=run.scale)  # ratios 1: no multiplier
    plain = GPT(plain_run.model_config(VOCAB), plain_run.settings())
    plain.load_state_dict(ours.state_dict())
    info = run.describe()
    p = cp.parameterise(plain, run.table(), base=info["base_scale"], scale=info["scale"],
                        roles="cp", hps=run.hps)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.allclose(plain(x), ours(x), atol=1e-6)
    assert [(g["name"], g["lr"], g["eps"]) for g in p.param_groups()] == [
        (f"{s.group}[{s.layer}]" if s.layer is not None else s.group, s.lr, s.eps)
        for s in run.settings()]
    assert {n for _, _, n, _ in p.tagged} == {n for _, _, n, _ in ours.tagged_parameters()}


def test_a_parameter_with_no_role_or_two_is_an_error_that_lists_the_names():
    model = hf.gpt2(64, 2, VOCAB, 32)
    with pytest.raises(RoleError, match=r"matched by no role.*transformer\.wpe\.weight"):
        cp.parameterise(model, "completed_p", base=BASE, scale=target(64, 2), roles="llama")
    roles = {**PRESETS["gpt2"],
             r"transformer\.h\.(\d+)\.ln_1\.weight": "attn_norm",
             r"transformer\.h\.(\d+)\.ln_\d\.weight": "mlp_norm"}
    with pytest.raises(RoleError, match=r"matched by two roles: transformer\.h\.0\.ln_1\.weight"):
        cp.parameterise(model, "completed_p", base=BASE, scale=target(64, 2), roles=roles)


def test_a_model_whose_width_or_depth_is_not_the_scales_is_refused():
    model = llama_at(target(64, 2))
    with pytest.raises(ParameterisationError, match=r"width 64 and depth 2.*depth 4"):
        cp.parameterise(model, "completed_p", base=BASE, scale=target(64, 4), roles="llama")
    with pytest.raises(ParameterisationError, match=r"width 64 and depth 2.*width 128"):
        cp.parameterise(model, "completed_p", base=BASE, scale=target(128, 2), roles="llama")
    with pytest.raises(ParameterisationError, match="missing key"):
        cp.parameterise(model, "completed_p", base={"width": 32}, scale=target(64, 2),
                        roles="llama")


def test_multipliers_is_read_as_the_factors_old_name():
    scale = target(64, 2)
    _, p = parameterised_llama(scale)
    model = llama_at(scale)
    q = cp.parameterise(model, "completed_p", base=BASE, scale=scale, roles="llama", hps=HPS,
                        multipliers=FACTORS)
    assert [g["lr"] for g in q.param_groups()] == [g["lr"] for g in p.param_groups()]


def test_hooks_survive_torch_compile_and_apply_to_the_compiled_model():
    scale = target(64, 4)
    model, p = parameterised_llama(scale)
    x = torch.randint(0, VOCAB, (2, 16))
    eager = model(x).logits
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(x).logits, eager, atol=1e-5)
    p.remove()
    assert not torch.allclose(model(x).logits, eager)
    q = cp.parameterise(compiled, "completed_p", base=BASE, scale=scale, roles="llama",
                        hps=HPS, factors=FACTORS)  # names now start with _orig_mod.
    assert [g["name"] for g in q.param_groups()] == [g["name"] for g in p.param_groups()]
    torch._dynamo.reset()
    assert torch.allclose(torch.compile(model, backend="eager")(x).logits, eager, atol=1e-5)


def test_it_applies_to_an_fsdp_sharded_model(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    scale = target(64, 2)
    model, p = parameterised_llama(scale)
    x = torch.randint(0, VOCAB, (2, 16))
    reference = model(x).logits.detach()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert torch.allclose(model(x).logits, reference, atol=1e-5)  # hooks kept
        p.remove()
        q = cp.parameterise(model, "completed_p", base=BASE, scale=scale, roles="llama",
                            hps=HPS, factors=FACTORS)  # applied again to the sharded model
        assert [(g["name"], g["lr"]) for g in q.param_groups()] == [
            (g["name"], g["lr"]) for g in p.param_groups()]
        assert torch.allclose(model(x).logits, reference, atol=1e-5)
        opt = torch.optim.AdamW(q.param_groups())
        model(x).logits.float().pow(2).mean().backward()
        opt.step()
    finally:
        dist.destroy_process_group()
