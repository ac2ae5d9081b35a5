"""ViT's weight maps run both ways: vit-pytorch and timm state dicts -> ours -> back, loaded by the PyTorch
library itself (``load_state_dict(strict=True)``): the same tensors and the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vit_pytorch

import hf_vit_flax
from hf_vit_flax.conversion_utils import to_numpy
from hf_vit_flax.models.vit.convert_vit import export_timm, export_vit_pytorch
from tests.helpers import assert_parity, images, randomize_, torch_logits
from tests.models.test_vit import PARITY_CONFIGS
from tests.models.test_vit_timm import FEATURES, build, input_images


def assert_same_tensors(exported: dict, original: dict) -> None:
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("name", ["square-cls", "mean-pool", "single-head-no-proj"])
def test_vit_pytorch_round_trip(name):
    kwargs = PARITY_CONFIGS[name]
    original = randomize_(vit_pytorch.vit.ViT(**kwargs), seed=3)
    model = hf_vit_flax.from_vit_pytorch(original)
    exported = export_vit_pytorch(model.module_params()["params"], model.config)
    assert_same_tensors(exported, to_numpy(original.state_dict()))

    fresh = vit_pytorch.vit.ViT(**kwargs).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    pixels = images(2, *model.config.image_size_hw, channels=model.config.channels, seed=1)
    assert_parity(torch_logits(fresh, pixels), torch_logits(original, pixels), atol=0)


@pytest.mark.parametrize(
    "case",
    [
        "no-embed-class-layerscale-deit3",
        "distilled-head",
        "clip-pre-norm-eps-1e-5",
        "map-attention-pooling",
        "register-tokens",
    ],
)
def test_timm_round_trip(case):
    arch, kwargs, _ = FEATURES[case]
    original = build(arch, kwargs, seed=4)
    model = hf_vit_flax.from_timm(original)
    exported = export_timm(model.module_params()["params"], model.config)
    assert_same_tensors(exported, to_numpy(original.state_dict()))

    fresh = build(arch, kwargs, seed=5).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    pixels = input_images(original)
    assert_parity(torch_logits(fresh, pixels), torch_logits(original, pixels), atol=0)
    ours = np.asarray(model(pixels).logits)
    assert_parity(ours, torch_logits(fresh, pixels))


def test_export_names_parameters_the_table_does_not_know():
    model = hf_vit_flax.from_vit_pytorch(randomize_(vit_pytorch.vit.ViT(**PARITY_CONFIGS["square-cls"])))
    params = model.module_params()["params"]
    params = {**params, "extra": {"kernel": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match="extra/kernel"):
        export_vit_pytorch(params, model.config)


@pytest.mark.parametrize("name", ["rect-image-and-patch", "mean-pool"])
def test_vit_pytorch_folder_round_trip(name, tmp_path):
    kwargs = PARITY_CONFIGS[name]
    original = randomize_(vit_pytorch.vit.ViT(**kwargs), seed=6).eval()
    model = hf_vit_flax.from_vit_pytorch(original, config=hf_vit_flax.ViTConfig(**kwargs))
    hf_vit_flax.export(model, "vit-pytorch", tmp_path)
    loaded = hf_vit_flax.load_vit_pytorch(tmp_path)
    assert type(loaded) is vit_pytorch.vit.ViT
    pixels = images(2, *model.config.image_size_hw, seed=2)
    assert_parity(torch_logits(loaded, pixels), torch_logits(original, pixels), atol=0)
    assert_parity(np.asarray(model(pixels).logits), torch_logits(loaded, pixels))


def test_vit_pytorch_export_names_timm_options(tmp_path):
    config = hf_vit_flax.ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64, num_classes=3)
    model = hf_vit_flax.FlaxViTForImageClassification(config)
    model.config.qkv_bias = True
    with pytest.raises(NotImplementedError, match="qkv_bias=True"):
        hf_vit_flax.export(model, "vit-pytorch", tmp_path)


def test_image_size_the_module_cannot_tell():
    kwargs = PARITY_CONFIGS["rect-image-and-patch"]  # 32x48 in 8x12 patches: a 4x4 grid, as 48x36 would be
    original = randomize_(vit_pytorch.vit.ViT(**kwargs), seed=7).eval()
    model = hf_vit_flax.from_vit_pytorch(original, image_size=(32, 48))
    assert model.config.image_size_hw == (32, 48)
    pixels = images(2, 32, 48, seed=3)
    assert_parity(np.asarray(model(pixels).logits), torch_logits(original, pixels))
    with pytest.raises(ValueError, match="gives 6 patches"):
        hf_vit_flax.from_vit_pytorch(original, image_size=(24, 24))
