"""CrossViT: parity with vit-pytorch's CrossViT and timm's CrossVit, the HF wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models.crossvit import CrossVit
from vit_pytorch.cross_vit import CrossViT as ReferenceCrossViT

import hf_vit_flax
from hf_vit_flax import (
    CrossViT,
    CrossViTConfig,
    FlaxAutoModelForImageClassification,
    FlaxCrossViTForImageClassification,
)
from hf_vit_flax.conversion_utils import to_numpy
from hf_vit_flax.models.crossvit.convert_crossvit import config_from_timm, convert_timm
from hf_vit_flax.models.crossvit.modeling_flax_crossvit import timm_drop_path_rates
from tests.helpers import (
    assert_parity,
    crossvit_config,
    images,
    max_abs_diff,
    randomize_,
    torch_logits,
)

# vit-pytorch configurations (small enough for CPU: a few hundred K parameters at most), one row per branch.
PARITY_CONFIGS = {
    "different-widths": crossvit_config(
        dict(image_size=32, num_classes=10, depth=2, cross_attn_depth=2, cross_attn_heads=2, cross_attn_dim_head=16),
        sm=dict(dim=32, patch_size=8, enc_depth=1, enc_heads=2, enc_mlp_dim=64, enc_dim_head=16),
        lg=dict(dim=48, patch_size=16, enc_depth=2, enc_heads=3, enc_mlp_dim=96, enc_dim_head=16),
    ),
    "equal-widths-no-projection": crossvit_config(
        dict(image_size=32, num_classes=5, depth=1, cross_attn_depth=1, cross_attn_heads=4, cross_attn_dim_head=16),
        sm=dict(dim=32, patch_size=4, enc_depth=2, enc_heads=2, enc_mlp_dim=64, enc_dim_head=16),
        lg=dict(dim=32, patch_size=8, enc_depth=1, enc_heads=2, enc_mlp_dim=96, enc_dim_head=16),
    ),
    # sm_patch_size=12, lg_patch_size=16, depth=3, 1+4 encoder blocks, 2 cross layers, 8 heads: the defaults.
    "reference-defaults-scaled-down": crossvit_config(
        dict(image_size=48, num_classes=7, dropout=0.1, emb_dropout=0.1, cross_attn_dim_head=8),
        sm=dict(dim=24, enc_mlp_dim=48, enc_dim_head=8),
        lg=dict(dim=40, enc_mlp_dim=80, enc_dim_head=8),
    ),
    "one-channel-wide-heads": crossvit_config(
        dict(
            image_size=24,
            num_classes=3,
            channels=1,
            depth=2,
            cross_attn_depth=1,
            cross_attn_heads=3,
            cross_attn_dim_head=20,
        ),
        sm=dict(dim=16, patch_size=6, enc_depth=1, enc_heads=1, enc_mlp_dim=32, enc_dim_head=16),
        lg=dict(dim=64, patch_size=12, enc_depth=1, enc_heads=4, enc_mlp_dim=32, enc_dim_head=24),
    ),
    "no-cross-attention": crossvit_config(
        dict(image_size=16, num_classes=4, depth=2, cross_attn_depth=0, cross_attn_dim_head=16),
        sm=dict(dim=16, patch_size=4, enc_depth=1, enc_heads=2, enc_mlp_dim=64, enc_dim_head=16),
        lg=dict(dim=24, patch_size=8, enc_depth=1, enc_heads=2, enc_mlp_dim=96, enc_dim_head=16),
    ),
}


def reference(kwargs, seed=0):
    return randomize_(ReferenceCrossViT(**kwargs), seed)


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


# The core module runs compiled in these tests: for CrossViT's two branches that costs about half of running
# it op by op.
def core_apply(module, model, x):
    """``module`` (a core ``CrossViT``) applied to the NCHW images ``x`` with the parameters of ``model``."""
    return jax.jit(module.apply)(model.module_params(), nhwc(x))


def core_logits_and_pooled_features(model, x):
    """The logits of the core module built from ``model``'s config, and its ``forward_features``' pooler_output,
    with ``model``'s parameters: one compiled program."""
    module = CrossViT(**model.config.to_module_kwargs())

    def both(variables, images):
        features = module.apply(variables, images, method=CrossViT.forward_features)
        return module.apply(variables, images), features.pooler_output

    return jax.jit(both)(model.module_params(), nhwc(x))


# -- Part A: vit-pytorch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_parity_with_vit_pytorch(name):
    kwargs = PARITY_CONFIGS[name]
    torch_model = reference(kwargs)
    x = images(2, kwargs["image_size"], kwargs["image_size"], kwargs.get("channels", 3))
    expected = torch_logits(torch_model, x)

    model = hf_vit_flax.from_vit_pytorch(torch_model)
    assert isinstance(model, FlaxCrossViTForImageClassification)
    assert model.config.style == "vit_pytorch"
    assert_parity(model(x).logits, expected)

    # The core module holds the same parameters and computes the same function (NHWC in).
    logits = core_apply(CrossViT(**kwargs), model, x)
    assert_parity(logits, expected)


def test_config_read_off_vit_pytorch_matches_the_constructor():
    kwargs = PARITY_CONFIGS["one-channel-wide-heads"]
    config = hf_vit_flax.FAMILIES["crossvit"].config_from_vit_pytorch(reference(kwargs))
    for key, value in kwargs.items():
        assert getattr(config, key) == value, key


def test_headless_vit_pytorch_gives_base_model_with_class_tokens():
    # The base model's features are vit-pytorch's class tokens (test_family_contract: the conversion).
    kwargs = dict(PARITY_CONFIGS["different-widths"], num_classes=0)
    torch_model = reference(kwargs, seed=2)
    x = images(2, 32, 32)
    with torch.inference_mode():
        image = torch.from_numpy(x)
        sm, lg = torch_model.multi_scale_encoder(
            torch_model.sm_image_embedder(image), torch_model.lg_image_embedder(image)
        )
    model = hf_vit_flax.from_vit_pytorch(torch_model)
    out = model(x)
    expected_pooled = torch.cat([sm[:, 0], lg[:, 0]], dim=-1).numpy()
    assert out.pooler_output.shape == (2, 32 + 48)
    assert max_abs_diff(out.pooler_output, expected_pooled) <= 1e-5
    assert max_abs_diff(out.last_hidden_state, sm.numpy()) <= 1e-5
    # The core module without heads returns the pooled features.
    pooled = core_apply(CrossViT(**kwargs), model, x)
    np.testing.assert_allclose(pooled, out.pooler_output, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=250), "not divisible by sm_patch_size 12"),
        (dict(image_size=36, sm_patch_size=12, lg_patch_size=8), "not divisible by lg_patch_size 8"),
        (dict(style="keras"), "style must be one of"),
        (dict(sm_enc_heads=0), "sm_enc_heads must be a positive"),
        (dict(dropout=1.5), "dropout must be"),
        (dict(global_pool="max"), "global_pool must be"),
        (dict(multi_conv=True), "a kind of patch_embedding='conv'"),
        (dict(style="timm", sm_enc_dim_head=64, sm_enc_heads=6), "must equal sm_dim"),
        (
            dict(style="timm", sm_enc_dim_head=24, lg_enc_dim_head=48, multi_conv=True, sm_patch_size=8, image_size=48),
            "exists for patch sizes",
        ),
        (dict(image_size=240, lg_image_size=230), "lg_image_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossViTConfig(**kwargs)


# -- Part B: timm -------------------------------------------------------------------------------------------

TIMM_CONFIGS = {
    # timm's layout of the registered models: one un-nested fusion block (depth[-1] == 0), equal branch sizes.
    "conv-embed-equal-sizes": dict(
        img_size=48,
        img_scale=(1.0, 1.0),
        patch_size=(12, 16),
        embed_dim=(24, 48),
        depth=((1, 2, 0), (1, 2, 0)),
        num_heads=(2, 4),
        mlp_ratio=(2, 3, 1),
    ),
    # The dagger stem, the large branch resized 48 -> 32 inside the forward (bicubic).
    "dagger-resized-branch": dict(
        img_size=48,
        img_scale=(1.0, 32 / 48),
        patch_size=(12, 16),
        embed_dim=(24, 48),
        depth=((1, 2, 0), (1, 2, 0)),
        num_heads=(2, 4),
        mlp_ratio=(2, 3, 1),
        multi_conv=True,
    ),
    # Resized up (48 -> 64), nested fusion of depth 3 (later blocks see only the class token).
    "upsampled-branch-nested-fusion": dict(
        img_size=48,
        img_scale=(1.0, 64 / 48),
        patch_size=(8, 16),
        embed_dim=(24, 48),
        depth=((1, 2, 3),),
        num_heads=(2, 4),
        mlp_ratio=(2, 3, 1),
    ),
    # Equal widths, no qkv bias, the second branch centre-cropped, mean pooling of patch tokens.
    "crop-scale-avg-pool-no-qkv-bias": dict(
        img_size=48,
        img_scale=(1.0, 40 / 48),
        patch_size=(12, 20),
        embed_dim=(32, 32),
        depth=((2, 1, 1),),
        num_heads=(4, 2),
        mlp_ratio=(2, 3, 1),
        qkv_bias=False,
        crop_scale=True,
        global_pool="avg",
    ),
}


def timm_port(torch_model):
    config = config_from_timm(torch_model)
    params = convert_timm(to_numpy(torch_model.state_dict()), config)
    return FlaxCrossViTForImageClassification.from_params(config, params)


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_parity_with_timm(name):
    torch_model = randomize_(CrossVit(num_classes=5, **TIMM_CONFIGS[name]))
    x = images(2, 48, 48)
    model = timm_port(torch_model)
    assert model.config.style == "timm"
    expected = torch_logits(torch_model, x)
    assert_parity(model(x).logits, expected)
    logits, pooled = core_logits_and_pooled_features(model, x)
    assert_parity(logits, expected)
    # pooler_output is timm's pre_logits: both branches' (normed) class tokens, concatenated.
    with torch.inference_mode():
        pre_logits = torch_model.forward_head(torch_model.forward_features(torch.from_numpy(x)), pre_logits=True)
    assert max_abs_diff(pooled, pre_logits.numpy()) <= 1e-5


def test_parity_with_registered_timm_architecture_at_reduced_size():
    # crossvit_9_dagger_240's architecture (dagger stems, 240 -> 224 second branch) at 120 -> 112.
    torch_model = randomize_(timm.create_model("crossvit_9_dagger_240", pretrained=False, img_size=120))
    assert [tuple(s) for s in torch_model.img_size_scaled] == [(120, 120), (112, 112)]
    x = images(1, 120, 120)
    model = timm_port(torch_model)
    assert (model.config.sm_image_size, model.config.lg_image_size, model.config.multi_conv) == (None, 112, True)
    assert_parity(model(x).logits, torch_logits(torch_model, x))


def test_timm_original_key_names_and_strict_keys():
    torch_model = randomize_(CrossVit(num_classes=5, **TIMM_CONFIGS["conv-embed-equal-sizes"]))
    config = config_from_timm(torch_model)
    state_dict = to_numpy(torch_model.state_dict())
    original = {
        k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v for k, v in state_dict.items()
    }
    x = images(2, 48, 48)
    model = FlaxCrossViTForImageClassification.from_params(config, convert_timm(original, config))
    assert_parity(model(x).logits, torch_logits(torch_model, x))
    with pytest.raises(ValueError, match="not converted"):
        convert_timm(dict(state_dict, extra=np.zeros(1)), config)
    with pytest.raises(ValueError, match="wrong shape"):
        FlaxCrossViTForImageClassification.from_params(
            CrossViTConfig.from_dict(dict(config.to_dict(), lg_enc_mlp_dim=64)), convert_timm(state_dict, config)
        )


@pytest.mark.parametrize("name", sorted(timm.list_models("crossvit_*")))
def test_parameter_count_of_every_timm_architecture(name):
    with torch.device("meta"):
        torch_model = timm.create_model(name, pretrained=False)
    config = config_from_timm(torch_model)
    assert config.style == "timm" and config.layer_norm_eps == 1e-6
    model = FlaxCrossViTForImageClassification(config, _do_init=False)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params_shape_tree))
    assert count == sum(p.numel() for p in torch_model.parameters())
    logits = jax.eval_shape(
        model.module.apply,
        {"params": model.params_shape_tree},
        jax.ShapeDtypeStruct((1, *config.image_size_hw, 3), jnp.float32),
    )
    assert logits.logits.shape == (1, 1000)


def test_timm_config_round_trip_and_reload(tmp_path):
    torch_model = randomize_(CrossVit(num_classes=5, **TIMM_CONFIGS["dagger-resized-branch"]))
    model = timm_port(torch_model)
    model.save_pretrained(tmp_path)
    reloaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.to_module_kwargs() == model.config.to_module_kwargs()
    x = images(2, 48, 48)
    np.testing.assert_array_equal(reloaded(x).logits, model(x).logits)


def test_timm_stochastic_depth_schedule_and_training():
    kwargs = dict(TIMM_CONFIGS["conv-embed-equal-sizes"], depth=((1, 2, 0), (1, 2, 0), (1, 2, 0)))
    torch_model = CrossVit(num_classes=5, drop_path_rate=0.3, **kwargs)
    config = config_from_timm(torch_model)
    assert config.drop_path_rate == pytest.approx(0.3)
    rates = timm_drop_path_rates(
        config.drop_path_rate, config.depth, config.sm_enc_depth, config.lg_enc_depth, config.cross_attn_depth
    )

    def prob(module):
        return float(getattr(module, "drop_prob", 0.0))

    for (sm_rates, lg_rates, fusion_rate), block in zip(rates, torch_model.blocks, strict=True):
        assert sm_rates == pytest.approx([prob(b.drop_path1) for b in block.blocks[0]])
        assert lg_rates == pytest.approx([prob(b.drop_path1) for b in block.blocks[1]])
        assert fusion_rate == pytest.approx(prob(block.fusion[0].drop_path))
    # Training is stochastic through stochastic depth alone (no dropout), evaluation deterministic.
    model = FlaxCrossViTForImageClassification(CrossViTConfig.from_dict(dict(config.to_dict(), depth=1)), seed=0)
    assert model.config.dropout == model.config.emb_dropout == 0.0
    x = images(2, 48, 48)
    a = model(x, train=True, dropout_rng=jax.random.key(0)).logits
    b = model(x, train=True, dropout_rng=jax.random.key(1)).logits
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x).logits, model(x).logits)
