"""CrossViT's weight tables both ways, its named options and presets, and checkpoints of the ``style`` era.

Export round trips: a random-weight timm ``CrossVit`` -> Flax -> exported back -> ``load_state_dict(strict=True)``
into a fresh PyTorch model gives the same tensors bit for bit and the same logits (vit-pytorch's round trip goes
through the exported folder, in test_crossvit_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models.crossvit import CrossVit

from hf_vit_flax import (
    CrossViT,
    CrossViTConfig,
    FlaxAutoModelForImageClassification,
    FlaxCrossViTForImageClassification,
)
from hf_vit_flax.conversion_utils import to_numpy
from hf_vit_flax.models.crossvit.configuration_crossvit import PRESETS
from hf_vit_flax.models.crossvit.convert_crossvit import (
    config_from_timm,
    convert_timm,
    export_timm,
    timm_table,
    vit_pytorch_table,
)
from hf_vit_flax.weight_tables import Entry
from tests.helpers import CROSSVIT_DIFFERENT_WIDTHS, TINY_CONFIGS, assert_parity, images, randomize_, torch_logits

LEGACY = Path(__file__).resolve().parent.parent / "fixtures" / "crossvit_legacy"

# timm's registered layout: one un-nested fusion block per branch (depth[-1] == 0). Its round trip is
# test_crossvit_export.py's (timm loads the exported folder), its parity test_crossvit.py's.
SINGLE_FUSION = dict(img_size=48, patch_size=(12, 16), embed_dim=(24, 48), depth=((1, 2, 0), (1, 2, 0)))
SINGLE_FUSION.update(num_heads=(2, 4), mlp_ratio=(2, 3, 1))
TIMM = {
    # The dagger stems, the large branch resized inside the forward, three nested fusion blocks, avg pooling.
    "dagger-nested-fusion": dict(
        SINGLE_FUSION, img_scale=(1.0, 32 / 48), depth=((1, 1, 3),), multi_conv=True, global_pool="avg"
    ),
    # One fusion block nested in a Sequential (depth[-1] == 1), no qkv bias, equal widths.
    "nested-single-fusion-no-qkv-bias": dict(
        SINGLE_FUSION, embed_dim=(32, 32), depth=((2, 1, 1),), num_heads=(4, 2), qkv_bias=False
    ),
}


def assert_same_tensors(exported: dict[str, np.ndarray], reference: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``exported`` loads strictly into a fresh copy of ``reference`` (other random weights) and gives back
    every tensor of ``reference`` bit for bit; returns the copy."""
    fresh = randomize_(type(reference)(**reference.init_kwargs), seed=seed)
    fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()}, strict=True)
    original, loaded = reference.state_dict(), fresh.state_dict()
    assert loaded.keys() == original.keys()
    for key, tensor in original.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    return fresh.eval()


def built(cls, **kwargs):
    module = cls(**kwargs)
    module.init_kwargs = kwargs
    return module


# -- vit-pytorch ----------------------------------------------------------------------------------------------


def test_vit_pytorch_table_reads_as_a_rename_list():
    config = CrossViTConfig(**CROSSVIT_DIFFERENT_WIDTHS)
    table = vit_pytorch_table(config)
    assert all(isinstance(e, Entry) for e in table)
    rows = {e.torch: e.flax for e in table}
    assert rows["sm_image_embedder.to_patch_embedding.1.weight"] == "sm_embed/patch_embed/patch_norm/scale"
    assert (
        rows["multi_scale_encoder.layers.1.1.layers.1.0.to_qkv.weight"]
        == "blocks_1/lg_encoder/blocks_1/attn/qkv/kernel"
    )
    assert (
        rows["multi_scale_encoder.layers.0.2.layers.1.0.project_in.weight"]
        == "blocks_0/sm_attend_lg_1/project_in/kernel"
    )
    assert rows["lg_mlp_head.1.bias"] == "lg_head/fc/bias"
    assert len(rows) == len(table) and len(set(rows.values())) == len(table)  # one row per tensor, both ways


# -- timm -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM)
def test_timm_weights_round_trip(name):
    reference = randomize_(built(CrossVit, num_classes=5, **TIMM[name]), seed=3)
    config = config_from_timm(reference)
    model = FlaxCrossViTForImageClassification.from_params(
        config, convert_timm(to_numpy(reference.state_dict()), config)
    )
    x = images(2, 48, 48)
    assert_parity(model(x).logits, torch_logits(reference, x))
    nested = TIMM[name]["depth"][0][-1] > 0
    exported = export_timm(model.module_params()["params"], config, nested_fusion=nested)
    fresh = assert_same_tensors(exported, reference, seed=4)
    np.testing.assert_array_equal(torch_logits(fresh, x), torch_logits(reference, x))


def test_timm_registered_architecture_round_trip():
    # crossvit_9_dagger_240's layout (dagger stems, un-nested fusion, 240 -> 224 second branch) at 120 -> 112.
    reference = randomize_(timm.create_model("crossvit_9_dagger_240", pretrained=False, img_size=120), seed=5)
    config = config_from_timm(reference)
    exported = export_timm(convert_timm(to_numpy(reference.state_dict()), config), config)
    fresh = randomize_(timm.create_model("crossvit_9_dagger_240", pretrained=False, img_size=120), seed=6)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
    x = images(1, 120, 120)
    np.testing.assert_array_equal(torch_logits(fresh, x), torch_logits(reference, x))


def test_tables_refuse_what_the_reference_does_not_have():
    timm_config = CrossViTConfig(**{**TINY_CONFIGS["crossvit"], **TIMM_TINY})
    with pytest.raises(
        ValueError, match=r"vit-pytorch's CrossViT has patch_embedding='norm_linear'.*style='vit_pytorch'"
    ):
        vit_pytorch_table(timm_config)
    with pytest.raises(ValueError, match="timm's CrossVit has .*fusion='token_projection'"):
        timm_table(CrossViTConfig(**TINY_CONFIGS["crossvit"]))
    with pytest.raises(ValueError, match="at least one block per branch"):
        timm_table(CrossViTConfig(**{**TINY_CONFIGS["crossvit"], **TIMM_TINY, "sm_enc_depth": 0}))
    with pytest.raises(ValueError, match="qkv_bias=False"):
        vit_pytorch_table(CrossViTConfig(**TINY_CONFIGS["crossvit"], qkv_bias=True))


# -- named options and presets --------------------------------------------------------------------------------

# TINY_CONFIGS["crossvit"] as timm expresses it: the cross attention takes each branch's heads.
TIMM_TINY = dict(style="timm", sm_enc_dim_head=8, lg_enc_heads=4, cross_attn_heads=None, cross_attn_dim_head=None)


def tiny_module(**changes):
    kwargs = {**TINY_CONFIGS["crossvit"], **changes}
    return CrossViT(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def test_a_style_is_its_named_options():
    preset = tiny_module(**TIMM_TINY)
    assert {k: getattr(preset, k) for k in PRESETS["timm"]} == PRESETS["timm"]
    assert preset.cross_attn_heads is None and preset.cross_attn_dim_head is None
    spelled_out = tiny_module(**{**TIMM_TINY, "style": None}, **PRESETS["timm"])
    x = jnp.asarray(images(2, 32, 32).transpose(0, 2, 3, 1))
    a, b = (jax.jit(m.init)(jax.random.key(0), x) for m in (preset, spelled_out))
    jax.tree.map(np.testing.assert_array_equal, a, b)  # initialisation is part of the preset
    np.testing.assert_array_equal(jax.jit(preset.apply)(a, x), jax.jit(spelled_out.apply)(b, x))
    # Without a style the options are vit-pytorch's, and the config says the same as the module.
    plain = tiny_module()
    assert {k: getattr(plain, k) for k in PRESETS["vit_pytorch"]} == PRESETS["vit_pytorch"]
    config = CrossViTConfig(**{**TINY_CONFIGS["crossvit"], **TIMM_TINY})
    assert CrossViT(**config.to_module_kwargs()) == preset


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            dict(style="timm", fusion="project_in_out"),
            "style='timm' is the preset fusion='token_projection'.*leave style out",
        ),
        (dict(TIMM_TINY, cross_attn_heads=2), "cross_attn_heads / cross_attn_dim_head must be None"),
        (dict(fusion="token_projection", cross_attn_heads=2), "cross_attn_heads / cross_attn_dim_head must be None"),
        (
            dict(drop_path_rate=0.1),
            "drop_path_rate follows timm's stochastic-depth schedule.*fusion='token_projection'",
        ),
        (dict(TIMM_TINY, style=None, fusion="token_projection", drop_path_rate=0.1), "and encoder_norm=False, got"),
        (dict(multi_conv=True, sm_patch_size=16, lg_patch_size=16), "a kind of patch_embedding='conv'"),
        (dict(TIMM_TINY, cross_attn_depth=0), "cross_attn_depth >= 1"),
        (dict(fusion="both"), "fusion must be one of"),
        (dict(head_combine="max"), "head_combine must be one of"),
        (dict(style="keras"), "style must be one of"),
    ],
    ids=str,
)
def test_options_a_variant_cannot_use_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        CrossViTConfig(**{**TINY_CONFIGS["crossvit"], **changes})
    with pytest.raises(ValueError, match=match):  # the core module says the same
        jax.eval_shape(tiny_module(**changes).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize(
    "changes",
    [  # combinations neither reference has: each option acts on its own
        dict(TIMM_TINY, style=None, fusion="token_projection", final_norm=True, head_combine="mean"),
        dict(encoder_norm=False, final_norm=True, head_norm=False, patch_embedding="conv", global_pool="avg"),
        dict(
            TIMM_TINY,
            style=None,
            fusion="token_projection",
            patch_embedding="conv",
            multi_conv=True,
            sm_patch_size=16,
            lg_patch_size=16,
        ),
    ],
    ids=str,
)
def test_every_combination_builds_runs_and_is_counted(changes):
    config = CrossViTConfig(**{**TINY_CONFIGS["crossvit"], **changes})
    model = FlaxCrossViTForImageClassification(config, seed=0)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(model.params))
    assert count == config.estimate_num_parameters()
    logits = model(images(2, 32, 32)).logits
    assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
    reloaded = CrossViTConfig.from_dict(json.loads(config.to_json_string()))
    assert reloaded.to_module_kwargs() == config.to_module_kwargs()


# -- checkpoints of the style switch ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_pytorch", "timm"])
def test_a_checkpoint_saved_with_the_style_switch_loads_to_the_same_logits(name):
    folder = LEGACY / name
    saved = json.loads((folder / "config.json").read_text())
    assert "style" in saved and "fusion" not in saved
    model = FlaxAutoModelForImageClassification.from_pretrained(folder)
    assert model.config.style == name
    assert model.config.fusion == PRESETS[name]["fusion"]
    # What the switch ignored then is dropped: the named options would refuse it.
    if name == "timm":
        assert saved["cross_attn_heads"] == 8 and model.config.cross_attn_heads is None
    else:
        assert saved["drop_path_rate"] == 0.1 and model.config.drop_path_rate == 0.0
    x = np.random.RandomState(1).rand(2, 3, 48, 48).astype("float32")  # tests/fixtures/crossvit_legacy/make.py
    np.testing.assert_allclose(model(x).logits, np.load(folder / "logits.npy"), rtol=0, atol=1e-6)
