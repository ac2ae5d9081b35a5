"""``interpolate_pos_encoding=True``: the ViT family at resolutions other than the trained one, with
transformers' interpolation (PyTorch's bicubic, ``align_corners=False``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_vit_flax
from hf_vit_flax.layers import interpolate_pos_embedding

SMALL = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64, num_classes=5)


@pytest.mark.parametrize("grid", [(6, 6), (3, 5), (2, 2), (4, 4)])
def test_interpolation_is_torch_bicubic(grid):
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((2 + 16, 8)).astype(np.float32)  # class + distillation token, a 4x4 grid
    ours = np.asarray(interpolate_pos_embedding(jnp.asarray(pos), grid, num_prefix_tokens=2))
    patches = torch.from_numpy(pos[2:]).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    reference = torch.nn.functional.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(ours[2:], reference.permute(0, 2, 3, 1).reshape(-1, 8).numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours[:2], pos[:2])


def test_trained_size_is_unchanged_and_other_sizes_run():
    model = hf_vit_flax.FlaxViTForImageClassification(hf_vit_flax.ViTConfig(**SMALL, patch_embedding="conv"))
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(model(pixels, interpolate_pos_encoding=True).logits), np.asarray(model(pixels).logits)
    )
    larger = np.random.default_rng(2).standard_normal((2, 3, 48, 40)).astype(np.float32)
    assert model(larger, interpolate_pos_encoding=True).logits.shape == (2, 5)
    with pytest.raises(ValueError, match="configured for 32x32"):
        model(larger)


def test_families_without_interpolation_say_so():
    config = hf_vit_flax.CaiTConfig(image_size=32, patch_size=8, dim=32, depth=1, cls_depth=1, heads=2, mlp_dim=64)
    model = hf_vit_flax.FlaxCaiTModel(config)
    with pytest.raises(ValueError, match="does not take interpolate_pos_encoding"):
        model(np.zeros((1, 3, 32, 32), np.float32), interpolate_pos_encoding=True)


@pytest.mark.parametrize("class_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
@pytest.mark.parametrize("size", [(48, 48), (24, 40)])
def test_matches_transformers_at_another_resolution(class_name, size):
    """transformers' PyTorch ViT / DeiT with ``interpolate_pos_encoding=True`` at a size other than the
    trained 32x32 (a 4x4 grid of 8x8 patches): the same logits within 1e-4."""
    transformers = pytest.importorskip("transformers")
    from tests.helpers import assert_parity, images, randomize_

    config_class = transformers.DeiTConfig if class_name.startswith("DeiT") else transformers.ViTConfig
    config = config_class(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=8
    )
    reference = randomize_(getattr(transformers, class_name)(config), seed=3).eval()
    model = hf_vit_flax.from_transformers(reference)
    pixels = images(2, *size, seed=4)
    with torch.inference_mode():
        expected = reference(pixel_values=torch.from_numpy(pixels), interpolate_pos_encoding=True).logits.numpy()
    got = np.asarray(model(pixels, interpolate_pos_encoding=True).logits)
    assert_parity(got, expected, atol=1e-4)
