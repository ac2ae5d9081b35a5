"""Every family goes back to the PyTorch library it came from: the folders ``export_timm`` and
``export_vit_pytorch`` write are loaded by timm / vit-pytorch themselves, with the same tensors and logits."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import vit_pytorch.cait
import vit_pytorch.crossformer

import hf_vit_flax
from tests.helpers import assert_parity, assert_same_state, images, randomize_, torch_logits

VIT_PYTORCH = {
    "cait": (
        vit_pytorch.cait.CaiT,
        dict(
            image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, cls_depth=1, heads=2, mlp_dim=64, dim_head=16
        ),
        (32, 32),
    ),
    "crossformer": (
        vit_pytorch.crossformer.CrossFormer,
        dict(dim=(32, 32, 64, 64), depth=(1, 1, 1, 1), num_classes=4, global_window_size=(8, 4, 2, 1)),
        (224, 224),
    ),
}

# A small timm CaiT for the command line (timm loading each family's export is test_export_timm.py's business,
# ViT and CaiT, and models/test_crossvit_export.py's).
TIMM_CAIT = ("cait_xxs24_224", dict(img_size=32, patch_size=8, depth=2, num_classes=6))


@pytest.mark.parametrize("family", VIT_PYTORCH)
def test_vit_pytorch_loads_the_export(family, tmp_path):
    cls, kwargs, size = VIT_PYTORCH[family]
    original = randomize_(cls(**kwargs), seed=1).eval()
    model = hf_vit_flax.from_vit_pytorch(original)
    hf_vit_flax.export(model, "vit-pytorch", tmp_path)
    loaded = hf_vit_flax.load_vit_pytorch(tmp_path)
    assert type(loaded) is cls
    assert_same_state(loaded, original)
    pixels = images(1, *size, seed=2)
    assert_parity(torch_logits(loaded, pixels), np.asarray(model(pixels).logits))


def test_a_family_without_a_timm_counterpart_says_so(tmp_path):
    cls, kwargs, _ = VIT_PYTORCH["crossformer"]
    model = hf_vit_flax.from_vit_pytorch(cls(**kwargs))
    with pytest.raises(NotImplementedError, match="crossformer family has no timm counterpart"):
        hf_vit_flax.export(model, "timm", tmp_path)


def test_cli_exports_to_timm_and_vit_pytorch(tmp_path, capsys):
    from hf_vit_flax.cli import main

    arch, kwargs = TIMM_CAIT
    original = randomize_(timm.create_model(arch, pretrained=False, **kwargs), seed=5).eval()
    hf_vit_flax.from_timm(original).save_pretrained(tmp_path / "saved")
    assert main(["export", str(tmp_path / "saved"), "--to", "timm", "--output-dir", str(tmp_path / "timm")]) == 0
    assert_same_state(timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True), original)
    # timm's Cait has no vit-pytorch counterpart (conv patch embedding, qkv bias ...): one error line, exit 2.
    assert main(["export", str(tmp_path / "saved"), "--to", "vit-pytorch", "--output-dir", str(tmp_path / "vp")]) == 2
    assert "vit-pytorch" in capsys.readouterr().err and not (tmp_path / "vp").exists()

    cls, vp_kwargs, _ = VIT_PYTORCH["cait"]
    torch_model = randomize_(cls(**vp_kwargs), seed=6).eval()
    hf_vit_flax.from_vit_pytorch(torch_model).save_pretrained(tmp_path / "from-vp")
    assert main(["export", str(tmp_path / "from-vp"), "--to", "vit-pytorch", "--output-dir", str(tmp_path / "vp")]) == 0
    assert_same_state(hf_vit_flax.load_vit_pytorch(tmp_path / "vp"), torch_model)


@pytest.mark.parametrize("arch", ["cait_xxs24_224", "crossvit_tiny_240", "vit_tiny_patch16_224"])
def test_a_timm_model_with_other_input_channels_converts(arch):
    """A live timm model built with in_chans=1 keeps its architecture's 3-channel mean/std in its
    pretrained_cfg; the conversion does not take statistics that do not describe its inputs."""
    kwargs = dict(in_chans=1, num_classes=3)
    kwargs.update(dict(img_size=32, patch_size=8, depth=1) if arch.startswith("cait") else {})
    kwargs.update(dict(img_size=64, depth=1) if arch.startswith("vit") else {})
    original = randomize_(timm.create_model(arch, pretrained=False, **kwargs), seed=7).eval()
    model = hf_vit_flax.from_timm(original)
    assert model.config.channels == 1 and len(model.image_processor.image_mean) == 1
    pixels = images(1, *model.config.image_size_hw, channels=1, seed=8)
    assert_parity(np.asarray(model(pixels).logits), torch_logits(original, pixels))
