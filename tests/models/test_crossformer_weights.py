"""CrossFormer's weight tables in both directions, and its presets expanded into named options.

vit-pytorch -> flax -> vit-pytorch: the exported state dict holds the same tensors and loads strictly
into a fresh vit-pytorch model, which then computes the same logits; the original release's table
writes the fixture checkpoint back. The presets: the seed constructor's pair count becomes blocks once,
config.json files in today's layout load into the same options, an option is never silently dropped.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from vit_pytorch.crossformer import CrossFormer as TorchCrossFormer

import hf_vit_flax
from hf_vit_flax import CrossFormer, CrossFormerConfig, FlaxCrossFormerForImageClassification
from hf_vit_flax.models.crossformer.configuration_crossformer import PRESET_OPTIONS
from hf_vit_flax.models.crossformer.convert_crossformer import (
    convert_original,
    export_vit_pytorch,
    load_state_dict,
    original_table,
)
from hf_vit_flax.weight_tables import to_torch
from tests.helpers import TINY_CONFIGS, images, randomize_, torch_logits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crossformer_official"
# The tiny test config as core-module arguments (the module takes any image size its windows tile).
TINY = {k: v for k, v in TINY_CONFIGS["crossformer"].items() if k != "image_size"}
# Small, with per-stage windows and a stage of two vit-pytorch layers (four blocks).
SMALL = dict(
    dim=(32, 64, 64, 96),
    depth=(1, 2, 1, 1),
    local_window_size=(8, 4, 7, 7),
    global_window_size=(7, 7, 2, 1),
    num_classes=5,
)


def as_torch(state_dict):
    return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


def test_vit_pytorch_export_round_trip():
    reference = randomize_(TorchCrossFormer(**SMALL), seed=3)
    model = hf_vit_flax.from_vit_pytorch(reference)
    exported = export_vit_pytorch(model.module_params()["params"], model.config)
    # The same tensors, key for key.
    expected = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert set(exported) == set(expected)
    for key, value in expected.items():
        assert exported[key].shape == value.shape and exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    # A fresh vit-pytorch model takes them strictly and computes the same logits as the reference (which the
    # converted model computes: test_crossformer.py's parity test, "per-stage-windows", is this configuration).
    fresh = TorchCrossFormer(**SMALL)
    fresh.load_state_dict(as_torch(exported), strict=True)
    x = images(2, 224, 224, seed=4)
    np.testing.assert_array_equal(torch_logits(fresh.eval(), x), torch_logits(reference, x))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # vit-pytorch's Linear(dim, 0)
def test_vit_pytorch_headless_export_loads_strictly():
    reference = randomize_(TorchCrossFormer(**SMALL), seed=5)
    config = CrossFormerConfig(**{**SMALL, "num_classes": 0})
    model = hf_vit_flax.from_vit_pytorch(reference.state_dict(), config=config)
    exported = export_vit_pytorch(model.module_params()["params"], config)
    assert exported["to_logits.1.weight"].shape == (0, 96)
    TorchCrossFormer(**{**SMALL, "num_classes": 0}).load_state_dict(as_torch(exported), strict=True)


@pytest.mark.parametrize(
    "changes, names",
    [
        (dict(style="original"), ["qkv_bias", "position_bias_per_head", "final_norm", "whole_map_group"]),
        (dict(final_norm=True), ["final_norm"]),
        (dict(heads=(2, 2, 2, 3)), ["heads[0]=2, dim_head[0]=16"]),
        (dict(mlp_ratio=2.0), ["mlp_ratio"]),
    ],
)
def test_export_refuses_options_vit_pytorch_lacks(changes, names):
    config = CrossFormerConfig(**{**SMALL, **changes})
    model = FlaxCrossFormerForImageClassification(config, _do_init=False)
    params = model.module_params(model.params_shape_tree)["params"]
    with pytest.raises(ValueError, match="vit-pytorch's CrossFormer has no") as raised:
        export_vit_pytorch(params, config)
    for name in names:
        assert name in str(raised.value)


def test_original_table_writes_the_checkpoint_back():
    config = CrossFormerConfig.from_original(json.loads((FIXTURES / "crossformer_tiny_random_config.json").read_text()))
    state_dict = load_state_dict(FIXTURES / "crossformer_tiny_random.pth")
    written = to_torch(convert_original(state_dict, config), original_table(config))
    learned = {k: v for k, v in state_dict.items() if not k.endswith(("attn.biases", "attn.relative_position_index"))}
    assert set(written) == set(learned)
    for key, value in learned.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


# -- presets ------------------------------------------------------------------------------------------


def test_the_seed_constructor_expands_its_preset_once():
    seed = CrossFormer(num_classes=10, dim=(64, 128, 256, 512), depth=(2, 2, 8, 2), local_window_size=7)
    # vit-pytorch's pairs are blocks now; the fields hold every option, no preset.
    assert seed.depth == (4, 4, 16, 4) and seed.style is None
    assert (seed.heads, seed.dim_head) == ((2, 4, 8, 16), (32, 32, 32, 32))
    assert (seed.qkv_bias, seed.final_norm, seed.position_bias_per_head, seed.position_bias_reduction) == (
        False,
        False,
        False,
        4,
    )
    # Building from those fields (as flax does when it clones a module) expands nothing again.
    assert seed.clone().depth == (4, 4, 16, 4)
    # The config expands the same preset into the same options.
    config = CrossFormerConfig(num_classes=10, depth=(2, 2, 8, 2))
    assert CrossFormer(**config.to_module_kwargs()) == seed
    assert config.depth == [2, 2, 8, 2] and config.num_layers() == 28  # the config holds what it was given


def test_without_a_preset_every_option_is_given():
    expanded = CrossFormer(**TINY)
    assert expanded.depth == (2, 2, 2, 2) and expanded.style is None
    explicit = {f: getattr(expanded, f) for f in TINY} | {"heads": expanded.heads, "style": None}
    assert CrossFormer(**{**explicit, **{f: getattr(expanded, f) for f in PRESET_OPTIONS}}) == expanded
    with pytest.raises(ValueError, match="qkv_bias is None: without a preset"):
        CrossFormer(**explicit)
    with pytest.raises(ValueError, match="heads and dim_head are both given"):
        CrossFormer(**{**TINY, "style": None})
    with pytest.raises(ValueError, match="style must be one of"):
        CrossFormer(style="timm")


def test_a_config_json_of_the_earlier_layout_loads_into_the_same_options(tmp_path):
    # What CrossFormerConfig wrote before the named options: a style and vit-pytorch's pair count.
    earlier = {
        "model_type": "crossformer_flax",
        "style": "vit_pytorch",
        "image_size": 32,
        "dim": [16, 16, 32, 32],
        "depth": [1, 2, 1, 1],
        "global_window_size": [2, 2, 1, 1],
        "local_window_size": [2, 2, 2, 1],
        "cross_embed_kernel_sizes": [[4, 8], [2, 4], [2, 4], [2, 4]],
        "cross_embed_strides": [4, 2, 2, 2],
        "attn_dropout": 0.0,
        "ff_dropout": 0.1,
        "channels": 3,
        "heads": None,
        "dim_head": 8,
        "mlp_ratio": 4.0,
        "qkv_bias": None,
        "drop_path_rate": 0.0,
        "layer_norm_eps": 1e-05,
        "num_labels": 3,
    }
    (tmp_path / "config.json").write_text(json.dumps(earlier))
    config = CrossFormerConfig.from_pretrained(tmp_path)
    kwargs = config.to_module_kwargs()
    assert kwargs["depth"] == (2, 4, 2, 2) and kwargs["style"] is None
    assert (kwargs["proj_dropout"], kwargs["embed_dropout"]) == (0.0, 0.0)  # vit-pytorch drops in the FF only
    assert CrossFormer(**kwargs) == CrossFormer(**{k: v for k, v in earlier.items() if k in SEED_NAMES}, num_classes=3)
    original = CrossFormerConfig(**{**TINY_CONFIGS["crossformer"], "style": "original", "ff_dropout": 0.1})
    assert (original.to_module_kwargs()["proj_dropout"], original.to_module_kwargs()["embed_dropout"]) == (0.1, 0.1)


SEED_NAMES = {
    "dim",
    "depth",
    "global_window_size",
    "local_window_size",
    "cross_embed_kernel_sizes",
    "cross_embed_strides",
    "attn_dropout",
    "ff_dropout",
    "channels",
    "dim_head",
}


@pytest.mark.parametrize(
    "changes",
    [
        dict(final_norm=True, qkv_bias=True),
        dict(stem_norm=True, position_bias_per_head=True, position_bias_reduction=8),
        dict(style="original", merge_norm=False, position_bias_wide_table=True, final_norm=False),
    ],
    ids=str,
)
def test_named_options_combine_freely(changes):
    # Each option acts on its own: the closed-form count follows the built model for mixed options.
    config = CrossFormerConfig(**{**TINY_CONFIGS["crossformer"], **changes})
    model = FlaxCrossFormerForImageClassification(config, _do_init=False)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params_shape_tree))
    assert count == config.estimate_num_parameters()
    out = jax.eval_shape(lambda p, x: model(x, params=p).logits, model.params_shape_tree, jnp.zeros((1, 3, 32, 32)))
    assert out.shape == (1, 3)
