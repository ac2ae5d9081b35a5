"""CrossViT goes back to PyTorch: the folders ``hf_vit_flax.export(model, "timm" | "vit-pytorch", ...)`` writes are
loaded by timm (``timm.create_model("local-dir:...", pretrained=True)``) and vit-pytorch themselves, with the
same tensors bit for bit and the same logits; what a library cannot express is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
from vit_pytorch.cross_vit import CrossViT as ReferenceCrossViT

import hf_vit_flax
from hf_vit_flax import CrossViTConfig
from hf_vit_flax.conversion_utils import to_numpy
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.models.crossvit import convert_crossvit
from hf_vit_flax.models.crossvit.convert_crossvit import timm_architecture, vit_pytorch_kwargs
from tests.helpers import (
    CROSSVIT_DIFFERENT_WIDTHS,
    assert_parity,
    assert_same_state,
    crossvit_config,
    images,
    randomize_,
    timm_export_loaded,
    torch_logits,
)

TIMM = {
    # timm's registered layout (one un-nested fusion block per branch) and its 240 -> 224 second branch, at 120.
    "tiny-240": ("crossvit_tiny_240", dict(img_size=120, depth=((1, 1, 0), (1, 1, 0)), num_classes=5)),
    # The dagger stems, two nested fusion blocks, avg pooling.
    "dagger-nested-fusion-avg": (
        "crossvit_9_dagger_240",
        dict(img_size=120, depth=((1, 1, 2),), num_classes=4, global_pool="avg"),
    ),
    # A (height, width) image, the large branch centre-cropped to 3/4, no qkv bias, no heads.
    "non-square-crop-scale-headless": (
        "crossvit_tiny_240",
        dict(
            img_size=(64, 128),
            img_scale=(1.0, 0.75),
            patch_size=(8, 16),
            embed_dim=(24, 48),
            num_heads=(2, 4),
            depth=((1, 2, 0),),
            mlp_ratio=(2, 3, 1),
            crop_scale=True,
            qkv_bias=False,
            num_classes=0,
        ),
    ),
}

VIT_PYTORCH = {
    "different-widths": CROSSVIT_DIFFERENT_WIDTHS,
    # Equal widths (no projections), no heads: vit-pytorch keeps a LayerNorm and an empty Linear per branch.
    "equal-widths-headless": dict(
        CROSSVIT_DIFFERENT_WIDTHS, num_classes=0, lg_dim=16, depth=1, sm_enc_depth=2, lg_enc_depth=1, cross_attn_depth=1
    ),
}

# A small CrossViT with timm's options, and one with vit-pytorch's (TIMM_CONFIG's sizes).
TIMM_CONFIG = crossvit_config(
    dict(style="timm", image_size=48, num_classes=3, depth=1, cross_attn_depth=1, qkv_bias=True, layer_norm_eps=1e-6),
    sm=dict(dim=24, patch_size=12, enc_depth=1, enc_heads=2, enc_dim_head=12, enc_mlp_dim=48),
    lg=dict(dim=48, patch_size=16, enc_depth=1, enc_heads=4, enc_dim_head=12, enc_mlp_dim=96),
)
VIT_PYTORCH_CONFIG = dict(
    TIMM_CONFIG, style="vit_pytorch", qkv_bias=False, layer_norm_eps=1e-5, cross_attn_heads=2, cross_attn_dim_head=8
)


def outputs(model, pixels: np.ndarray) -> np.ndarray:
    """The logits, or without heads the pooled features (what timm's CrossVit returns without a head)."""
    out = model(pixels)
    return np.asarray(out.logits if model.config.num_labels else out.pooler_output)


def test_the_crossvit_family_exports_both_ways():
    family = FAMILIES["crossvit"]
    assert family.export_timm is convert_crossvit.export_timm
    assert family.export_vit_pytorch is convert_crossvit.export_vit_pytorch
    assert family.timm_architecture is timm_architecture
    assert family.vit_pytorch_kwargs is vit_pytorch_kwargs


# -- timm -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM)
def test_timm_loads_the_export(name, tmp_path):
    arch, kwargs = TIMM[name]
    original, model, loaded = timm_export_loaded(arch, kwargs, tmp_path, seed=3)
    assert loaded.img_size_scaled == original.img_size_scaled
    assert all(a.eps == b.eps == 1e-6 for a, b in zip(loaded.norm, original.norm, strict=True))
    pixels = images(2, *model.config.image_size_hw, seed=4)
    assert_parity(torch_logits(loaded, pixels), outputs(model, pixels))
    # hf_vit_flax reads its own export back to the same model.
    again = hf_vit_flax.from_timm(tmp_path)
    assert again.config.to_dict() == model.config.to_dict()
    np.testing.assert_array_equal(outputs(again, pixels), outputs(model, pixels))


def test_a_single_nested_fusion_block_is_exported_in_timms_registered_layout(tmp_path):
    # timm builds one fusion block per branch on its own (depth[-1] == 0) or in a Sequential (== 1); the model
    # is the same, and the export uses the registered models' layout.
    arch, kwargs = TIMM["tiny-240"]
    original = randomize_(timm.create_model(arch, pretrained=False, **{**kwargs, "depth": ((1, 1, 1),)}), seed=5)
    model = hf_vit_flax.from_timm(original)
    hf_vit_flax.export(model, "timm", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_args"]["depth"] == [[1, 1, 0]]
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    want = {
        k.replace(".fusion.0.0.", ".fusion.0.").replace(".fusion.1.0.", ".fusion.1."): v
        for k, v in to_numpy(original.state_dict()).items()
    }
    got = to_numpy(loaded.state_dict())
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    pixels = images(1, 120, 120, seed=6)
    np.testing.assert_array_equal(torch_logits(loaded, pixels), torch_logits(original.eval(), pixels))


def test_timm_architecture_writes_the_config_options():
    config = CrossViTConfig(
        **{**TIMM_CONFIG, "image_size": (48, 96), "lg_image_size": (32, 64), "depth": 2, "lg_enc_depth": 2},
        dropout=0.1,
        emb_dropout=0.2,
        drop_path_rate=0.25,  # exact in float32, in which timm spreads it over the blocks
        channels=1,
    )
    architecture, args = timm_architecture(config)
    assert architecture == "crossvit_9_240"
    assert args["img_size"] == [48, 96] and args["in_chans"] == 1
    assert [int(side * args["img_scale"][1]) for side in (48, 96)] == [32, 64]
    assert args["depth"] == [[1, 2, 0], [1, 2, 0]] and args["mlp_ratio"] == [2.0, 2.0, 1.0]
    assert (args["proj_drop_rate"], args["attn_drop_rate"], args["pos_drop_rate"]) == (0.1, 0.1, 0.2)
    model = timm.create_model(architecture, pretrained=False, **json.loads(json.dumps(args)))
    assert model.patch_embed[0].proj.in_channels == 1
    # timm builds what the config says (its preprocessing, the architecture's RGB pretrained_cfg, aside).
    model.pretrained_cfg = {}
    assert convert_crossvit.config_from_timm(model).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(VIT_PYTORCH_CONFIG), r"timm CrossVit: patch_embedding='norm_linear' \(timm's: 'conv'\).*fusion="),
        (dict(layer_norm_eps=1e-5), "layer_norm_eps=1e-05 .*eps 1e-6"),
        (dict(sm_enc_depth=0), "sm_enc_depth=0 .*at least one block per branch"),
        (dict(image_size=(48, 96), lg_image_size=(32, 48)), r"lg_image_size=\[32, 48\].*no single scale"),
        (dict(sm_dim=7, sm_enc_heads=1, sm_enc_dim_head=7, sm_enc_mlp_dim=61), "sm_enc_mlp_dim=61, which is no ratio"),
    ],
    ids=["vit-pytorch-options", "eps", "empty-branch", "two-scales", "mlp-ratio"],
)
def test_what_timm_cannot_express_is_refused(changes, match):
    with pytest.raises(NotImplementedError, match=match):
        timm_architecture(CrossViTConfig(**{**TIMM_CONFIG, **changes}))


def test_export_timm_refuses_a_vit_pytorch_crossvit(tmp_path):
    model = hf_vit_flax.from_vit_pytorch(ReferenceCrossViT(**CROSSVIT_DIFFERENT_WIDTHS))
    with pytest.raises(NotImplementedError, match="cannot be written as a timm CrossVit: patch_embedding="):
        hf_vit_flax.export(model, "timm", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- vit-pytorch ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VIT_PYTORCH)
def test_vit_pytorch_loads_the_export(name, tmp_path):
    kwargs = VIT_PYTORCH[name]
    original = randomize_(ReferenceCrossViT(**kwargs), seed=1).eval()
    model = hf_vit_flax.from_vit_pytorch(original)
    hf_vit_flax.export(model, "vit-pytorch", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["kwargs"] == {**vit_pytorch_defaults(), **kwargs}
    loaded = hf_vit_flax.load_vit_pytorch(tmp_path)
    assert type(loaded) is ReferenceCrossViT
    # Without classes, vit-pytorch's head LayerNorms feed Linear layers with no outputs: they compute nothing,
    # are not converted, and are exported as identities.
    unused = ("sm_mlp_head.0.", "lg_mlp_head.0.") if not kwargs["num_classes"] else ()
    assert_same_state(loaded, original, unused)
    pixels = images(2, 32, 32, seed=2)
    if kwargs["num_classes"]:
        assert_parity(torch_logits(loaded, pixels), outputs(model, pixels))
    np.testing.assert_array_equal(torch_logits(loaded, pixels), torch_logits(original, pixels))


def vit_pytorch_defaults() -> dict:
    """vit-pytorch's keyword defaults, which the export writes out in full."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(ReferenceCrossViT).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_a_crossvit_used_on_non_square_images(tmp_path):
    # vit-pytorch's CrossViT takes one int image_size, which only sets each branch's number of patches: one built
    # with 64 (8x8 and 4x4 patches) takes 32x128 images (4x16 and 2x8) as they are.
    kwargs = dict(CROSSVIT_DIFFERENT_WIDTHS, image_size=64)
    original = randomize_(ReferenceCrossViT(**kwargs), seed=7).eval()
    assert hf_vit_flax.from_vit_pytorch(original).config.image_size == 64
    model = hf_vit_flax.from_vit_pytorch(original, image_size=(32, 128))
    assert model.config.image_size_hw == (32, 128)
    pixels = images(2, 32, 128, seed=8)
    assert_parity(outputs(model, pixels), torch_logits(original, pixels))
    with pytest.raises(ValueError, match=r"image_size=\(32, 96\) gives .* position embeddings for 64"):
        hf_vit_flax.from_vit_pytorch(original, image_size=(32, 96))
    # The way back writes the square with the same patch counts; the module takes the same images.
    hf_vit_flax.export(model, "vit-pytorch", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["kwargs"]["image_size"] == 64
    loaded = hf_vit_flax.load_vit_pytorch(tmp_path)
    assert_same_state(loaded, original)
    np.testing.assert_array_equal(torch_logits(loaded, pixels), torch_logits(original, pixels))


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            dict(TIMM_CONFIG, cross_attn_heads=None, cross_attn_dim_head=None),
            r"vit-pytorch CrossViT: patch_embedding='conv' \(vit_pytorch's: 'norm_linear'\)",
        ),
        (dict(qkv_bias=True), "qkv_bias"),
        (dict(global_pool="avg"), "global_pool='avg'"),
        (dict(layer_norm_eps=1e-6), "layer_norm_eps=1e-06"),
        (dict(lg_image_size=32), "per-branch image sizes"),
        (dict(crop_scale=True), "crop_scale"),
        (dict(image_size=(48, 96)), r"image_size=\[48, 96\]: vit-pytorch takes one int image_size"),
    ],
    ids=["timm-options", "qkv-bias", "avg-pool", "eps", "branch-sizes", "crop-scale", "no-square"],
)
def test_what_vit_pytorch_cannot_express_is_refused(changes, match):
    with pytest.raises(NotImplementedError, match=match):
        vit_pytorch_kwargs(CrossViTConfig(**{**VIT_PYTORCH_CONFIG, **changes}))


def test_export_vit_pytorch_refuses_a_timm_crossvit(tmp_path):
    arch, kwargs = TIMM["tiny-240"]
    model = hf_vit_flax.from_timm(timm.create_model(arch, pretrained=False, **kwargs))
    with pytest.raises(NotImplementedError, match="cannot be written as a vit-pytorch CrossViT: patch_embedding="):
        hf_vit_flax.export(model, "vit-pytorch", tmp_path / "out")
    assert not (tmp_path / "out").exists()
