"""ViT: parity with vit-pytorch's ViT, the HF wrappers."""

import jax.numpy as jnp
import numpy as np
import pytest
import vit_pytorch

import hf_vit_flax
from hf_vit_flax import FlaxViTForImageClassification, ViT, ViTConfig
from tests.helpers import (
    assert_parity,
    images,
    randomize_,
    torch_logits,
)

PARITY_CONFIGS = {
    "square-cls": dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16),
    "rect-image-and-patch": dict(
        image_size=(32, 48), patch_size=(8, 12), num_classes=7, dim=48, depth=2, heads=3, mlp_dim=96, dim_head=24
    ),
    "mean-pool": dict(
        image_size=32, patch_size=8, num_classes=5, dim=64, depth=2, heads=2, mlp_dim=64, pool="mean", dim_head=32
    ),
    "one-channel": dict(image_size=24, patch_size=4, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=64, channels=1),
    "single-head-no-proj": dict(
        image_size=16, patch_size=4, num_classes=4, dim=32, depth=2, heads=1, mlp_dim=64, dim_head=32
    ),
    "dim-head-not-64": dict(
        image_size=32, patch_size=16, num_classes=6, dim=40, depth=3, heads=5, mlp_dim=80, dim_head=8
    ),
}


def reference(kwargs, seed=0):
    return randomize_(vit_pytorch.vit.ViT(**kwargs), seed)


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_parity_with_vit_pytorch(name):
    kwargs = PARITY_CONFIGS[name]
    torch_model = reference(kwargs)
    height, width = kwargs["image_size"] if isinstance(kwargs["image_size"], tuple) else (kwargs["image_size"],) * 2
    x = images(2, height, width, kwargs.get("channels", 3))
    expected = torch_logits(torch_model, x)

    config = ViTConfig(**kwargs) if isinstance(kwargs["image_size"], tuple) else None
    model = hf_vit_flax.from_vit_pytorch(torch_model, config=config)
    assert isinstance(model, FlaxViTForImageClassification)
    assert_parity(model(x).logits, expected)

    # The core module holds the same parameters and computes the same function (NHWC in).
    module = ViT(**kwargs)
    logits = module.apply(model.module_params(), jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert_parity(logits, expected)


def test_headless_returns_normed_tokens_like_vit_pytorch():
    # The base model's tokens are what vit-pytorch's headless ViT returns (test_family_contract: the conversion).
    torch_model = reference(dict(PARITY_CONFIGS["square-cls"], num_classes=0), seed=2)
    x = images(2, 32, 32)
    expected = torch_logits(torch_model, x)
    assert expected.shape == (2, 17, 64)
    np.testing.assert_allclose(hf_vit_flax.from_vit_pytorch(torch_model)(x).last_hidden_state, expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30, patch_size=8), "not divisible"),
        (dict(image_size=(32, 30), patch_size=(8, 8)), "not divisible"),
        (dict(pool="max"), "pool must be"),
        (dict(heads=0), "heads must be a positive"),
        (dict(dropout=1.5), "dropout must be"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)
