"""ViT / DeiT / DeiT III from timm: parity per feature, through every kind of ``from_timm`` source.

Each configuration is a real timm architecture built small (``create_model(arch, embed_dim=48, ...)``,
random weights from ``randomize_``) so that every option of ``VisionTransformer`` the ViT family
expresses is exercised against timm itself, float32, max |logits difference| <= 1e-5, through
(c) the live module, (b) a local folder / file in timm's Hub format and (a) a Hub repo served
from a hand-built offline cache.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import timm
import torch

import hf_vit_flax
from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel, ViT, ViTConfig
from hf_vit_flax.conversion_utils import resample_abs_pos_embed, to_numpy
from hf_vit_flax.models.vit.convert_vit import config_from_timm, convert_timm
from hf_vit_flax.timm_weights import timm_variant_info
from tests.helpers import assert_parity, images, randomize_, torch_logits

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)

# feature -> (timm architecture, create_model kwargs on top of SMALL, what the config must say)
FEATURES = {
    "conv-embed-qkv-bias-cls-token": ("vit_tiny_patch16_224", {}, dict(patch_embedding="conv", qkv_bias=True)),
    "avg-pool-fc-norm-no-class-token": (
        "vit_base_patch16_224",
        dict(global_pool="avg", class_token=False),
        dict(pool="mean", fc_norm=True, class_token=False),
    ),
    "avg-pool-with-class-token": (
        "vit_base_patch16_224",
        dict(global_pool="avg"),
        dict(pool="mean", fc_norm=True, class_token=True),
    ),
    "no-qkv-bias-layerscale-avg-final-norm": (
        "vit_medium_patch16_gap_256",
        {},
        dict(qkv_bias=False, pool="mean", fc_norm=False, class_token=False),
    ),
    "avg-pool-final-norm-siglip-gap": ("vit_base_patch16_siglip_gap_224", {}, dict(pool="mean", fc_norm=False)),
    "register-tokens": ("vit_base_patch16_224", dict(reg_tokens=4), dict(reg_tokens=4, no_embed_class=False)),
    "registers-no-embed-class-layerscale": (
        "vit_wee_patch16_reg1_gap_256",
        {},
        dict(reg_tokens=1, no_embed_class=True, layer_scale_init=1e-5),
    ),
    "no-embed-class-layerscale-deit3": ("deit3_small_patch16_224", {}, dict(no_embed_class=True)),
    "clip-pre-norm-eps-1e-5": ("vit_base_patch16_clip_224", {}, dict(pre_norm=True, patch_bias=False)),
    "clip-quick-gelu": ("vit_base_patch16_clip_quickgelu_224", {}, dict(mlp_activation="quick_gelu")),
    "gelu-tanh": ("vit_base_patch16_224", dict(act_layer="gelu_tanh"), dict(mlp_activation="gelu_tanh")),
    "map-attention-pooling": ("vit_base_patch16_siglip_224", {}, dict(pool="map", class_token=False)),
    "distilled-head": ("deit_tiny_distilled_patch16_224", {}, dict(distilled=True)),
    "no-final-norm": ("vit_base_patch16_224", dict(final_norm=False), dict(final_norm=False)),
    "rectangular-image-and-patch": (
        "vit_base_patch16_224",
        dict(img_size=(32, 48), patch_size=(8, 12)),
        dict(image_size=[32, 48]),
    ),
    "image-not-divisible-by-patch": ("vit_base_patch16_224", dict(img_size=36), dict(image_size=36)),
    "training-options": (
        "deit3_small_patch16_224",
        dict(drop_path_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, pos_drop_rate=0.05, drop_rate=0.2),
        dict(drop_path_rate=0.1, dropout=0.1, emb_dropout=0.05, head_dropout=0.2),
    ),
}

EPS = {"clip-pre-norm-eps-1e-5": 1e-5, "clip-quick-gelu": 1e-5}


def build(arch: str, kwargs: dict, seed: int = 0):
    return randomize_(timm.create_model(arch, pretrained=False, **{**SMALL, **kwargs}), seed)


def input_images(module, batch: int = 2, seed: int = 0) -> np.ndarray:
    height, width = module.patch_embed.img_size
    return images(batch, height, width, seed=seed)


def save_timm_folder(module, folder, safe: bool = True):
    """The folder timm's ``push_to_hf_hub`` uploads: config.json (with model_args) + weights."""
    from timm.models._hub import save_for_hf

    save_for_hf(module, folder, safe_serialization=safe)
    return folder


def hub_cache(root, repo_id: str, folder) -> None:
    """Serve ``folder`` as the Hub repo ``repo_id`` from an offline cache under ``root``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub reads its settings at import time: point the live constants at a tmp cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("feature", FEATURES)
def test_parity_per_feature_through_every_source(feature, tmp_path, offline_hub):
    arch, kwargs, expected_config = FEATURES[feature]
    module = build(arch, kwargs)
    x = input_images(module)
    expected = torch_logits(module, x)

    # (c) the live module
    model = hf_vit_flax.from_timm(module)
    assert isinstance(model, FlaxViTForImageClassification)
    for key, value in expected_config.items():
        assert getattr(model.config, key) == value, key
    assert model.config.layer_norm_eps == EPS.get(feature, 1e-6)
    assert_parity(model(x).logits, expected)

    # The core module holds the same parameters and computes the same function (NHWC in).
    logits = ViT(**model.config.to_module_kwargs()).apply(model.module_params(), x.transpose(0, 2, 3, 1))
    assert_parity(logits, expected)

    # (b) a local folder (config.json with timm's model_args + model.safetensors), the file itself,
    # and a folder with pytorch_model.bin
    folder = save_timm_folder(module, tmp_path / "export")
    assert_parity(hf_vit_flax.from_timm(folder)(x).logits, expected)
    assert_parity(hf_vit_flax.from_timm(folder / "model.safetensors")(x).logits, expected)
    bin_folder = save_timm_folder(module, tmp_path / "export-bin", safe=False)
    assert (bin_folder / "pytorch_model.bin").is_file()
    assert_parity(hf_vit_flax.from_timm(bin_folder)(x).logits, expected)

    # (a) the Hub repo of <arch>.<tag> (timm/<arch>.<tag>, or the repo timm shares it from) from the offline cache
    tag = module.pretrained_cfg["tag"]
    repo_id = timm_variant_info(arch)["pretrained"][tag]["hf_hub_id"].rstrip("/")
    hub_cache(offline_hub, repo_id, folder)
    from_hub = hf_vit_flax.from_timm(f"{arch}.{tag}")
    assert_parity(from_hub(x).logits, expected)
    assert from_hub.card_data["source"] == repo_id


def test_training_options_do_not_change_eval_and_drop_in_training():
    module = build(*FEATURES["training-options"][:2])
    model = hf_vit_flax.from_timm(module)
    x = input_images(module)
    a = model(x, train=True, dropout_rng=jax.random.key(0)).logits
    b = model(x, train=True, dropout_rng=jax.random.key(1)).logits
    assert not np.allclose(a, b)
    assert_parity(model(x).logits, torch_logits(module, x))


def test_pth_file_with_architecture_and_no_config(tmp_path):
    # A training checkpoint of a registered architecture at its own size: the variant table's config.
    module = randomize_(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False), seed=3)
    torch.save({"model": module.state_dict()}, tmp_path / "checkpoint.pth")
    x = images(1, 224, 224)
    model = hf_vit_flax.from_timm(tmp_path / "checkpoint.pth", architecture="deit_tiny_distilled_patch16_224")
    assert model.config.distilled and model.config.num_labels == 1000
    assert_parity(model(x).logits, torch_logits(module, x))


def test_distilled_model_in_the_hf_shells(tmp_path):
    module = build("deit_tiny_distilled_patch16_224", {}, seed=1)
    model = hf_vit_flax.from_timm(module)
    x = input_images(module)
    assert set(model.params) == {"vit", "head", "head_dist"} and {"dist_token", "cls_token"} <= set(model.params["vit"])
    assert FlaxViTForImageClassification.head_param_names == ("head", "head_dist")

    # The base model has no heads; its pooled output is the class and distillation tokens, from
    # which the two heads give timm's logits (the mean of both).
    base = FlaxViTModel(model.config, _do_init=False)
    assert not {"head", "head_dist"} & set(base.params_shape_tree)
    params = model.params["vit"]
    out = base(x, params=params)
    assert out.pooler_output.shape == (2, 2, 48)
    np.testing.assert_allclose(out.pooler_output, out.last_hidden_state[:, :2])
    with torch.inference_mode():
        tokens = module.forward_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out.last_hidden_state, tokens, atol=1e-5)
    head = model.params["head"]
    head_dist = model.params["head_dist"]
    pooled = np.asarray(out.pooler_output)
    manual = (pooled[:, 0] @ head["kernel"] + head["bias"] + pooled[:, 1] @ head_dist["kernel"] + head_dist["bias"]) / 2
    assert_parity(manual, torch_logits(module, x))

    # A classifier checkpoint loads into the base model (its heads are dropped) and back.
    model.save_pretrained(tmp_path / "deit")
    reloaded = FlaxViTModel.from_pretrained(tmp_path / "deit")
    np.testing.assert_allclose(reloaded(x).pooler_output, out.pooler_output, atol=1e-6)
    classifier = FlaxViTForImageClassification.from_pretrained(tmp_path / "deit")
    assert_parity(classifier(x).logits, torch_logits(module, x))


def test_from_pretrained_round_trip_keeps_every_option(tmp_path):
    module = build(*FEATURES["registers-no-embed-class-layerscale"][:2], seed=2)
    model = hf_vit_flax.from_timm(module)
    model.save_pretrained(tmp_path / "wee")
    saved = json.loads((tmp_path / "wee" / "config.json").read_text())
    assert saved["reg_tokens"] == 1 and saved["no_embed_class"] and saved["fc_norm"]
    from hf_vit_flax import FlaxAutoModelForImageClassification

    reloaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "wee")
    x = input_images(module)
    assert_parity(reloaded(x).logits, torch_logits(module, x))


def test_hidden_states_and_attentions_of_a_timm_model():
    module = build("vit_base_patch16_224", dict(reg_tokens=2), seed=4)
    model = hf_vit_flax.from_timm(module)
    x = input_images(module)
    out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 1 + 2 + 16, 48)
    assert out.attentions[0].shape == (2, 3, 19, 19)
    with torch.inference_mode():
        blocks_out = module.blocks(module._pos_embed(module.patch_embed(torch.from_numpy(x)))).numpy()
    np.testing.assert_allclose(out.hidden_states[-1], blocks_out, atol=1e-5)


# -- position-embedding resampling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, prefix",
    [((4, 4), (6, 6), 1), ((6, 6), (4, 4), 1), ((4, 4), (3, 5), 0), ((4, 6), (8, 8), 5), ((14, 14), (24, 24), 1)],
)
def test_resample_abs_pos_embed_matches_timm(old, new, prefix):
    from timm.layers import resample_abs_pos_embed as timm_resample

    posemb = np.random.default_rng(0).standard_normal((1, prefix + old[0] * old[1], 32)).astype(np.float32)
    expected = timm_resample(torch.from_numpy(posemb), new_size=new, old_size=old, num_prefix_tokens=prefix).numpy()
    ours = resample_abs_pos_embed(posemb, new, old, num_prefix_tokens=prefix)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(resample_abs_pos_embed(posemb[0], new, old, prefix), expected[0], atol=1e-5)


def test_resample_needs_a_grid():
    with pytest.raises(ValueError, match="not a square grid"):
        resample_abs_pos_embed(np.zeros((1 + 12, 8), np.float32), (4, 4))


@pytest.mark.parametrize("feature", ["conv-embed-qkv-bias-cls-token", "registers-no-embed-class-layerscale"])
def test_image_size_override_matches_timm_at_the_new_size(feature):
    from timm.layers import resample_abs_pos_embed as timm_resample

    arch, kwargs, _ = FEATURES[feature]
    module = build(arch, kwargs, seed=5)
    model = hf_vit_flax.from_timm(module, image_size=48)
    assert model.config.image_size == 48
    assert model.image_processor.crop_size == {"height": 48, "width": 48}

    # timm at the new size, loaded with the position embedding resampled by timm itself.
    resized = timm.create_model(arch, pretrained=False, **{**SMALL, **kwargs, "img_size": 48}).eval()
    state = dict(module.state_dict())
    prefix = 0 if module.no_embed_class else module.num_prefix_tokens
    state["pos_embed"] = timm_resample(state["pos_embed"], new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=prefix)
    resized.load_state_dict(state)
    x = images(2, 48, 48, seed=1)
    assert_parity(model(x).logits, torch_logits(resized, x))


# -- what is not expressed, and checkpoints that do not match ------------------------------------------------


@pytest.mark.parametrize(
    "arch, kwargs, match",
    [
        ("vit_base_patch16_224", dict(qk_norm=True), "qk_norm"),
        ("vit_base_patch16_224", dict(dynamic_img_size=True), "dynamic image size"),
        ("vit_base_patch16_224", dict(patch_drop_rate=0.1), "patch dropout"),
        ("vit_base_patch16_224", dict(norm_layer="rmsnorm"), "RmsNorm"),
        ("vit_base_patch16_224", dict(global_pool="max"), "global_pool='max'"),
        ("vit_base_patch16_224", dict(pos_embed="none"), "no absolute position embedding"),
        ("vit_base_patch16_224", dict(proj_bias=False), "proj_bias=False"),
        ("vit_base_patch16_224", dict(global_pool="avg", pool_include_prefix=True), "pool_include_prefix"),
        ("vit_base_patch16_224", dict(embed_norm_layer="layernorm"), "inside the patch embedding"),
        ("vit_base_patch16_224", dict(act_layer="silu"), "MLP activation SiLU"),
        ("vit_base_patch16_224", dict(scale_attn_norm=True), "scale_attn_norm"),
        ("vit_base_patch16_224", dict(init_values=None, block_fn="ResPostBlock"), "block type ResPostBlock"),
        ("vit_base_patch16_224", dict(global_pool="prr"), "AttentionPoolPrr"),
    ],
)
def test_unexpressed_features_raise_naming_them(arch, kwargs, match):
    from timm.models import vision_transformer as vt

    if kwargs.get("block_fn") == "ResPostBlock":
        kwargs = dict(kwargs, block_fn=vt.ResPostBlock)
    module = timm.create_model(arch, pretrained=False, **{**SMALL, **kwargs})
    with pytest.raises(NotImplementedError, match=match):
        config_from_timm(module)
    with pytest.raises(NotImplementedError, match=match):
        hf_vit_flax.from_timm(module)


def test_other_timm_classes_raise():
    with torch.device("meta"):
        hybrid = timm.create_model("vit_small_r26_s32_224", pretrained=False)
        eva = timm.create_model("vit_base_patch16_rope_224", pretrained=False)
    with pytest.raises(NotImplementedError, match="HybridEmbed"):
        hf_vit_flax.from_timm(hybrid)
    with pytest.raises(NotImplementedError, match="Eva"):
        hf_vit_flax.from_timm(eva)


def test_mismatched_checkpoints_raise_naming_keys(tmp_path):
    module = build("vit_tiny_patch16_224", {}, seed=6)
    config = config_from_timm(module)
    state = to_numpy(module.state_dict())
    with pytest.raises(ValueError, match="not converted.*blocks.1"):
        convert_timm(state, ViTConfig.from_dict({**config.to_dict(), "depth": 1}))
    deeper = ViTConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="no keys 'blocks.2.norm1.weight'"):
        convert_timm(state, deeper)
    torn = {**state, "pos_embed": state["pos_embed"][:, :-3]}  # 4x4 patches + class token -> 14: no square grid
    with pytest.raises(ValueError, match="pos_embed has 14 positions"):
        convert_timm(torn, config)
    wider = ViTConfig.from_dict({**config.to_dict(), "mlp_dim": 96})
    with pytest.raises(ValueError, match="wrong shape.*mlp/fc1"):
        FlaxViTForImageClassification.from_params(wider, convert_timm(state, wider))

    # Through from_timm: a ViT-Ti file declared as a DeiT III (LayerScale, no_embed_class) ...
    full = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    from safetensors.torch import save_file

    save_file(full.state_dict(), tmp_path / "vit_tiny.safetensors")
    with pytest.raises(ValueError, match="no keys 'dist_token'"):
        hf_vit_flax.from_timm(tmp_path / "vit_tiny.safetensors", architecture="deit_tiny_distilled_patch16_224")
    with pytest.raises(ValueError, match="no keys 'blocks.0.ls1.gamma'"):
        hf_vit_flax.from_timm(tmp_path / "vit_tiny.safetensors", architecture="deit3_small_patch16_224")
    # ... or as a ViT-S (other widths).
    with pytest.raises(ValueError, match="wrong shape"):
        hf_vit_flax.from_timm(tmp_path / "vit_tiny.safetensors", architecture="vit_small_patch16_224")
    with pytest.raises(ValueError, match="architecture="):
        hf_vit_flax.from_timm(tmp_path / "vit_tiny.safetensors")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pool="map", distilled=True), "distilled=True"),
        (dict(pool="cls", class_token=False), "pool='cls' reads the class token"),
        (dict(reg_tokens=-1), "reg_tokens must be >= 0"),
        (dict(patch_embedding="linear"), "patch_embedding must be one of"),
        (dict(mlp_activation="relu"), "mlp_activation must be one of"),
        (dict(layer_scale_init=0.0), "layer_scale_init must be a positive"),
        (dict(pool="avg"), "pool must be"),
    ],
)
def test_timm_option_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        module = ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=32, **kwargs)
        jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))


def test_conv_embedding_takes_image_sizes_the_patch_does_not_divide():
    # timm's conv ignores the remainder; vit-pytorch's rearrange cannot.
    assert ViTConfig(image_size=36, patch_size=8, patch_embedding="conv").image_size == 36
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(image_size=36, patch_size=8)
