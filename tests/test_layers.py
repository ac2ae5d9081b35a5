"""The shared layers (``hf_vit_flax.layers``) against PyTorch's own, and the weight tables that map them.

Each layer computes what its PyTorch counterpart computes (float32, 1e-5 or better), reading the PyTorch
weights through the table beside it (``hf_vit_flax.weight_tables``), which must also write them back
unchanged. The families' parity tests check whole models; these pin down a failure to one layer.
"""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax.traverse_util import flatten_dict

from hf_vit_flax import weight_tables as wt
from hf_vit_flax.layers import (
    ACTIVATIONS,
    TIMM_BLOCK,
    VIT_PYTORCH_BLOCK,
    Attention,
    AttentionPoolLatent,
    ConvPatchEmbedding,
    Dense,
    DropPath,
    LayerNorm,
    PatchEmbedding,
    Transformer,
    TransformerBlock,
    attend,
    attention_pool_table,
    block_table,
    conv_patch_embedding_table,
    gelu,
    norm_factory,
    patch_embedding_table,
    patchify,
    quick_gelu,
    remat_if,
    transformer_table,
)
from tests.helpers import randomize_


def rand(*shape, seed=0, scale=1.0, offset=0.0):
    return (offset + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def torch_state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def read_through(table, module, prefix=""):
    """Randomise ``module``; its state dict (keys under ``prefix``) through ``table``, strictly, as Flax
    variables; and the same table must write that state dict back unchanged."""
    randomize_(module)
    state = {wt.join(prefix, k, "."): v for k, v in torch_state(module).items()}
    params = wt.to_flax(state, table, what=type(module).__name__)
    exported = wt.to_torch(params, table)
    assert exported.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    return {"params": params[prefix] if prefix else params}


def run_torch(module, *inputs):
    with torch.inference_mode():
        return module(*(torch.from_numpy(np.asarray(x)) for x in inputs)).numpy()


# -- LayerNorm and activations ------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_layer_norm_is_torch_layer_norm(eps):
    x = rand(4, 7, 48, scale=2.0, offset=3.0)
    reference = torch.nn.LayerNorm(48, eps=eps)
    params = read_through(wt.norm("ln", "ln"), reference, "ln")
    ours = LayerNorm(epsilon=eps).apply(params, x)
    np.testing.assert_allclose(ours, run_torch(reference, x), atol=1e-5)
    # The norm factory carries eps and the dtypes; statistics stay in float32 under a bfloat16 computation.
    half = norm_factory(eps, dtype=jnp.bfloat16)()
    assert (half.epsilon, half.dtype, half.param_dtype) == (eps, jnp.bfloat16, jnp.float32)
    out = half.apply(params, jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    rounded = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)
    np.testing.assert_allclose(np.asarray(out, np.float32), run_torch(reference, rounded), atol=0.05)


def test_activations_are_torch_activations():
    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    assert set(ACTIVATIONS) == {"gelu", "gelu_tanh", "quick_gelu"}
    np.testing.assert_allclose(gelu(x), run_torch(torch.nn.GELU(), x), atol=2e-6)  # exact erf, not tanh
    assert ACTIVATIONS["gelu"] is gelu and ACTIVATIONS["quick_gelu"] is quick_gelu
    np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](x), run_torch(torch.nn.GELU(approximate="tanh"), x), atol=2e-6)
    np.testing.assert_allclose(quick_gelu(x), run_torch(lambda t: t * torch.sigmoid(1.702 * t), x), atol=2e-6)
    # flax's default GELU is the tanh form: the gap the exact one closes.
    assert float(np.max(np.abs(jax.nn.gelu(x) - gelu(x)))) > 1e-4


@pytest.mark.parametrize("shape", [(5, 12), (2, 7, 12), (2, 3, 4, 12)])
def test_dense_is_torch_linear_in_values_and_gradients(shape):
    """The shared Dense merges the input's leading axes for XLA's sake: the function and its gradients (with
    respect to the input, the kernel and the bias) are torch.nn.Linear's."""
    x = rand(*shape)
    reference = torch.nn.Linear(12, 20)
    params = read_through(wt.linear("fc", "fc"), reference, "fc")
    ours = Dense(20)
    np.testing.assert_allclose(ours.apply(params, x), run_torch(reference, x), atol=1e-5)

    cotangent = rand(*shape[:-1], 20, seed=1)
    grads = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * cotangent), argnums=(0, 1))(params, x)
    tx = torch.from_numpy(x).requires_grad_()
    (reference(tx) * torch.from_numpy(cotangent)).sum().backward()
    np.testing.assert_allclose(grads[1], tx.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(grads[0]["params"]["kernel"], reference.weight.grad.numpy().T, atol=1e-5)
    np.testing.assert_allclose(grads[0]["params"]["bias"], reference.bias.grad.numpy(), atol=1e-5)


# -- attention ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
def test_attend_is_torch_scaled_dot_product_attention(with_bias):
    q, k, v = (rand(2, 3, 5 + 2 * (i > 0), 8, seed=i) for i in range(3))  # (batch, heads, tokens, head_dim)
    bias = rand(1, 3, 5, 7, seed=3) if with_bias else None
    expected = run_torch(
        lambda q, k, v, *b: F.scaled_dot_product_attention(q, k, v, attn_mask=b[0] if b else None, scale=0.3),
        q,
        k,
        v,
        *([bias] if with_bias else []),
    )
    heads_major, weights = attend(q, k, v, scale=0.3, bias=bias, heads_major=True, return_weights=True)
    np.testing.assert_allclose(heads_major, expected.transpose(0, 2, 1, 3), atol=1e-6)
    tokens_major, _ = attend(*(t.transpose(0, 2, 1, 3) for t in (q, k, v)), scale=0.3, bias=bias)
    np.testing.assert_array_equal(tokens_major, heads_major)  # output is (batch, tokens, heads, head_dim) either way
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) * 0.3 + (0 if bias is None else bias)
    np.testing.assert_allclose(weights, run_torch(lambda t: t.softmax(-1), logits), atol=1e-6)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_attention_is_timm_attention(qkv_bias):
    from timm.layers import Attention as TimmAttention

    reference = TimmAttention(32, num_heads=4, qkv_bias=qkv_bias)
    params = read_through([*wt.linear("qkv", "qkv", bias=qkv_bias), *wt.linear("proj", "proj")], reference)
    x = rand(2, 9, 32)
    out, weights = Attention(32, heads=4, dim_head=8, qkv_bias=qkv_bias).apply(params, x, output_attentions=True)
    np.testing.assert_allclose(out, run_torch(reference, x), atol=1e-5)
    assert weights.shape == (2, 4, 9, 9)


# -- blocks, stacks, pooling --------------------------------------------------------------------------------


def test_transformer_block_is_timm_block_with_layer_scale():
    from timm.models.vision_transformer import Block

    reference = Block(32, num_heads=4, mlp_ratio=2.0, qkv_bias=True, init_values=1e-5)
    params = read_through(block_table("", "", TIMM_BLOCK, layer_scale=True), reference)
    block = TransformerBlock(
        32, heads=4, dim_head=8, mlp_dim=64, qkv_bias=True, norm_layer=norm_factory(1e-6), layer_scale_init=1e-5
    )
    x = rand(2, 9, 32)
    out, _ = block.apply(params, x)
    np.testing.assert_allclose(out, run_torch(reference, x), atol=1e-5)


def test_transformer_is_vit_pytorch_transformer():
    from vit_pytorch.vit import Transformer as Reference

    reference = Reference(32, 2, heads=4, dim_head=8, mlp_dim=64)
    params = read_through(transformer_table("", "", 2, VIT_PYTORCH_BLOCK, qkv_bias=False), reference)
    x = rand(2, 9, 32)
    block = functools.partial(TransformerBlock, 32, heads=4, dim_head=8, mlp_dim=64)
    out, hidden_states, _ = Transformer(block, 2).apply(params, x, output_hidden_states=True)
    np.testing.assert_allclose(out, run_torch(reference, x), atol=1e-5)
    assert len(hidden_states) == 3  # the input and each block's output


def test_attention_pooling_is_timm_attention_pool_latent():
    from timm.layers import AttentionPoolLatent as Reference

    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    reference = Reference(32, num_heads=4, mlp_ratio=2.0, norm_layer=norm)
    params = read_through(attention_pool_table("pool", "pool"), reference, "pool")
    x = rand(2, 9, 32)
    out = AttentionPoolLatent(32, heads=4, mlp_dim=64, norm_layer=norm_factory(1e-6)).apply(params, x)
    np.testing.assert_allclose(out, run_torch(reference, x), atol=1e-5)


def test_remat_changes_neither_parameters_nor_results():
    x = jnp.asarray(rand(2, 9, 16))
    kwargs = dict(dim=16, heads=2, dim_head=8, mlp_dim=32)
    plain = Transformer(functools.partial(TransformerBlock, **kwargs), depth=1)
    remat = Transformer(functools.partial(remat_if(TransformerBlock, True), **kwargs), depth=1)
    params = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) == jax.tree.structure(params)

    @functools.partial(jax.jit, static_argnums=0)
    def run(module, params):
        def loss(params):
            out, hidden_states, attentions = module.apply(params, x, output_hidden_states=True, output_attentions=True)
            return jnp.sum(out**2), (out, hidden_states, attentions)

        return jax.grad(loss, has_aux=True)(params)

    for a, b in zip(jax.tree.leaves(run(plain, params)), jax.tree.leaves(run(remat, params)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_drop_path_drops_whole_samples_only_when_training():
    x = jnp.ones((2000, 3, 4))
    drop = DropPath(0.25)
    np.testing.assert_array_equal(drop.apply({}, x), x)  # evaluation: the identity, no rng needed
    np.testing.assert_array_equal(DropPath(0.0).apply({}, x, deterministic=False), x)
    with pytest.raises(Exception, match="dropout"):
        drop.apply({}, x, deterministic=False)  # training needs a 'dropout' rng

    def train(seed):
        return np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)}))

    out = train(0)
    per_sample = out.reshape(len(out), -1)
    # Each sample is dropped whole or kept and scaled by 1 / keep, so the expectation is unchanged.
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 0.22 < np.mean(per_sample[:, 0] == 0) < 0.28
    np.testing.assert_array_equal(train(0), out)
    assert not np.array_equal(train(1), out)


# -- patch embeddings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(4, 4), (4, 8)])
def test_patchify_has_vit_pytorch_feature_order(patch):
    nchw = rand(2, 3, 16, 32)
    expected = einops.rearrange(nchw, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch[0], p2=patch[1])
    np.testing.assert_array_equal(patchify(jnp.asarray(nchw.transpose(0, 2, 3, 1)), patch), expected)


def test_patch_embedding_is_vit_pytorch_patch_embedding():
    from vit_pytorch.vit import ViT

    # vit-pytorch's Sequential(Rearrange, LayerNorm, Linear, LayerNorm)
    reference = ViT(image_size=(16, 32), patch_size=(4, 8), num_classes=1, dim=24, depth=1, heads=1, mlp_dim=8)
    embed = reference.to_patch_embedding
    params = read_through(patch_embedding_table("embed", "embed"), embed, "embed")
    nchw = rand(2, 3, 16, 32)
    ours = PatchEmbedding(24, (4, 8)).apply(params, jnp.asarray(nchw.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(ours, run_torch(embed, nchw), atol=1e-5)


def test_conv_patch_embedding_is_timm_patch_embed():
    from timm.layers import PatchEmbed

    reference = PatchEmbed(img_size=(16, 32), patch_size=(4, 8), in_chans=3, embed_dim=24)
    params = read_through(conv_patch_embedding_table("embed", "embed"), reference, "embed")
    nchw = rand(2, 3, 16, 32)
    ours = ConvPatchEmbedding(24, (4, 8)).apply(params, nchw.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(ours, run_torch(reference, nchw), atol=1e-5)


# -- weight tables ------------------------------------------------------------------------------------------


def test_transforms_invert():
    arrays = {
        wt.COPY: rand(5),
        wt.LINEAR: rand(6, 4),
        wt.CONV: rand(8, 3, 2, 5),
        wt.TOKEN: rand(1, 7, 4),
        wt.flatten_to((1, 1, 6)): rand(1, 1, 6),
    }
    for transform, array in arrays.items():
        np.testing.assert_array_equal(transform.inverse(transform.forward(array)), array, err_msg=transform.name)
    assert wt.LINEAR.forward(arrays[wt.LINEAR]).shape == (4, 6)
    assert wt.CONV.forward(arrays[wt.CONV]).shape == (2, 5, 3, 8)  # (O, I, kh, kw) -> (kh, kw, I, O)
    assert wt.TOKEN.forward(arrays[wt.TOKEN]).shape == (7, 4)


TABLE = [
    *wt.linear("fc", "mlp/fc"),
    *wt.linear("qkv", "attn/qkv", bias=False),
    *wt.conv("stem.proj", "stem/proj"),
    *wt.norm("norm", "norm", bias=False),
    *wt.norm("ln", "ln2", weight="gamma", bias_name="beta"),
    *wt.param("cls_token", "cls_token", wt.TOKEN),
    *wt.prefixed(wt.param("gamma", "ls/gamma", wt.flatten_to((1, 1, 4))), "blocks.0", "blocks_0"),
]
STATE = {
    "fc.weight": rand(6, 4, seed=1),
    "fc.bias": rand(6, seed=2),
    "qkv.weight": rand(12, 4, seed=3),
    "stem.proj.weight": rand(4, 3, 2, 2, seed=4),
    "stem.proj.bias": rand(4, seed=5),
    "norm.weight": rand(4, seed=6),
    "ln.gamma": rand(4, seed=7),
    "ln.beta": rand(4, seed=8),
    "cls_token": rand(1, 1, 4, seed=9),
    "blocks.0.gamma": rand(1, 1, 4, seed=10),
}


def test_to_flax_and_to_torch_round_trip():
    params = wt.to_flax(STATE, TABLE, what="test")
    assert sorted("/".join(k) for k in flatten_dict(params)) == sorted(e.flax for e in TABLE)
    assert params["mlp"]["fc"]["kernel"].shape == (4, 6) and params["stem"]["proj"]["kernel"].shape == (2, 2, 3, 4)
    assert params["blocks_0"]["ls"]["gamma"].shape == (4,) and params["ln2"]["scale"] is not None
    back = wt.to_torch(params, TABLE)
    assert back.keys() == STATE.keys()
    for key, value in STATE.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    again = wt.to_flax(back, TABLE, what="test")
    for (path, a), (_, b) in zip(
        sorted(flatten_dict(params).items()), sorted(flatten_dict(again).items()), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_to_flax_is_strict():
    missing = {k: v for k, v in STATE.items() if k != "fc.bias"}
    with pytest.raises(ValueError, match=r"test: the checkpoint has no key 'fc.bias'\. It does not match"):
        wt.to_flax(missing, TABLE, what="test")
    with pytest.raises(ValueError, match=r"1 checkpoint keys were not converted: \['head.weight'\]"):
        wt.to_flax({**STATE, "head.weight": rand(2)}, TABLE, what="test")
    # Keys dropped on purpose are named.
    wt.to_flax({**STATE, "head.weight": rand(2)}, TABLE, what="test", ignore=["head.weight"])


def test_to_torch_is_strict():
    params = wt.to_flax(STATE, TABLE, what="test")
    with pytest.raises(ValueError, match=r"1 parameters have no PyTorch name: \['extra/kernel'\]"):
        wt.to_torch({**params, "extra": {"kernel": np.zeros(2)}}, TABLE)
    without_norm = {k: v for k, v in params.items() if k != "norm"}
    with pytest.raises(ValueError, match=r"the parameters have no norm/scale \(1 missing\)"):
        wt.to_torch(without_norm, TABLE)
