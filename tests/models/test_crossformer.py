"""CrossFormer: parity with vit-pytorch's CrossFormer and with the original release's recorded outputs,
the released models' layouts and parameter counts, the HF wrappers."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict
from vit_pytorch.crossformer import CrossFormer as TorchCrossFormer

import hf_vit_flax
from hf_vit_flax import (
    CrossFormer,
    CrossFormerConfig,
    FlaxCrossFormerForImageClassification,
)
from hf_vit_flax.conversion_utils import check_tree
from hf_vit_flax.models.crossformer.convert_crossformer import check_original_options, convert_original
from hf_vit_flax.variants import variant_names
from tests.helpers import assert_parity, images, max_abs_diff, randomize_, torch_logits

# Recorded outputs of the original CrossFormer code (not installable), see the README in that folder.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crossformer_official"

# Small vit-pytorch configurations (a few hundred K parameters) covering every option of its constructor.
PARITY_CONFIGS = {
    "default-windows": dict(dim=(32, 64, 96, 128), depth=(1, 1, 1, 1), num_classes=10),
    "per-stage-windows": dict(
        dim=(32, 64, 64, 96),
        depth=(1, 2, 1, 1),
        local_window_size=(8, 4, 7, 7),
        global_window_size=(7, 7, 2, 1),
        num_classes=5,
    ),
    "one-channel-other-kernels": dict(
        dim=(32, 64, 96, 128),
        depth=1,
        cross_embed_kernel_sizes=((4, 8), (2, 4, 6), (2,), (2, 4)),
        channels=1,
        num_classes=4,
    ),
    # dim not a multiple of vit-pytorch's dim_head 32: heads = dim // 32, inner width heads * 32 != dim
    "dim-not-multiple-of-32": dict(dim=(48, 80, 96, 160), depth=1, num_classes=6),
    "stride-2-stem": dict(
        dim=(32, 32, 64, 64),
        depth=1,
        cross_embed_kernel_sizes=((2, 4), (2, 4), (2, 4), (2, 4)),
        cross_embed_strides=2,
        global_window_size=(16, 8, 4, 2),
        num_classes=3,
    ),
}


def reference(kwargs, seed=0):
    return randomize_(TorchCrossFormer(**kwargs), seed)


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def ported():
    """Each parity configuration: the randomised vit-pytorch model and its port."""
    return {name: (ref := reference(kw), hf_vit_flax.from_vit_pytorch(ref)) for name, kw in PARITY_CONFIGS.items()}


# -- Part A: vit-pytorch's CrossFormer -------------------------------------------------------------------


def core_logits(kwargs, params, x_nchw):
    """The core module on NHWC images, jitted (one compile instead of hundreds of eager ops)."""
    return jax.jit(CrossFormer(**kwargs).apply)({"params": params}, nhwc(x_nchw))


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_parity_with_vit_pytorch_at_224(name, ported):
    kwargs = PARITY_CONFIGS[name]
    torch_model, model = ported[name]
    assert isinstance(model, FlaxCrossFormerForImageClassification)
    x = images(2, 224, 224, kwargs.get("channels", 3))
    # The port's parameters in the core module; the HF wrapper's own forward is checked against
    # vit-pytorch in test_from_state_dict_needs_config.
    assert_parity(core_logits(kwargs, model.module_params()["params"], x), torch_logits(torch_model, x))


@pytest.mark.parametrize(
    "name, shape", [("default-windows", (448, 448)), ("per-stage-windows", (448, 448)), ("stride-2-stem", (224, 448))]
)
def test_parity_with_vit_pytorch_at_other_sizes(name, shape, ported):
    kwargs = PARITY_CONFIGS[name]
    torch_model, model = ported[name]
    x = images(1, *shape, seed=1)
    assert_parity(core_logits(kwargs, model.module_params()["params"], x), torch_logits(torch_model, x))
    # The port of a module without an image size takes every size the original takes, as its HF class too.
    assert_parity(np.asarray(model(x).logits), torch_logits(torch_model, x))


def test_config_read_off_vit_pytorch_module(ported):
    config = ported["per-stage-windows"][1].config
    assert config.to_module_kwargs() == CrossFormerConfig(**PARITY_CONFIGS["per-stage-windows"]).to_module_kwargs()
    assert config.image_size == 224


def test_from_state_dict_needs_config():
    kwargs = PARITY_CONFIGS["default-windows"]
    torch_model = reference(kwargs, seed=1)
    with pytest.raises(ValueError, match="pass its config"):
        hf_vit_flax.from_vit_pytorch(torch_model.state_dict())
    config = CrossFormerConfig(**kwargs, image_size=448)
    model = hf_vit_flax.from_vit_pytorch(torch_model.state_dict(), config=config)
    x = images(1, 448, 448, seed=2)
    assert_parity(model(x).logits, torch_logits(torch_model, x))
    with pytest.raises(ValueError, match="from_crossformer_checkpoint"):
        hf_vit_flax.from_vit_pytorch(torch_model.state_dict(), config=CrossFormerConfig(**kwargs, style="original"))
    with pytest.raises(ValueError, match=r"not converted: \['extra.weight'\]"):
        hf_vit_flax.from_vit_pytorch({**torch_model.state_dict(), "extra.weight": np.zeros(3)}, config=config)
    with pytest.raises(ValueError, match="wrong shape"):
        wider = CrossFormerConfig(**dict(kwargs, dim=(32, 64, 96, 160)))
        hf_vit_flax.from_vit_pytorch(torch_model.state_dict(), config=wider)


def test_bad_images_name_the_sizes_that_work():
    module = CrossFormer(**PARITY_CONFIGS["default-windows"])
    init = jax.random.key(0)
    with pytest.raises(ValueError, match=r"cannot take 250x250 images.*multiples of 224"):
        jax.eval_shape(module.init, init, jnp.zeros((1, 250, 250, 3)))
    with pytest.raises(ValueError, match=r"cannot take 224x336.*stage-1 feature map would be 56x84"):
        jax.eval_shape(module.init, init, jnp.zeros((1, 224, 336, 3)))
    with pytest.raises(ValueError, match="NCHW"):
        jax.eval_shape(module.init, init, jnp.zeros((1, 3, 224, 224)))
    with pytest.raises(ValueError, match="3-channel"):
        jax.eval_shape(module.init, init, jnp.zeros((1, 224, 224, 1)))
    with pytest.raises(ValueError, match="shape"):
        jax.eval_shape(module.init, init, jnp.zeros((224, 224, 3)))
    # The rule follows the strides and windows: stride products 4, 8, 16, 32 times windows 4, 2, 1, 1.
    small = CrossFormer(dim=32, depth=1, local_window_size=(4, 2, 1, 1), global_window_size=(2, 2, 1, 1), num_classes=2)
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(small.init, init, jnp.zeros((1, 40, 40, 3)))
    assert jax.eval_shape(small.init, init, jnp.zeros((1, 64, 96, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=250), "multiples of 224"),
        (dict(image_size=(224, 230)), "cannot take 224x230"),
        (dict(style="timm"), "style must be one of"),
        (dict(dim=(64, 128, 256)), "one value per stage"),
        (dict(dim=16), "dim 16 is smaller than dim_head 32"),
        (dict(heads=(3, 4, 8, 16)), "not divisible by heads"),
        (dict(cross_embed_kernel_sizes=((2, 4), (2, 4), (2, 4), (2, 4))), "smaller than the stride"),
        (dict(cross_embed_kernel_sizes=(4, 2, 2, 2)), "one sequence of kernel sizes per stage"),
        (dict(style="original", cross_embed_kernel_sizes=((8, 4), (2, 4), (2, 4), (2, 4))), "ascending"),
        (dict(attn_dropout=1.0), "attn_dropout must be"),
        (dict(local_window_size=0), "local_window_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossFormerConfig(**kwargs)


# -- Part B: the original release ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_io():
    from safetensors.numpy import load_file

    io = load_file(str(FIXTURES / "crossformer_tiny_random_io.safetensors"))
    config = json.loads((FIXTURES / "crossformer_tiny_random_config.json").read_text())
    return io, config


@pytest.fixture(scope="module")
def original_forward(fixture_io):
    """One jitted forward (logits, pooled features) of the fixture's configuration, shared by its tests."""
    module = CrossFormer(**CrossFormerConfig.from_original(fixture_io[1]).to_module_kwargs())

    @jax.jit
    def forward(params, x):
        features = module.apply({"params": params}, x, method=CrossFormer.forward_features)
        return module.apply({"params": params}, features.pooler_output, method=CrossFormer.forward_head), features

    return forward


def check_fixture(model, io, forward):
    logits, features = forward(model.module_params()["params"], nhwc(io["pixel_values"]))
    diffs = max_abs_diff(logits, io["logits"]), max_abs_diff(features.pooler_output, io["pooled_features"])
    assert diffs[0] <= 1e-5 and diffs[1] <= 1e-5, f"max |diff| logits {diffs[0]:.2e}, pooled {diffs[1]:.2e}"
    print(f"fixture parity: logits {diffs[0]:.2e}, pooled {diffs[1]:.2e}")
    return diffs


def test_original_fixture_parity_from_pth(fixture_io, original_forward):
    io, config = fixture_io
    model = hf_vit_flax.from_crossformer_checkpoint(FIXTURES / "crossformer_tiny_random.pth", config)
    assert isinstance(model, FlaxCrossFormerForImageClassification) and model.config.style == "original"
    check_fixture(model, io, original_forward)
    # The HF wrapper computes the same logits.
    assert_parity(model(io["pixel_values"]).logits, io["logits"])


@pytest.mark.parametrize("as_numpy", [False, True])
def test_original_fixture_parity_from_state_dict(fixture_io, original_forward, as_numpy):
    io, config = fixture_io
    state_dict = torch.load(FIXTURES / "crossformer_tiny_random.pth", map_location="cpu", weights_only=True)["model"]
    if as_numpy:
        state_dict = {k: v.numpy() for k, v in state_dict.items()}
    model = hf_vit_flax.from_crossformer_checkpoint(state_dict, CrossFormerConfig.from_original(config))
    check_fixture(model, io, original_forward)


def test_original_checkpoint_keys_are_checked(fixture_io):
    _, config = fixture_io
    state_dict = torch.load(FIXTURES / "crossformer_tiny_random.pth", map_location="cpu", weights_only=True)["model"]
    buffers = [k for k in state_dict if k.endswith(("attn.biases", "attn.relative_position_index"))]
    assert len(buffers) == 2 * 5  # dropped by name, both buffers of each of the 5 blocks
    with pytest.raises(ValueError, match=r"unexpected keys \[layers.0.extra.weight\]"):
        hf_vit_flax.from_crossformer_checkpoint({**state_dict, "layers.0.extra.weight": torch.zeros(2)}, config)
    partial = {k: v for k, v in state_dict.items() if not k.startswith("layers.2.blocks.1.mlp")}
    with pytest.raises(ValueError, match=r"missing keys \[layers.2.blocks.1.mlp.fc1.bias"):
        hf_vit_flax.from_crossformer_checkpoint(partial, config)
    with pytest.raises(ValueError, match="style='original'"):
        hf_vit_flax.from_crossformer_checkpoint(state_dict, CrossFormerConfig())


RELEASED = json.loads((FIXTURES / "crossformer_released_shapes.json").read_text())


def zero_state_dict(name):
    record = RELEASED[name]
    return {k: np.zeros(shape, record["state_dict_dtypes"][k]) for k, shape in record["state_dict_shapes"].items()}


@pytest.mark.parametrize("name", ["crossformer-t", "crossformer-s", "crossformer-b", "crossformer-l"])
def test_released_layouts_map_onto_presets(name):
    config = CrossFormerConfig.from_preset(name)
    # The preset is the released constructor config.
    assert config.to_module_kwargs() == CrossFormerConfig.from_original(RELEASED[name]["config"]).to_module_kwargs()
    model = FlaxCrossFormerForImageClassification(config, _do_init=False)  # shapes only (jax.eval_shape)
    expected = model.module_params(model.params_shape_tree)["params"]  # the core module's tree, head included
    # Every learned tensor maps, nothing is missing or left over, every shape agrees.
    check_tree(convert_original(zero_state_dict(name), config), expected, name)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(expected)) == RELEASED[name]["params"]


def test_wrong_preset_names_the_keys():
    # T (depths 1, 1, 8, 6) read as S (2, 2, 6, 2): keys missing and left over.
    with pytest.raises(ValueError, match=r"missing keys \[layers.0.blocks.1.*unexpected keys \[layers.2.blocks.6"):
        hf_vit_flax.from_crossformer_checkpoint(zero_state_dict("crossformer-t"), "crossformer-s")
    # B (dims from 96) read as L (dims from 128): same keys, other shapes.
    with pytest.raises(ValueError, match=r"wrong shape.*crossformer/|wrong shape"):
        hf_vit_flax.from_crossformer_checkpoint(zero_state_dict("crossformer-b"), "crossformer-l")


def test_presets():
    assert set(variant_names("crossformer-")) == {
        "crossformer-t",
        "crossformer-s",
        "crossformer-b",
        "crossformer-l",
    }
    config = CrossFormerConfig.from_preset("crossformer-b", num_classes=10)
    assert config.num_classes == 10 and config.depth == [2, 2, 18, 2]
    # The released models' configs write the original release's options out instead of naming its preset.
    assert config.style is None and check_original_options(config)["position_bias_reduction"] == 16
    assert config.image_processor_kwargs()["image_mean"] == [0.485, 0.456, 0.406]
    with pytest.raises(ValueError, match=r"unknown CrossFormer preset 'crossformer-xl'; available: \['crossformer-b'"):
        CrossFormerConfig.from_preset("crossformer-xl")
    with pytest.raises(ValueError, match="ape=True is not supported"):
        CrossFormerConfig.from_original({"ape": True})


def test_original_style_other_sizes_and_training():
    # A tiny original-style model at 112: the last map (3x3) is smaller than the group size 7, so the
    # release attends over it as one whole-map group; stochastic depth makes training stochastic.
    config = CrossFormerConfig.from_original(
        dict(
            embed_dim=32,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 4, 8],
            merge_size=[[2, 4]] * 3,
            patch_size=[4, 8, 16, 32],
            num_classes=3,
            drop_path_rate=0.3,
        )
    )
    module = CrossFormer(**config.to_module_kwargs())
    x = jnp.asarray(images(2, 112, 112, seed=7).transpose(0, 2, 3, 1))
    # Random parameters of the right shapes, without compiling the initialisers.
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), jnp.float32), shapes)
    flat = flatten_dict(variables["params"], sep="/")
    assert {"norm/scale", "stages_1/embed/norm/scale", "stages_0/blocks_0/attn/qkv/bias"} <= set(flat)
    features = jax.jit(lambda v, x: module.apply(v, x, method=CrossFormer.forward_features, output_attentions=True))
    out = features(variables, x)
    assert out.attentions[-1].shape == (2, 1, 8, 9, 9) and out.attentions[-2].shape == (2, 1, 8, 9, 9)
    assert out.attentions[0].shape == (2, 16, 1, 49, 49) and out.attentions[1].shape == (2, 16, 1, 49, 49)
    # Gradient checkpointing keeps the parameter paths and the function; param_dtype reaches every parameter.
    remat = CrossFormer(**config.to_module_kwargs(), remat=True)
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) == jax.tree.structure(shapes)
    expected = module.apply(variables, out.pooler_output, method=CrossFormer.forward_head)
    np.testing.assert_allclose(jax.jit(remat.apply)(variables, x), expected, atol=1e-5)
    half = CrossFormer(**config.to_module_kwargs(), param_dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(jax.eval_shape(half.init, jax.random.key(0), x))} == {
        jnp.dtype(jnp.bfloat16)
    }
    train = jax.jit(lambda v, x, key: module.apply(v, x, train=True, rngs={"dropout": key}))
    assert not np.allclose(train(variables, x, jax.random.key(1)), train(variables, x, jax.random.key(2)))
    with pytest.raises(ValueError, match="multiples of 224"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 120, 120, 3)))


def test_image_size_sets_the_processor_not_a_limit(ported):
    torch_model = ported["default-windows"][0]
    model = hf_vit_flax.from_vit_pytorch(torch_model, image_size=448)
    assert model.config.image_size == 448
    assert model.image_processor.size == {"height": 448, "width": 448}
    x = images(1, 224, 224, seed=2)
    assert_parity(np.asarray(model(x).logits), torch_logits(torch_model, x))
    with pytest.raises(ValueError, match="CrossFormer cannot take 200x200 images"):
        model(images(1, 200, 200))
