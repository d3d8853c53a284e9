"""Role maps: presets, malformed maps refused with what is wrong, wrapper prefixes ignored, and
the ``cp`` preset is what our GPT says of its own parameters."""

import pytest
import torch

from cp.config import model_groups
from cp.model import GPT
from cp.roles import PRESETS, RoleError, RoleMap, strip_wrappers
from cp.scaling import GROUPS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_a_valid_map_of_known_groups(preset):
    roles = RoleMap.of(preset)
    assert set(roles.groups()) <= set(GROUPS)
    assert {"embedding", "attn_out", "mlp_down", "final_norm", "unembedding"} <= set(
        roles.groups())
    assert RoleMap.from_dict(roles.to_dict()).groups() == roles.groups()


@pytest.mark.parametrize("entries,message", [
    ({r"h\.(\d+)\.w": "attn_qq"}, "unknown group 'attn_qq'"),
    ({r"h\.\d+\.w": "attn_q"}, "needs the layer index captured"),
    ({r"(emb)\.w": "embedding"}, "outside the blocks and has no layer"),
    ({r"h\.(\d+)\.ln": {"group": "attn_norm", "init": "normal"}}, "has no init std"),
    ({r"h\.(\d+)\.w": {"group": "attn_q", "init": "xavier"}}, "unknown init 'xavier'"),
    ({r"h\.(\d+\.w": "attn_q"}, "not a regular expression"),
    ({r"h\.(\d+)\.w": ["attn_q"]}, "neither a group name nor a mapping"),
])
def test_a_malformed_map_is_refused_with_what_is_wrong(entries, message):
    with pytest.raises(RoleError, match=message):
        RoleMap.of(entries)


def test_an_unknown_preset_names_the_presets():
    with pytest.raises(RoleError, match="unknown role preset 'lama'; presets: llama, gpt2, cp"):
        RoleMap.of("lama")


def test_unmatched_and_doubly_matched_names_are_all_listed():
    roles = RoleMap.of({r"emb": "embedding", r"b\.(\d+)\..*": "attn_q",
                        r"b\.(\d+)\.w2": "mlp_down"})
    assert roles.assign(["emb", "b.0.w1"]) == {
        "emb": roles.match("emb")[0], "b.0.w1": roles.match("b.0.w1")[0]}
    with pytest.raises(RoleError) as e:
        roles.assign(["emb", "b.0.w2", "b.1.w2", "head", "norm"])
    text = str(e.value)
    assert "2 parameter(s) matched by no role" in text and "head, norm" in text
    assert "b.0.w2 (attn_q[0], mlp_down[0]), b.1.w2 (attn_q[1], mlp_down[1])" in text


def test_wrapper_prefixes_are_ignored_but_a_module_named_module_is_kept():
    assert strip_wrappers("_orig_mod.module.model.layers.0.mlp.weight") == \
        "model.layers.0.mlp.weight"
    assert strip_wrappers("model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module."
                          "mlp.weight") == "model.layers.0.mlp.weight"
    assert strip_wrappers("encoder.module.weight") == "encoder.module.weight"
    (role,) = RoleMap.of("llama").match("_orig_mod.model.layers.3.mlp.down_proj.weight")
    assert (role.group, role.layer, role.init) == ("mlp_down", 3, "normal")


@pytest.mark.parametrize("arch", [{}, {"mlp": "gelu", "qk_norm": False},
                                  {"mlp": "gelu", "qk_norm": False, "norm": "layernorm",
                                   "fused_qkv": True, "positions": "learned"}])
def test_the_cp_preset_agrees_with_our_gpts_own_tags(tiny, arch):
    import dataclasses

    run = tiny()
    run = dataclasses.replace(run, arch=dataclasses.replace(run.arch, **arch))
    model = GPT(run.model_config(256), run.settings())
    names = [n for n, _ in model.named_parameters()]
    assigned = RoleMap.of("cp").assign(names)
    assert {n: (r.group, r.layer) for n, r in assigned.items()} == {
        n: (g, layer) for g, layer, n, _ in model.tagged_parameters()}
    for name, role in assigned.items():  # gains start at one, matrices are drawn
        p = dict(model.named_parameters())[name]
        assert (role.init == "ones") == bool(torch.all(p == 1.0))
    assert set(model_groups(run.arch)) <= set(RoleMap.of("cp").groups())
