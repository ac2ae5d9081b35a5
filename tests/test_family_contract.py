"""The contract every registered family keeps, one suite parametrised over ``hf_vit_flax.FAMILIES``.

Modelled on transformers' ``FlaxModelTesterMixin`` and timm's ``tests/test_models.py``: one small model per
family (``CONTRACTS``, the family's ``ModelTester``), the same checks for all of them, through the public
API only (the core modules ``ViT``, ``CaiT`` ..., the configs, the ``Flax<Family>*`` classes, the
``from_vit_pytorch`` converter). What is particular to a family (parity with timm, vit-pytorch or the
original release; its own options and errors) stays in ``tests/models/test_<family>.py``; what
transformers' own mixin checks (tuples and dicts, save/load from and to the base model, dtypes,
naming) is in ``tests/test_transformers_conformance.py``. A new family fails
``test_every_registered_family_has_a_contract`` until it has a row here.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoConfig

import hf_vit_flax
from hf_vit_flax import FlaxAutoModel, FlaxAutoModelForImageClassification
from hf_vit_flax.families import FAMILIES, family_of_config
from tests.helpers import (
    BAD_PIXEL_VALUES,
    TINY_CONFIGS,
    assert_parity,
    images,
    randomize_,
    torch_logits,
)

BATCH = 2


def cls_token(tokens):
    return tokens[:, 0]


def mean_token(tokens):
    return tokens.mean(axis=1)


@dataclass(frozen=True)
class Contract:
    """One family's small model and what the family-independent checks expect of it (32x32 RGB images)."""

    # The small model: keyword arguments of the config in the seed README's names, which are also those of
    # the vit-pytorch reference (the config's other options, such as image_size, are left out for it).
    config: dict
    # An option that makes training stochastic: the cheapest to compile (one random draw, not one per layer).
    stochastic: dict
    # The classifier's output tuples with output_hidden_states and output_attentions: field -> shapes.
    output_shapes: dict[str, list[tuple[int, ...]]]
    # The base model's pooler_output: its shape, and its leading features from the last_hidden_state.
    pooler_shape: tuple[int, ...]
    # Images the core module refuses for their size: (core-module option changes, NHWC shape, the error).
    bad_image_sizes: list[tuple[dict, tuple[int, ...], str]]
    # A config change that changes the shape of a weight of the checkpoint (the converter must say so).
    wider: dict
    pool: Callable[[jax.Array], jax.Array] = cls_token
    # vit-pytorch's layout has no final norm: the last block's output is the last hidden state.
    final_norm: bool = True
    # Whether the attention maps are the softmax probabilities (CaiT's talking heads mix them after it).
    softmax_attentions: bool = True
    # Whether to compile both backward passes to compare the gradients with and without gradient
    # checkpointing (10-35 s of CPU a family): ViT's, whose test it was; the others' are traced.
    compare_gradients: bool = False


def crossformer_output_shapes():
    # Stage maps 8x8, 4x4, 2x2, 1x1 of widths 32, 32, 64, 64 (heads: width / dim_head 32); each stage a short-
    # then a long-distance block. Attention maps are (batch, groups, heads, tokens, tokens).
    maps, widths = (8, 4, 2, 1), (32, 32, 64, 64)
    local, long_distance = (2, 2, 2, 1), (2, 2, 1, 1)
    hidden, attentions = [(BATCH, 8 * 8, 32)], []
    for side, width, *windows in zip(maps, widths, local, long_distance, strict=True):
        hidden += [(BATCH, side * side, width)] * 2
        attentions += [(BATCH, (side // w) ** 2, width // 32, w * w, w * w) for w in windows]
    return {"hidden_states": hidden, "attentions": attentions}


# A size the core module was not built for (the families with a fixed image size).
OTHER_SIZE = ({}, (1, 40, 40, 3), "built for 32x32")

CONTRACTS = {
    "vit": Contract(
        config=TINY_CONFIGS["vit"],
        stochastic=dict(emb_dropout=0.1),
        # 16 patches and the class token, width 32, 2 heads, 1 block.
        output_shapes={"hidden_states": [(BATCH, 17, 32)] * 2, "attentions": [(BATCH, 2, 17, 17)]},
        pooler_shape=(BATCH, 32),
        bad_image_sizes=[OTHER_SIZE, (dict(image_size=(32, 36)), (1, 32, 36, 3), "not divisible by patch width")],
        wider=dict(mlp_dim=64),
        compare_gradients=True,
    ),
    "cait": Contract(
        config=TINY_CONFIGS["cait"],
        stochastic=dict(emb_dropout=0.1),
        # The embeddings and the self-attention layer's output (16 patches), then [class token, patches] after
        # the class-attention layer, where the class token attends to [itself, patches].
        output_shapes={
            "hidden_states": [(BATCH, 16, 32)] * 2 + [(BATCH, 17, 32)],
            "attentions": [(BATCH, 2, 16, 16), (BATCH, 2, 1, 17)],
        },
        pooler_shape=(BATCH, 32),
        bad_image_sizes=[OTHER_SIZE, (dict(image_size=30), (1, 30, 30, 3), "not divisible by patch size")],
        wider=dict(mlp_dim=64),
        softmax_attentions=False,
    ),
    "crossvit": Contract(
        # One block per branch and one cross-attention layer (a quarter of the compile time of the defaults).
        config={**TINY_CONFIGS["crossvit"], "lg_enc_depth": 1, "cross_attn_depth": 1},
        stochastic=dict(emb_dropout=0.1),
        # Two branches: 64 small patches (width 16) and 16 large ones (width 32), each with its class token;
        # one multi-scale layer: a block per branch, then cross attention.
        output_shapes={
            "hidden_states": [(BATCH, 65, 16)] * 2,
            "attentions": [(BATCH, 2, 65, 65)],
            "lg_hidden_states": [(BATCH, 17, 32)] * 2,
            "lg_attentions": [(BATCH, 2, 17, 17)],
        },
        pooler_shape=(BATCH, 16 + 32),  # both branches' class tokens, the small branch's first
        bad_image_sizes=[OTHER_SIZE, (dict(image_size=30), (1, 30, 30, 3), "not divisible by sm_patch_size 4")],
        wider=dict(sm_enc_mlp_dim=64),
        final_norm=False,
    ),
    "crossformer": Contract(
        # vit-pytorch's CrossFormer has a fixed dim_head of 32 (heads = dim / 32); windows that tile the stage
        # maps of 32x32 images; one kernel per cross-scale embedding (the family's tests have several).
        config=dict(
            image_size=32,
            num_classes=3,
            dim=(32, 32, 64, 64),
            depth=1,
            heads=(1, 1, 2, 2),
            local_window_size=(2, 2, 2, 1),
            global_window_size=(2, 2, 1, 1),
            cross_embed_kernel_sizes=((4,), (2,), (2,), (2,)),
        ),
        stochastic=dict(ff_dropout=0.1),
        output_shapes=crossformer_output_shapes(),
        pooler_shape=(BATCH, 64),
        # Any size its strides and windows tile: 40 is not a multiple of 32 (stride 16 x window 2).
        bad_image_sizes=[({}, (1, 40, 40, 3), "multiples of 32")],
        wider=dict(channels=1),  # a stem for other inputs (the width also sets the heads under the preset)
        pool=mean_token,
        final_norm=False,
    ),
}


def test_every_registered_family_has_a_contract():
    assert set(CONTRACTS) == set(FAMILIES)


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def core_module(model, **changes):
    """The family's core linen module (``hf_vit_flax.ViT`` ...) with the options of ``model``'s config."""
    module_class = family_of_config(model.config).core_module_class
    return module_class(**{**model.config.to_module_kwargs(), **changes})


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param


def small_config(family, **changes):
    return FAMILIES[family].config_class(**{**CONTRACTS[family].config, **changes})


def random_params(shapes, seed=0):
    """Parameters that make a wrong computation visible, as ``tests.helpers.randomize_`` gives torch modules:
    norm scales ~ 1 + 0.2 N(0, 1), biases ~ 0.2 N(0, 1), matrices ~ N(0, 1/fan_in), so that logits are O(1).
    Drawn in numpy: cheaper than compiling the model's initialisers."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name == "scale":
            return 1.0 + 0.2 * rng.standard_normal(shape.shape)
        if len(shape.shape) <= 1:
            return 0.2 * rng.standard_normal(shape.shape)
        return rng.standard_normal(shape.shape) / np.sqrt(np.prod(shape.shape[:-1]))

    return jax.tree_util.tree_map_with_path(lambda p, s: np.asarray(draw(p, s), s.dtype), shapes)


@pytest.fixture(scope="module")
def small(family):
    """The family's small classifier, stochastic when training."""
    config = small_config(family, **CONTRACTS[family].stochastic)
    classifier_class = FAMILIES[family].classifier_class
    shell = classifier_class(config, _do_init=False)
    return classifier_class.from_params(config, random_params(shell.module_params(shell.params_shape_tree)["params"]))


@pytest.fixture(scope="module")
def x():
    return images(BATCH, 32, 32)


# The tests call the models with as few combinations of flags as they can, and the same ones: each combination is
# a program to compile (equal programs are compiled once, through jax's persistent compilation cache).


def base_features(family, small, x):
    """The base model on the classifier's backbone, with its hidden states."""
    base = FAMILIES[family].model_class(small.config, _do_init=False)
    return base(x, params=small.params[small.base_model_prefix], output_hidden_states=True)


def with_outputs(model, x, **kwargs):
    return model(x, output_hidden_states=True, output_attentions=True, **kwargs)


# -- training and evaluation ------------------------------------------------------------------------------


def test_training_needs_a_dropout_rng_and_evaluation_is_deterministic(small, x):
    with pytest.raises(ValueError, match="dropout_rng"):
        small(x, train=True)
    a = small(x, train=True, dropout_rng=jax.random.key(0)).logits
    b = small(x, train=True, dropout_rng=jax.random.key(1)).logits
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(small(x, train=True, dropout_rng=jax.random.key(0)).logits, a)
    logits = small(x).logits
    assert logits.shape == (BATCH, small.config.num_labels)
    np.testing.assert_array_equal(small(x).logits, logits)
    # The core module (NHWC) that computes them: training needs a 'dropout' rng (the wrapper passes
    # dropout_rng as that rng: the draws above are the core module's).
    module, variables = core_module(small), small.module_params()
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: module.apply(v, nhwc(x), train=True), variables)
    trained = jax.eval_shape(
        lambda v: module.apply(v, nhwc(x), train=True, rngs={"dropout": jax.random.key(0)}), variables
    )
    assert trained.shape == logits.shape


def test_the_eager_core_module_computes_the_jitted_models(family, small, x):
    module, variables = core_module(small), small.module_params()
    # Op by op: each operation dispatched on its own, no jit around the model.
    features = module.apply(variables, nhwc(x), method="forward_features")
    logits = module.apply(variables, features.pooler_output, method="forward_head")
    np.testing.assert_allclose(logits, small(x).logits, atol=1e-5)
    jitted = base_features(family, small, x)
    for name in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(getattr(features, name), jitted[name], atol=1e-5, err_msg=name)


def remat_model(small):
    return type(small)(small.config, gradient_checkpointing=True, _do_init=False)


def gradient(model, params, x):
    return jax.grad(lambda params: model(x, params=params).logits.sum())(params)


def test_gradient_checkpointing_keeps_parameter_paths_and_values(small, x):
    remat = remat_model(small)
    assert jax.tree.structure(remat.params_shape_tree) == jax.tree.structure(small.params)
    np.testing.assert_allclose(remat(x, params=small.params).logits, small(x).logits, atol=1e-6)
    # Its backward pass traces (the values: test_gradient_checkpointing_keeps_gradients).
    shapes = jax.eval_shape(lambda p: gradient(remat, p, x), small.params)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, small.params)


def test_gradient_checkpointing_keeps_gradients(family, small, x):
    if not CONTRACTS[family].compare_gradients:
        pytest.skip("compiling both backward passes is left to ViT (the other families' are traced)")
    plain, remat = (
        jax.jit(functools.partial(gradient, model, x=x))(small.params) for model in (small, remat_model(small))
    )
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_dtype_and_param_dtype(small, x):
    bf16 = type(small)(small.config, dtype=jnp.bfloat16, _do_init=False)
    logits = bf16(x, params=small.params).logits
    assert logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits, np.float32), small(x).logits, atol=0.1)
    # param_dtype reaches every parameter, of the HF model and of the core module.
    half = type(small)(small.config, param_dtype=jnp.bfloat16, _do_init=False)
    assert {p.dtype for p in jax.tree.leaves(half.params_shape_tree)} == {jnp.dtype(jnp.bfloat16)}
    shapes = jax.eval_shape(core_module(small, param_dtype=jnp.bfloat16).init, jax.random.key(0), nhwc(x))
    assert {p.dtype for p in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}


# -- outputs ----------------------------------------------------------------------------------------------


def test_hidden_states_attentions_and_tuples(family, small, x):
    contract = CONTRACTS[family]
    out = with_outputs(small, x)
    shapes = {name: [a.shape for a in value] for name, value in out.items() if name != "logits"}
    assert shapes == contract.output_shapes
    if contract.softmax_attentions:
        for name in (name for name in out if name.endswith("attentions")):
            for weights in out[name]:
                np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5, err_msg=name)
    assert list(small(x).keys()) == ["logits"]  # nothing else unless asked for
    # Tuples: the same outputs in the same order (traced; their values: test_transformers_conformance.py).
    np.testing.assert_array_equal(small(x, return_dict=False)[0], small(x).logits)
    as_tuple = jax.eval_shape(lambda p: with_outputs(small, x, params=p, return_dict=False), small.params)
    assert len(as_tuple) == len(out.to_tuple()) == 1 + len(contract.output_shapes)
    assert [a.shape for a in jax.tree.leaves(as_tuple)] == [a.shape for a in jax.tree.leaves(out.to_tuple())]


def test_base_model_features_and_head(family, small, x):
    contract = CONTRACTS[family]
    features = base_features(family, small, x)
    assert features.pooler_output.shape == contract.pooler_shape
    assert features.last_hidden_state.shape == features.hidden_states[-1].shape
    pooled = np.asarray(contract.pool(features.last_hidden_state))
    np.testing.assert_allclose(features.pooler_output[:, : pooled.shape[-1]], pooled, atol=1e-6)
    if not contract.final_norm:
        np.testing.assert_array_equal(features.hidden_states[-1], features.last_hidden_state)
    # The classifier is the family's head on the base model's pooler_output.
    logits = core_module(small).apply(small.module_params(), features.pooler_output, method="forward_head")
    np.testing.assert_allclose(logits, small(x).logits, atol=1e-5)


def test_a_headless_core_module_returns_the_base_model_features(family, small, x):
    config = small_config(family, num_classes=0)
    with pytest.raises(ValueError, match="needs a config with labels"):
        FAMILIES[family].classifier_class(config, _do_init=False)
    base = FAMILIES[family].model_class(config, _do_init=False)
    assert jax.tree.structure(base.params_shape_tree) == jax.tree.structure(small.params[small.base_model_prefix])
    # What the core module returns without a head: the base model's features named by headless_output
    # (the eager forward_features above computes their values).
    headless = core_module(small, num_classes=0)
    out = jax.eval_shape(headless.apply, {"params": base.params_shape_tree}, nhwc(x))
    expected = jax.eval_shape(lambda p: base(x, params=p), base.params_shape_tree)[headless.headless_output]
    assert (out.shape, out.dtype) == (expected.shape, expected.dtype)


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, match", BAD_PIXEL_VALUES)
def test_bad_pixel_values_are_named(family, shape, match):
    model = FAMILIES[family].classifier_class(small_config(family), _do_init=False)
    if "configured for" in match and not FAMILIES[family].core_module_class.fixed_image_size:
        # No position embeddings (CrossFormer): any size its windows tile runs; one they do not is named.
        shape, match = (2, 3, 40, 40), "cannot take 40x40 images"
    with pytest.raises(ValueError, match=match):  # abstract parameters: nothing is computed
        jax.eval_shape(lambda params: model(np.zeros(shape, np.float32), params=params), model.params_shape_tree)


BAD_IMAGES = [((1, 3, 32, 32), "NCHW"), ((1, 32, 32, 1), "3-channel"), ((32, 32, 3), "of shape")]


def test_the_core_module_names_bad_images(family):
    module_class = FAMILIES[family].core_module_class
    kwargs = small_config(family).to_module_kwargs()
    for changes, shape, match in [({}, *bad) for bad in BAD_IMAGES] + CONTRACTS[family].bad_image_sizes:
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(module_class(**{**kwargs, **changes}).init, jax.random.key(0), jnp.zeros(shape))


# -- configs ------------------------------------------------------------------------------------------------


def test_config_aliases_and_round_trip(family):
    config_class = FAMILIES[family].config_class
    seed_names = {**CONTRACTS[family].config, **CONTRACTS[family].stochastic, "channels": 1}
    # Built with transformers' names (hidden_size, num_channels, num_labels ...) where they exist.
    aliases = {name: alias for alias, name in config_class.attribute_map.items()}
    config = config_class(**{aliases.get(k, k): v for k, v in seed_names.items() if k != "num_classes"}, num_labels=7)
    assert config.to_module_kwargs() == config_class(**{**seed_names, "num_classes": 7}).to_module_kwargs()
    assert config.num_classes == 7 and len(config.id2label) == 7 and config.channels == 1
    # Read and written through either name.
    marker = object()
    for alias, name in config_class.attribute_map.items():
        value = getattr(config, name)
        assert getattr(config, alias) == value, alias
        setattr(config, alias, marker)
        assert getattr(config, name) is marker, alias
        setattr(config, name, value)
    reloaded = config_class.from_dict(config.to_dict())
    assert reloaded.to_module_kwargs() == config.to_module_kwargs()
    assert reloaded.model_type == config_class.model_type == f"{family}_flax"
    with pytest.raises(ValueError, match="disagree"):
        small_config(family, num_classes=3, num_labels=4)


# -- save and load ------------------------------------------------------------------------------------------


def test_save_and_auto_load_is_exact(family, small, x, tmp_path):
    small.save_pretrained(tmp_path)
    config_class = FAMILIES[family].config_class
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == config_class.model_type
    assert type(AutoConfig.from_pretrained(tmp_path)) is config_class
    loaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is type(small)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(small.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded(x).logits, small(x).logits)
    # The classifier checkpoint loads into the base model, without the head.
    base = FlaxAutoModel.from_pretrained(tmp_path)
    assert type(base) is FAMILIES[family].model_class
    assert not set(small.head_param_names) & set(base.params)
    features = base(x, output_hidden_states=True)
    np.testing.assert_array_equal(features.pooler_output, base_features(family, small, x).pooler_output)


# -- the vit-pytorch converter ------------------------------------------------------------------------------


def vit_pytorch_reference(family, **changes):
    """The family's vit-pytorch model with the contract's small config (the arguments it takes), random weights."""
    module_name, class_name = FAMILIES[family].vit_pytorch_class.rsplit(".", 1)
    reference_class = getattr(importlib.import_module(module_name), class_name)
    takes = inspect.signature(reference_class).parameters
    kwargs = {k: v for k, v in {**CONTRACTS[family].config, **changes}.items() if k in takes}
    return randomize_(reference_class(**kwargs), seed=1)


def test_a_vit_pytorch_state_dict_needs_its_config_and_is_checked(family, x):
    contract, config_class = CONTRACTS[family], FAMILIES[family].config_class
    torch_model = vit_pytorch_reference(family)
    state_dict = torch_model.state_dict()
    with pytest.raises(ValueError, match="pass its config"):
        hf_vit_flax.from_vit_pytorch(state_dict)
    config = small_config(family)
    model = hf_vit_flax.from_vit_pytorch(state_dict, config=config)
    assert type(model) is FAMILIES[family].classifier_class
    assert_parity(model(x).logits, torch_logits(torch_model, x))
    with pytest.raises(ValueError, match=r"not converted.*extra\.weight"):
        hf_vit_flax.from_vit_pytorch({**state_dict, "extra.weight": np.zeros(3, np.float32)}, config=config)
    wider = config_class.from_dict({**config.to_dict(), **contract.wider})
    with pytest.raises(ValueError, match="wrong shape"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=wider)


def test_a_headless_vit_pytorch_model_becomes_the_base_model(family, x):
    # vit-pytorch without a head (num_classes=0) converts to the base model (the family's tests compare its
    # features with the reference's), whose headless_output the core module without a head computes.
    model = hf_vit_flax.from_vit_pytorch(vit_pytorch_reference(family, num_classes=0))
    assert type(model) is FAMILIES[family].model_class
    assert not set(FAMILIES[family].classifier_class.head_param_names) & set(model.params)
    headless = core_module(model)
    out = headless.apply(model.module_params(), nhwc(x))
    np.testing.assert_allclose(out, model(x)[headless.headless_output], atol=1e-5)
