"""Export to timm: a folder in timm's Hub format that ``timm.create_model("local-dir:...", pretrained=True)``
loads into the same model, with the same tensors and logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import timm
import vit_pytorch

import hf_vit_flax
from tests.helpers import assert_parity, images, randomize_, timm_export_loaded, torch_logits

CASES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=2)),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=48, depth=2)),
    "clip-eps-1e-5-pre-norm": ("vit_base_patch16_clip_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=2)),
    "map-pool": ("vit_base_patch16_siglip_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=5)),
    "deit3-layer-scale": ("deit3_small_patch16_224", dict(img_size=32, depth=2, num_classes=7)),
    "cait": ("cait_xxs24_224", dict(img_size=32, patch_size=8, depth=2, num_classes=6)),
}


@pytest.mark.parametrize("case", CASES)
def test_timm_loads_the_export(case, tmp_path):
    arch, kwargs = CASES[case]
    _, model, loaded = timm_export_loaded(arch, kwargs, tmp_path, seed=2)
    pixels = images(2, *model.config.image_size_hw, seed=3)
    assert_parity(torch_logits(loaded, pixels), np.asarray(model(pixels).logits))
    # The preprocessing travels too: timm's data config is the model's image processor.
    cfg = loaded.pretrained_cfg
    assert list(cfg["mean"]) == pytest.approx(list(model.image_processor.image_mean))
    assert tuple(cfg["input_size"]) == (3, *model.config.image_size_hw)


def test_labels_travel_and_a_reexport_replaces_the_folder(tmp_path):
    original = randomize_(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)
    )
    model = hf_vit_flax.from_timm(original)
    model.config.id2label = {0: "cat", 1: "dog", 2: "bird"}
    hf_vit_flax.export(model, "timm", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["label_names"] == ["cat", "dog", "bird"]
    model.params = jax_tree_scaled(model.params, 2.0)
    with pytest.raises(FileExistsError, match="not empty"):
        hf_vit_flax.export(model, "timm", tmp_path)
    hf_vit_flax.export(model, "timm", tmp_path, overwrite=True)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    np.testing.assert_allclose(
        loaded.head.weight.detach().numpy(), 2.0 * original.head.weight.detach().numpy(), rtol=1e-6
    )
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def jax_tree_scaled(params, factor):
    import jax

    return jax.tree.map(lambda x: x * factor, params)


def test_what_timm_cannot_express_is_named(tmp_path):
    kwargs = dict(image_size=32, patch_size=8, num_classes=4, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
    model = hf_vit_flax.from_vit_pytorch(vit_pytorch.vit.ViT(**kwargs))
    with pytest.raises(NotImplementedError, match="patch LayerNorm -> Linear -> LayerNorm"):
        hf_vit_flax.export(model, "timm", tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
