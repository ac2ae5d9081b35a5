"""CaiT: parity with vit-pytorch's CaiT and timm's Cait, the seed README snippet, layer dropout, the HF wrappers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from vit_pytorch import cait as vit_pytorch

import hf_vit_flax
from hf_vit_flax import CaiT, CaiTConfig, FlaxCaiTForImageClassification, FlaxCaiTModel
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.models.cait.convert_cait import config_from_timm, convert_timm
from hf_vit_flax.models.cait.modeling_flax_cait import CaiTStack, LayerScaleBlock, TalkingHeadAttention
from tests.helpers import (
    CAIT_SMALL,
    assert_parity,
    images,
    randomize_,
    seed_readme_examples,
    torch_logits,
)

PARITY_CONFIGS = {
    "small": CAIT_SMALL,
    "default-dim-head-64": dict(
        image_size=32, patch_size=16, num_classes=7, dim=48, depth=3, cls_depth=1, heads=3, mlp_dim=96
    ),
    "single-head": dict(
        image_size=16, patch_size=4, num_classes=4, dim=32, depth=2, cls_depth=2, heads=1, mlp_dim=48, dim_head=32
    ),
    "dropouts-off-in-eval": dict(
        image_size=24,
        patch_size=8,
        num_classes=5,
        dim=32,
        depth=2,
        cls_depth=1,
        heads=4,
        mlp_dim=64,
        dim_head=8,
        dropout=0.1,
        emb_dropout=0.1,
    ),
    # 26 layers reach the three LayerScale init regimes of vit-pytorch (<= 18, 19-24, > 24).
    "deep-layer-scale-regimes": dict(
        image_size=16, patch_size=8, num_classes=3, dim=16, depth=26, cls_depth=2, heads=2, mlp_dim=32, dim_head=8
    ),
}


def reference(kwargs, seed=0):
    return randomize_(vit_pytorch.CaiT(**kwargs), seed)


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


# The core module runs eagerly in these tests: compiling each small model once costs more than it saves.
def init_params(module, shape, seed=0):
    return module.init(jax.random.key(seed), jnp.zeros(shape))["params"]


def apply(module, params, x, **kwargs):
    return module.apply({"params": params}, nhwc(x), **kwargs)


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def layer_scale_values(params, stack):
    """Per layer of a stack: the (single) value of ls1 and of ls2 when they are constant."""
    blocks = params[stack]
    out = []
    for i in range(len(blocks)):
        gammas = [np.asarray(blocks[f"blocks_{i}"][name]["gamma"]) for name in ("ls1", "ls2")]
        assert all(np.all(g == g.flat[0]) for g in gammas)
        out.append(tuple(float(g.flat[0]) for g in gammas))
    return out


EXPECTED_REGIMES = [(0.1, 0.1)] * 18 + [(1e-5, 1e-5)] * 6 + [(1e-6, 1e-6)] * 2


# -- vit-pytorch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_parity_with_vit_pytorch(name):
    kwargs = PARITY_CONFIGS[name]
    torch_model = reference(kwargs)
    x = images(2, kwargs["image_size"], kwargs["image_size"])
    expected = torch_logits(torch_model, x)

    model = hf_vit_flax.from_vit_pytorch(torch_model)
    assert isinstance(model, FlaxCaiTForImageClassification)
    assert model.config.to_module_kwargs()["dim_head"] == kwargs.get("dim_head", 64)
    assert_parity(model(x).logits, expected)

    # The core module holds the same parameters and computes the same function (NHWC in).
    assert_parity(apply(CaiT(**kwargs), model.module_params()["params"], x), expected)


def test_converted_layer_scale_follows_vit_pytorch_regimes():
    kwargs = PARITY_CONFIGS["deep-layer-scale-regimes"]
    fresh = vit_pytorch.CaiT(**kwargs).eval()  # not randomised: LayerScale holds its initial values
    model = hf_vit_flax.from_vit_pytorch(fresh)
    params = model.params["cait"]
    values = layer_scale_values(params, "patch_transformer")
    assert values == [(pytest.approx(a), pytest.approx(b)) for a, b in EXPECTED_REGIMES]
    assert len({v[0] for v in values}) == 3  # three distinct regimes
    # The index counts within each stack: the class-attention layers are its layers 1 and 2.
    assert layer_scale_values(params, "cls_transformer") == [(pytest.approx(0.1), pytest.approx(0.1))] * 2
    x = images(2, 16, 16, seed=3)
    np.testing.assert_allclose(model(x).logits, torch_logits(fresh, x), atol=1e-5)


def test_fresh_flax_layer_scale_follows_vit_pytorch_regimes():
    kwargs = PARITY_CONFIGS["deep-layer-scale-regimes"]
    params = init_params(CaiT(**kwargs), (1, 16, 16, 3))
    assert layer_scale_values(params, "patch_transformer") == [
        (pytest.approx(a), pytest.approx(b)) for a, b in EXPECTED_REGIMES
    ]
    assert layer_scale_values(params, "cls_transformer") == [(pytest.approx(0.1), pytest.approx(0.1))] * 2
    # An explicit layer_scale_init (timm's init_values) overrides the rule.
    constant = init_params(CaiT(**kwargs, layer_scale_init=1e-4), (1, 16, 16, 3))
    np.testing.assert_allclose(layer_scale_values(constant, "patch_transformer"), 1e-4, rtol=1e-6)


def test_fresh_flax_init_is_not_degenerate():
    # The talking-heads matrices start like vit-pytorch's torch.randn (not zero, which makes the output 0).
    kwargs = PARITY_CONFIGS["small"]
    module = CaiT(**kwargs)
    params = init_params(module, (1, 32, 32, 3))
    mix = np.stack(
        [
            np.asarray(params["patch_transformer"][f"blocks_{i}"]["attn"][n]["kernel"])
            for i in range(2)
            for n in ("proj_l", "proj_w")
        ]
    )
    assert mix.shape == (4, 2, 2) and 0.3 < mix.std() < 3
    assert np.std(np.asarray(params["cls_token"])) > 0.3 and np.std(np.asarray(params["pos_embedding"])) > 0.3
    for ln in (params["norm"], params["patch_embed"]["norm"], params["patch_transformer"]["blocks_0"]["norm1"]):
        assert set(ln) == {"scale", "bias"}
    logits = apply(module, params, images(2, 32, 32))
    assert float(jnp.abs(logits).max()) > 1e-3


def test_converter_names_unconverted_and_misshaped_keys():
    kwargs = PARITY_CONFIGS["small"]
    state_dict = reference(kwargs).state_dict()
    with pytest.raises(ValueError, match="not converted"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=CaiTConfig(**dict(kwargs, depth=1)))
    with pytest.raises(ValueError, match="wrong shape"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=CaiTConfig(**dict(kwargs, mlp_dim=128)))
    with pytest.raises(ValueError, match="style='vit_pytorch'"):
        hf_vit_flax.from_vit_pytorch(state_dict, config=CaiTConfig(**kwargs, style="timm"))


def test_headless_vit_pytorch_model_becomes_base_model():
    kwargs = dict(PARITY_CONFIGS["small"], num_classes=0)
    torch_model = reference(kwargs, seed=2)
    model = hf_vit_flax.from_vit_pytorch(torch_model)
    assert isinstance(model, FlaxCaiTModel) and "head" not in model.params
    x = images(2, 32, 32)
    # vit-pytorch's head LayerNorm on the class-attention output is our pooler output.
    with torch.inference_mode():
        ref = torch_model
        patches = ref.patch_transformer(ref.dropout(ref.to_patch_embedding(torch.from_numpy(x)) + ref.pos_embedding))
        cls = ref.cls_transformer(ref.cls_token.expand(2, -1, -1), context=patches)
        expected = ref.mlp_head[0](cls[:, 0]).numpy()
    out = model(x)
    np.testing.assert_allclose(out.pooler_output, expected, atol=1e-5)
    assert out.last_hidden_state.shape == (2, 17, 32)
    tokens = apply(CaiT(**kwargs), model.module_params()["params"], x)
    np.testing.assert_allclose(tokens, out.last_hidden_state, atol=1e-6)


def test_seed_readme_snippet_runs_as_written_on_a_small_model():
    key = jax.random.PRNGKey(0)
    img = jax.random.normal(key, (1, 32, 32, 3))
    # The README's example at a small size: its cls_depth and dropouts as written.
    small = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=3, heads=2, mlp_dim=64)
    v = CaiT(**{**seed_readme_examples()["CaiT"], **small})
    init_rngs = {
        "params": jax.random.PRNGKey(1),
        "dropout": jax.random.PRNGKey(2),
        "emb_dropout": jax.random.PRNGKey(3),
    }
    params = v.init(init_rngs, img)
    output = v.apply(params, img, rngs=init_rngs)
    assert output.shape == (1, 10) and np.all(np.isfinite(output)) and float(jnp.abs(output).max()) > 1e-3
    n_params_flax = sum(jax.tree.leaves(jax.tree.map(lambda x: np.prod(x.shape), params)))
    kwargs = {
        k: getattr(v, k)
        for k in ("image_size", "patch_size", "num_classes", "dim", "depth", "cls_depth", "heads", "mlp_dim")
    }
    assert n_params_flax == sum(p.numel() for p in vit_pytorch.CaiT(**kwargs).parameters())
    np.testing.assert_array_equal(output, v.apply(params, img, rngs=init_rngs))  # eval: deterministic


# -- layer dropout ----------------------------------------------------------------------------------

LAYER_DROP = dict(PARITY_CONFIGS["small"], depth=6, cls_depth=3, layer_dropout=0.5)


def test_layer_dropout_is_stochastic_in_training_and_deterministic_in_eval():
    module = CaiT(**LAYER_DROP)
    x = nhwc(images(2, 32, 32))
    variables = module.init(jax.random.key(0), x)
    # Every layer's parameters exist: the same tree as without layer dropout.
    plain = jax.eval_shape(CaiT(**dict(LAYER_DROP, layer_dropout=0.0)).init, jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(plain) and count(variables) == count(plain)
    assert len(variables["params"]["patch_transformer"]) == 6 and len(variables["params"]["cls_transformer"]) == 3

    np.testing.assert_array_equal(module.apply(variables, x), module.apply(variables, x))
    with pytest.raises(Exception, match="dropout"):
        module.apply(variables, x, train=True)  # training needs a 'dropout' rng

    def train(key):
        return module.apply(variables, x, train=True, rngs={"dropout": key})

    outs = [train(jax.random.key(i)) for i in range(4)]
    assert not all(np.allclose(outs[0], o) for o in outs[1:])
    again = train(jax.random.key(0))
    np.testing.assert_array_equal(outs[0], again)  # the same rng drops the same layers


def test_layer_dropout_drops_whole_layers_like_vit_pytorch():
    # With the other dropouts off, training with a given mask computes vit-pytorch's CaiT with exactly the
    # dropped layers removed (vit-pytorch draws its own mask, so the kept layers are given to it here).
    kwargs = dict(LAYER_DROP, dim_head=16)
    torch_model = reference({k: v for k, v in kwargs.items() if k != "layer_dropout"}, seed=4)
    model = hf_vit_flax.from_vit_pytorch(torch_model)
    x = images(2, 32, 32, seed=5)
    module = CaiT(**kwargs)
    variables = model.module_params()

    def train(key):
        return module.apply(variables, nhwc(x), train=True, rngs={"dropout": key}, mutable=["intermediates"])

    seen_drops = 0
    for seed in range(6):
        logits, state = train(jax.random.key(seed))
        kept = {k: np.asarray(v["kept_layers"][0]) for k, v in state["intermediates"].items()}
        assert kept["patch_transformer"].shape == (6,) and kept["cls_transformer"].shape == (3,)
        seen_drops += int((~kept["patch_transformer"]).sum() + (~kept["cls_transformer"]).sum())
        for stack in ("patch_transformer", "cls_transformer"):
            all_layers = getattr(torch_model, stack).layers
            getattr(torch_model, stack).layers = torch.nn.ModuleList(
                [layer for layer, keep in zip(all_layers, kept[stack], strict=True) if keep]
            )
            getattr(torch_model, stack)._all = all_layers
        try:
            np.testing.assert_allclose(logits, torch_logits(torch_model, x), atol=1e-5)
        finally:
            for stack in ("patch_transformer", "cls_transformer"):
                getattr(torch_model, stack).layers = getattr(torch_model, stack)._all
    assert seen_drops > 0


def small_stack(depth, layer_dropout):
    # A stack of self-attention layers of width 8 (one head), built as CaiT builds its stacks.
    block = functools.partial(LayerScaleBlock, 8, 8, functools.partial(TalkingHeadAttention, 8, 1, 8))
    return CaiTStack(block, depth, layer_dropout=layer_dropout)


def test_layer_dropout_keeps_at_least_one_layer():
    stack = small_stack(depth=3, layer_dropout=0.999)
    variables = stack.init(jax.random.key(0), jnp.zeros((1, 2, 8)))

    def kept(seed):
        return stack.apply(variables, method=CaiTStack.kept_layers, rngs={"dropout": jax.random.key(seed)})

    masks = np.stack([np.asarray(kept(seed)) for seed in range(40)])
    assert np.all(masks.sum(axis=1) == 1)  # almost surely all dropped, then one rescued
    assert len({int(m.argmax()) for m in masks}) > 1  # the rescued layer is random
    half = small_stack(depth=8, layer_dropout=0.5)
    rates = [
        np.asarray(half.apply(variables, method=CaiTStack.kept_layers, rngs={"dropout": jax.random.key(s)}))
        for s in range(50)
    ]
    assert 0.35 < np.mean(rates) < 0.65


# -- the config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30, patch_size=8), "not divisible"),
        (dict(cls_depth=0), "cls_depth must be a positive"),
        (dict(heads=0), "heads must be a positive"),
        (dict(layer_dropout=1.0), "layer_dropout must be"),
        (dict(dropout=-0.1), "dropout must be"),
        (dict(style="deit"), "style must be 'vit_pytorch'"),
        (dict(layer_scale_init=0.0), "layer_scale_init must be positive"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaiTConfig(**kwargs)


def test_default_config_is_the_seed_readme_model():
    assert CaiTConfig().to_module_kwargs()["depth"] == seed_readme_examples()["CaiT"]["depth"]


# -- timm -------------------------------------------------------------------------------------------

# The rectangular, one-channel, no-qkv-bias layout with its own MLP ratios goes through the same checks in
# test_cait_weights.py (converted, parity, exported back).
TIMM_CONFIGS = {
    "tiny": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10, depth_token_only=2),
}


def timm_model(kwargs, seed=0):
    from timm.models.cait import Cait

    return randomize_(Cait(**kwargs), seed)


def port_timm(torch_model):
    config = config_from_timm(torch_model)
    params = convert_timm({k: v.numpy() for k, v in torch_model.state_dict().items()}, config)
    return FlaxCaiTForImageClassification.from_params(config, params)


def timm_parity(torch_model, height, width, channels=3):
    x = images(2, height, width, channels, seed=7)
    expected = torch_logits(torch_model, x)
    model = port_timm(torch_model)
    diff = assert_parity(model(x).logits, expected)
    assert_parity(apply(CaiT(**model.config.to_module_kwargs()), model.module_params()["params"], x), expected)
    return model, diff


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_parity_with_timm(name):
    kwargs = TIMM_CONFIGS[name]
    height, width = kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (kwargs["img_size"],) * 2
    model, _ = timm_parity(timm_model(kwargs), height, width, kwargs.get("in_chans", 3))
    config = model.config
    assert config.style == "timm" and config.layer_norm_eps == 1e-6
    assert config.qkv_bias == kwargs.get("qkv_bias", True)


def test_parity_with_timm_cait_xxs24():
    # cait_xxs24_224's architecture (dim 192, 24 + 2 layers, 4 heads) on 64x64 images to keep it cheap.
    torch_model = randomize_(timm.create_model("cait_xxs24_224", pretrained=False, img_size=64, num_classes=10), 1)
    model, _ = timm_parity(torch_model, 64, 64)
    assert (model.config.dim, model.config.depth, model.config.cls_depth, model.config.heads) == (192, 24, 2, 4)


def test_timm_config_reads_init_values_and_drop_rates():
    kwargs = dict(
        TIMM_CONFIGS["tiny"],
        init_values=1e-5,
        drop_path_rate=0.1,
        proj_drop_rate=0.2,
        attn_drop_rate=0.3,
        pos_drop_rate=0.05,
    )
    from timm.models.cait import Cait

    config = config_from_timm(Cait(**kwargs))
    assert config.layer_scale_init == pytest.approx(1e-5)
    assert (config.drop_path_rate, config.dropout, config.attn_dropout, config.emb_dropout) == (0.1, 0.2, 0.3, 0.05)
    module = CaiT(**config.to_module_kwargs())
    fresh = init_params(module, (1, 32, 32, 3))
    np.testing.assert_allclose(layer_scale_values(fresh, "patch_transformer"), 1e-5, rtol=1e-6)
    # drop path (and dropout) act only when training.
    x = images(2, 32, 32)
    a, b = (apply(module, fresh, x, train=True, rngs={"dropout": jax.random.key(s)}) for s in (0, 1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(apply(module, fresh, x), apply(module, fresh, x))


def test_timm_converter_is_strict():
    torch_model = timm_model(TIMM_CONFIGS["tiny"])
    config = config_from_timm(torch_model)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    with pytest.raises(ValueError, match="not converted"):
        convert_timm(state_dict, CaiTConfig(**{**config.to_dict(), "depth": 1}))
    with pytest.raises(ValueError, match="style='timm'"):
        convert_timm(state_dict, CaiTConfig(**{**config.to_dict(), "style": "vit_pytorch"}))
    with pytest.raises(ValueError, match="wrong shape"):
        FlaxCaiTForImageClassification.from_params(
            CaiTConfig(**{**config.to_dict(), "mlp_dim": 64}), convert_timm(state_dict, config)
        )
    from timm.models.cait import Cait

    with pytest.raises(NotImplementedError, match="global_pool"):
        config_from_timm(Cait(**TIMM_CONFIGS["tiny"], global_pool="avg"))


def test_timm_style_saves_and_loads(tmp_path):
    from hf_vit_flax import FlaxAutoModelForImageClassification

    model = port_timm(timm_model(TIMM_CONFIGS["tiny"], seed=2))
    model.save_pretrained(tmp_path)
    loaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.style == "timm" and loaded.config.qkv_bias
    x = images(2, 32, 32)
    np.testing.assert_array_equal(loaded(x).logits, model(x).logits)


def test_family_row():
    family = FAMILIES["cait"]
    assert family.vit_pytorch_class == "vit_pytorch.cait.CaiT"
    assert family.timm_prefixes == ("cait_",)
    assert family.config_from_timm is config_from_timm and family.convert_timm is convert_timm


@pytest.mark.parametrize("name", timm.list_models("cait_*"))
def test_parameter_count_matches_timm(name):
    with torch.device("meta"):
        torch_model = timm.create_model(name, pretrained=False)
    config = config_from_timm(torch_model)
    assert config.style == "timm"
    model = FlaxCaiTForImageClassification(config, _do_init=False)
    assert count(model.params_shape_tree) == sum(p.numel() for p in torch_model.parameters())
