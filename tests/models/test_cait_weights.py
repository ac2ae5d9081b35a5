"""CaiT weights out again: vit-pytorch and timm state dicts -> Flax -> the same state dicts, through one table.

Each reference model (random weights) is converted to Flax, exported back with ``export_vit_pytorch`` /
``export_timm``, and loaded with ``load_state_dict(..., strict=True)`` into a freshly built PyTorch model:
every tensor comes back bit for bit, and the reloaded model gives the original's logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from flax.traverse_util import flatten_dict
from timm.models.cait import Cait
from vit_pytorch import cait as vit_pytorch

import hf_vit_flax
from hf_vit_flax import CaiTConfig, FlaxCaiTForImageClassification, FlaxCaiTModel
from hf_vit_flax.models.cait.convert_cait import (
    config_from_timm,
    convert_timm,
    export_timm,
    export_vit_pytorch,
    timm_table,
    vit_pytorch_table,
)
from tests.helpers import CAIT_SMALL, assert_parity, images, randomize_, torch_logits

VIT_PYTORCH = {
    "small": CAIT_SMALL,
    "headless": dict(
        image_size=16, patch_size=4, num_classes=0, dim=24, depth=2, cls_depth=1, heads=3, mlp_dim=32, dim_head=8
    ),
}

TIMM = {
    # cait_xxs24_224's blocks, cut down to 2 + 2 layers of width 32 on 32x32 images.
    "cait_xxs24_224-small": lambda: timm.create_model(
        "cait_xxs24_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        depth_token_only=2,
        num_heads=2,
        num_classes=10,
    ),
    "rect-no-qkv-bias-one-channel": lambda: Cait(
        img_size=(32, 48),
        patch_size=8,
        in_chans=1,
        embed_dim=24,
        depth=2,
        num_heads=3,
        num_classes=5,
        qkv_bias=False,
        mlp_ratio=2.0,
        mlp_ratio_token_only=3.0,
        depth_token_only=1,
    ),
    "headless": lambda: Cait(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=0),
}


def numpy_state_dict(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_same_state_dict(exported: dict, original: dict) -> None:
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)  # bit for bit


def load_strict(fresh, state_dict: dict):
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    return fresh.eval()


def reference_output(module, x: np.ndarray) -> np.ndarray:
    """Logits, or for a headless model the class token's features (what the head would read)."""
    with torch.inference_mode():
        if getattr(module, "mlp_head", None) is not None and module.mlp_head[1].out_features == 0:
            ref = module  # vit-pytorch's head LayerNorm on the class-attention output
            patches = ref.patch_transformer(ref.to_patch_embedding(torch.from_numpy(x)) + ref.pos_embedding)
            cls = ref.cls_transformer(ref.cls_token.expand(x.shape[0], -1, -1), context=patches)
            return ref.mlp_head[0](cls[:, 0]).numpy()
    return torch_logits(module, x)


@pytest.mark.parametrize("name", VIT_PYTORCH)
def test_vit_pytorch_weights_go_out_as_they_came_in(name):
    kwargs = VIT_PYTORCH[name]
    original = randomize_(vit_pytorch.CaiT(**kwargs), seed=3)
    model = hf_vit_flax.from_vit_pytorch(original)
    exported = export_vit_pytorch(model.module_params()["params"], model.config)
    assert_same_state_dict(exported, numpy_state_dict(original))

    reloaded = load_strict(vit_pytorch.CaiT(**kwargs), exported)
    x = images(2, kwargs["image_size"], kwargs["image_size"], seed=4)
    np.testing.assert_array_equal(reference_output(reloaded, x), reference_output(original, x))
    ours = model(x).logits if kwargs["num_classes"] else model(x).pooler_output
    assert_parity(ours, reference_output(original, x))


@pytest.mark.parametrize("name", TIMM)
def test_timm_weights_go_out_as_they_came_in(name):
    original = randomize_(TIMM[name](), seed=5)
    config = config_from_timm(original)
    model_class = FlaxCaiTForImageClassification if config.num_labels else FlaxCaiTModel
    model = model_class.from_params(config, convert_timm(numpy_state_dict(original), config))
    exported = export_timm(model.module_params()["params"], config)
    assert_same_state_dict(exported, numpy_state_dict(original))

    fresh = TIMM[name]()
    reloaded = load_strict(fresh, exported)
    height, width = config.image_size_hw
    x = images(2, height, width, config.channels, seed=6)
    np.testing.assert_array_equal(torch_logits(reloaded, x), torch_logits(original, x))
    ours = model(x).logits if config.num_labels else model(x).pooler_output  # timm's headless output
    assert_parity(ours, torch_logits(original, x))


def test_export_takes_the_core_params_in_either_wrapping():
    original = randomize_(vit_pytorch.CaiT(**VIT_PYTORCH["small"]), seed=1)
    model = hf_vit_flax.from_vit_pytorch(original)
    wrapped, bare = model.module_params(), model.module_params()["params"]
    a, b = export_vit_pytorch(wrapped, model.config), export_vit_pytorch(bare, model.config)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_each_table_names_every_parameter_once():
    for config in (
        CaiTConfig(**VIT_PYTORCH["small"]),
        CaiTConfig(**VIT_PYTORCH["small"], style="timm", qkv_bias=True),
    ):
        table = (timm_table if config.style == "timm" else vit_pytorch_table)(config)
        model = FlaxCaiTForImageClassification(config, _do_init=False)
        expected = {"/".join(k) for k in flatten_dict(model.module_params(model.params_shape_tree)["params"])}
        assert sorted(e.flax for e in table) == sorted(expected)
        assert len({e.torch for e in table}) == len(table)


def test_a_table_refuses_a_config_of_the_other_reference():
    timm_config = CaiTConfig(**VIT_PYTORCH["small"], style="timm")
    with pytest.raises(ValueError, match="a vit-pytorch CaiT is a CaiT with the options of style='vit_pytorch'"):
        vit_pytorch_table(timm_config)
    with pytest.raises(ValueError, match="patch_embedding='norm_linear'.*use CaiTConfig\\(style='timm'"):
        timm_table(CaiTConfig(**VIT_PYTORCH["small"]))
    # vit-pytorch's CaiT has no query/key/value biases.
    with pytest.raises(ValueError, match="qkv_bias=True"):
        export_vit_pytorch({}, CaiTConfig(**VIT_PYTORCH["small"], qkv_bias=True))


def test_the_exported_weights_carry_the_flax_training():
    # Weights changed on the Flax side (e.g. by fine-tuning) come out where timm reads them.
    original = randomize_(TIMM["cait_xxs24_224-small"](), seed=7)
    config = config_from_timm(original)
    params = convert_timm(numpy_state_dict(original), config)
    value = params["cls_transformer"]["blocks_1"]["attn"]["v"]
    value["kernel"] = value["kernel"][:, ::-1]  # a change made on the Flax side
    model = FlaxCaiTForImageClassification.from_params(config, params)
    reloaded = load_strict(TIMM["cait_xxs24_224-small"](), export_timm(params, config))
    x = images(2, 32, 32, seed=8)
    assert_parity(model(x).logits, torch_logits(reloaded, x))
    assert not np.allclose(torch_logits(reloaded, x), torch_logits(original, x), atol=1e-3)
