"""ViT: parity with vit-pytorch's ViT, the seed README snippet, the HF wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import vit_pytorch

import hf_vit_flax
from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel, ViT, ViTConfig
from tests.helpers import (
    BAD_PIXEL_VALUES,
    assert_core_module_rejects_bad_images,
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


def test_parity_from_state_dict_needs_config():
    kwargs = PARITY_CONFIGS["square-cls"]
    torch_model = reference(kwargs, seed=1)
    x = images(2, 32, 32)
    with pytest.raises(ValueError, match="pass its config"):
        hf_vit_flax.from_vit_pytorch(torch_model.state_dict())
    model = hf_vit_flax.from_vit_pytorch(torch_model.state_dict(), config=ViTConfig(**kwargs))
    assert_parity(model(x).logits, torch_logits(torch_model, x))


def test_headless_returns_normed_tokens_like_vit_pytorch():
    kwargs = dict(PARITY_CONFIGS["square-cls"], num_classes=0)
    torch_model = reference(kwargs, seed=2)
    x = images(2, 32, 32)
    model = hf_vit_flax.from_vit_pytorch(torch_model)
    assert isinstance(model, FlaxViTModel)
    tokens = ViT(**kwargs).apply(model.module_params(), jnp.asarray(x.transpose(0, 2, 3, 1)))
    expected = torch_logits(torch_model, x)
    assert tokens.shape == expected.shape == (2, 17, 64)
    np.testing.assert_allclose(tokens, expected, atol=1e-5)
    np.testing.assert_allclose(model(x).last_hidden_state, expected, atol=1e-5)


def test_converter_names_unconverted_keys():
    kwargs = PARITY_CONFIGS["square-cls"]
    state_dict = reference(kwargs).state_dict()
    with pytest.raises(ValueError, match="not converted"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=ViTConfig(**dict(kwargs, depth=1)))
    with pytest.raises(ValueError, match="wrong shape"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=ViTConfig(**dict(kwargs, mlp_dim=256)))


def test_seed_readme_snippet():
    # The seed README's ViT example, with jax.tree.leaves / jax.tree.map for the removed aliases.
    key = jax.random.PRNGKey(0)
    img = jax.random.normal(key, (1, 256, 256, 3))
    v = ViT(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        dim=1024,
        depth=6,
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )
    init_rngs = {
        "params": jax.random.PRNGKey(1),
        "dropout": jax.random.PRNGKey(2),
        "emb_dropout": jax.random.PRNGKey(3),
    }
    params = jax.eval_shape(v.init, init_rngs, img)
    output = jax.eval_shape(lambda p: v.apply(p, img, rngs=init_rngs), params)
    assert output.shape == (1, 1000)
    n_params_flax = sum(jax.tree.leaves(jax.tree.map(lambda x: np.prod(x.shape), params)))
    assert n_params_flax == 54_630_376


def test_parameter_count_matches_vit_pytorch():
    kwargs = dict(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048)
    torch_count = sum(p.numel() for p in vit_pytorch.vit.ViT(**kwargs).parameters())
    model = FlaxViTForImageClassification(ViTConfig(**kwargs), _do_init=False)
    assert torch_count == 54_630_376
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(model.params_shape_tree)) == torch_count


@pytest.fixture(scope="module")
def small():
    config = ViTConfig(**dict(PARITY_CONFIGS["square-cls"], dropout=0.2, emb_dropout=0.1))
    return FlaxViTForImageClassification(config, seed=0)


def test_train_needs_rng_and_is_stochastic_eval_deterministic(small):
    x = images(2, 32, 32)
    with pytest.raises(ValueError, match="dropout_rng"):
        small(x, train=True)
    a = small(x, train=True, dropout_rng=jax.random.key(0)).logits
    b = small(x, train=True, dropout_rng=jax.random.key(1)).logits
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(small(x).logits, small(x).logits)
    module = ViT(**small.config.to_module_kwargs())
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    variables = small.module_params()
    with pytest.raises(Exception, match="dropout"):
        module.apply(variables, nhwc, train=True)  # training needs a 'dropout' rng
    c = module.apply(variables, nhwc, train=True, rngs={"dropout": jax.random.key(0)})
    d = module.apply(variables, nhwc, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(c, d)


def test_jit_and_eager_agree(small):
    module = ViT(**small.config.to_module_kwargs())
    nhwc = jnp.asarray(images(2, 32, 32).transpose(0, 2, 3, 1))
    variables = small.module_params()
    with jax.disable_jit():
        eager = module.apply(variables, nhwc)
    jitted = jax.jit(module.apply)(variables, nhwc)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_outputs_hidden_states_attentions_and_tuples(small):
    x = images(2, 32, 32)
    out = small(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == small.config.depth + 1
    assert out.hidden_states[0].shape == (2, 17, 64)
    assert len(out.attentions) == small.config.depth and out.attentions[0].shape == (2, 4, 17, 17)
    np.testing.assert_allclose(np.asarray(out.attentions[0]).sum(-1), 1.0, rtol=1e-5)
    logits, *_ = small(x, return_dict=False)
    np.testing.assert_allclose(logits, out.logits, atol=1e-5)
    base = FlaxViTModel(small.config)
    features = base(x, params=small.params["vit"])
    np.testing.assert_allclose(features.pooler_output, features.last_hidden_state[:, 0])


def test_dtype_and_param_dtype(small):
    x = images(2, 32, 32)
    bf16 = FlaxViTForImageClassification(small.config, dtype=jnp.bfloat16, _do_init=False)
    logits = bf16(x, params=small.params).logits
    assert logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits, np.float32), small(x).logits, atol=0.1)
    half_params = FlaxViTForImageClassification(small.config, param_dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(half_params.params)} == {jnp.dtype(jnp.bfloat16)}


def test_gradient_checkpointing_keeps_paths_and_values(small):
    remat = FlaxViTForImageClassification(small.config, gradient_checkpointing=True, _do_init=False)
    assert jax.tree.structure(remat.params_shape_tree) == jax.tree.structure(small.params)
    x = images(2, 32, 32)
    np.testing.assert_allclose(remat(x, params=small.params).logits, small(x).logits, atol=1e-6)

    def loss(params, model):
        return model(x, params=params).logits.sum()

    g_plain = jax.grad(loss)(small.params, small)
    g_remat = jax.grad(loss)(small.params, remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30, patch_size=8), "not divisible"),
        (dict(image_size=(32, 30), patch_size=(8, 8)), "not divisible"),
        (dict(pool="max"), "pool must be"),
        (dict(heads=0), "heads must be a positive"),
        (dict(dropout=1.5), "dropout must be"),
        (dict(num_classes=3, num_labels=4), "disagree"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)


def test_config_aliases():
    config = ViTConfig(
        hidden_size=96, num_hidden_layers=3, num_attention_heads=6, intermediate_size=192, num_channels=1, num_labels=7
    )
    assert (config.dim, config.depth, config.heads, config.mlp_dim, config.channels) == (96, 3, 6, 192, 1)
    assert config.num_classes == 7 and len(config.id2label) == 7
    config.hidden_size = 48
    assert config.dim == 48
    reloaded = ViTConfig.from_dict(config.to_dict())
    assert reloaded.dim == 48 and reloaded.num_classes == 7 and reloaded.model_type == "vit_flax"


@pytest.mark.parametrize("shape, match", BAD_PIXEL_VALUES)
def test_bad_pixel_values(small, shape, match):
    with pytest.raises(ValueError, match=match):
        small(np.zeros(shape, np.float32))


def test_core_module_bad_images():
    module = ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=32)
    assert_core_module_rejects_bad_images(module)
    with pytest.raises(ValueError, match="not divisible by patch width"):
        bad = ViT(image_size=(32, 36), patch_size=8, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=32)
        jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 32, 36, 3)))
