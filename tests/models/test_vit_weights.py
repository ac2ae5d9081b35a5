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
