"""CaiT's named options: ``style`` is a preset expanded once, old configs with ``style`` keep loading.

The parity of each preset with its reference (vit-pytorch, timm) is in test_cait.py; here: the preset
table, its expansion in the config and in the core module, the errors, and the checkpoints saved
with a ``style`` key before the options existed.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from timm.models.cait import Cait

from hf_vit_flax import CaiT, CaiTConfig, FlaxCaiTForImageClassification
from hf_vit_flax.models.cait import modeling_flax_cait
from hf_vit_flax.models.cait.configuration_cait import STYLES
from hf_vit_flax.models.cait.convert_cait import config_from_timm
from tests.helpers import TINY_CONFIGS, images

TINY = TINY_CONFIGS["cait"]
OPTIONS = tuple(STYLES["vit_pytorch"])


def options(config_or_module) -> dict:
    return {name: getattr(config_or_module, name) for name in OPTIONS}


def test_the_presets_set_the_same_options():
    assert set(STYLES) == {"vit_pytorch", "timm"}
    assert set(STYLES["timm"]) == set(OPTIONS)
    # Every option tells the two apart: a preset holds nothing the other shares.
    assert all(STYLES["timm"][name] != STYLES["vit_pytorch"][name] for name in OPTIONS)


@pytest.mark.parametrize("style", [None, "vit_pytorch", "timm"])
def test_the_config_expands_style_into_its_options(style):
    config = CaiTConfig(**TINY, style=style)
    assert options(config) == STYLES[style or "vit_pytorch"]
    assert config.style == (style or "vit_pytorch")  # read back from the options
    assert "style" not in config.to_dict()  # the options are what is stored
    assert CaiTConfig(**TINY, **STYLES[style or "vit_pytorch"]).to_dict() == config.to_dict()


@pytest.mark.parametrize("style", [None, "vit_pytorch", "timm"])
def test_the_core_module_expands_style_once(style):
    module = CaiT(**TINY, style=style)
    assert options(module) == STYLES[style or "vit_pytorch"] and module.style is None
    spelled_out = CaiT(**TINY, **STYLES[style or "vit_pytorch"])
    x = jnp.asarray(images(1, 32, 32).transpose(0, 2, 3, 1))
    a, b = (m.init(jax.random.key(0), x) for m in (module, spelled_out))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    np.testing.assert_array_equal(module.apply(a, x), spelled_out.apply(b, x))
    # The module built from the config is the same module.
    assert options(CaiT(**CaiTConfig(**TINY, style=style).to_module_kwargs())) == options(module)


def test_no_layer_below_the_top_knows_the_presets():
    layers = [
        getattr(modeling_flax_cait, name)
        for name in dir(modeling_flax_cait)
        if isinstance(getattr(modeling_flax_cait, name), type)
        and dataclasses.is_dataclass(getattr(modeling_flax_cait, name))
        and getattr(modeling_flax_cait, name).__module__ == modeling_flax_cait.__name__
    ]
    assert {"CaiTStack", "LayerScaleBlock", "ClassAttentionBlock", "TalkingHeadAttention", "ClassAttention"} <= {
        cls.__name__ for cls in layers
    }
    for cls in layers:
        fields = {f.name for f in dataclasses.fields(cls)}
        if cls is not CaiT:
            assert "style" not in fields, cls.__name__


def test_options_given_one_by_one_mix_the_references():
    # timm's model with vit-pytorch's class attention (talking heads, un-normalised patches, dropout).
    mixed = dict(STYLES["timm"], cls_talking_heads=True, cls_norm_patches=False, cls_dropout=True)
    config = CaiTConfig(**TINY, **mixed)
    assert config.style is None and options(config) == mixed
    model = FlaxCaiTForImageClassification(config, _do_init=False)
    attn = model.params_shape_tree["cait"]["cls_transformer"]["blocks_0"]["attn"]
    assert attn["proj_l"]["kernel"].shape == (2, 2) and attn["proj_l"]["bias"].shape == (2,)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params_shape_tree))
    assert config.estimate_num_parameters() == count
    x = images(2, 32, 32)
    model = FlaxCaiTForImageClassification(config, seed=0)
    assert np.all(np.isfinite(model(x).logits))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(style="deit"), "style must be 'vit_pytorch'"),
        (dict(style="timm", patch_embedding="norm_linear"), "style='timm' sets patch_embedding='conv', but "),
        (
            dict(STYLES["timm"], style="vit_pytorch"),
            "style='vit_pytorch' sets .* were given \\(the options of style='timm'\\)",
        ),
        (dict(patch_embedding="linear"), "patch_embedding must be one of \\('norm_linear', 'conv'\\)"),
        (dict(weight_init="zeros"), "weight_init must be one of"),
        (dict(cls_talking_heads="yes"), "cls_talking_heads must be True or False"),
    ],
)
def test_the_config_and_the_module_refuse_the_same(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaiTConfig(**TINY, **kwargs)
    with pytest.raises(ValueError, match=match):
        CaiT(**TINY, **kwargs)


def test_assigning_a_style_sets_its_options():
    config = CaiTConfig(**TINY)
    config.style = "timm"
    assert options(config) == STYLES["timm"]
    reloaded = CaiTConfig.from_dict(CaiTConfig(**TINY).to_dict(), style="timm")  # from_pretrained(..., style=)
    assert options(reloaded) == STYLES["timm"]


@pytest.mark.parametrize("style", ["vit_pytorch", "timm"])
def test_a_checkpoint_saved_with_a_style_key_loads_the_same(style, tmp_path):
    # config.json as it was written before the options existed: "style" and none of the options.
    model = FlaxCaiTForImageClassification(CaiTConfig(**TINY, style=style), seed=0)
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if k not in OPTIONS + ("head_dropout",)}
    path.write_text(json.dumps({**data, "style": style}))
    loaded = FlaxCaiTForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.style == style and options(loaded.config) == STYLES[style]
    x = images(2, 32, 32)
    np.testing.assert_array_equal(loaded(x).logits, model(x).logits)


def test_timm_drop_rate_is_the_head_dropout():
    config = config_from_timm(Cait(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, drop_rate=0.3))
    assert config.head_dropout == pytest.approx(0.3) and config.style == "timm"
    module = CaiT(**config.to_module_kwargs())
    x = jnp.asarray(images(2, 32, 32).transpose(0, 2, 3, 1))
    params = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(module.apply(params, x), module.apply(params, x))
    a, b = (module.apply(params, x, train=True, rngs={"dropout": jax.random.key(s)}) for s in (0, 1))
    assert not np.allclose(a, b)
