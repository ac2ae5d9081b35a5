"""Scaled dot-product attention and multi-head self-attention."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .linear import Dense

Dtype = Any


def _cudnn_or_xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    try:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):  # no cuDNN, or a shape its kernel does not cover
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """Softmax attention over ``(batch, tokens, heads, head_dim)``: cuDNN's fused forward, XLA's backward.

    ``jax.nn.dot_product_attention`` picks XLA's implementation unless told otherwise, which writes the
    attention matrix to memory; cuDNN's flash attention does not (ViT-B/16 inference in bfloat16 on an
    H200: 0.71x -> 0.93-0.95x timm's throughput). Its backward pass, however, refuses sequence lengths such
    as ViT's 197 tokens, and the refusal can surface outside the caller (under ``jax.checkpoint``), so
    the gradient always comes from XLA's attention, recomputed from ``q, k, v``. Where cuDNN is missing
    or does not cover the shape, the forward is XLA's too.
    """
    return _cudnn_or_xla_attention(q, k, v, scale)


def _fused_attention_fwd(q, k, v, scale):
    return _cudnn_or_xla_attention(q, k, v, scale), (q, k, v)


def _fused_attention_bwd(scale, residuals, grad):
    xla = functools.partial(jax.nn.dot_product_attention, scale=scale, implementation="xla")
    return jax.vjp(xla, *residuals)[1](grad)


fused_attention.defvjp(_fused_attention_fwd, _fused_attention_bwd)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    dropout: nn.Dropout | None = None,
    deterministic: bool = True,
    bias: jax.Array | None = None,
    return_weights: bool = False,
    heads_major: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Scaled dot-product attention over ``(batch, tokens, heads, head_dim)`` inputs, or
    ``(batch, heads, tokens, head_dim)`` ones with ``heads_major=True``.

    The softmax runs in float32 whatever the computation dtype. ``bias`` is added to the logits
    (broadcast against ``(batch, heads, q_tokens, k_tokens)``). Returns the output as
    ``(batch, tokens, heads, head_dim)`` and, when asked, the attention probabilities ``(batch, heads, q, k)``.

    On a GPU, in bfloat16 or float16 without weights to return or dropout to apply, this is
    :func:`fused_attention` (cuDNN's flash attention where it applies).
    """
    dtype = q.dtype
    no_dropout = dropout is None or deterministic or dropout.rate == 0.0
    half = dtype in (jnp.bfloat16, jnp.float16)
    # An empty batch takes XLA's path: cuDNN's kernels are not specified for zero-size operands.
    fusable = half and q.shape[0] > 0 and bias is None and no_dropout and not return_weights
    if fusable and jax.default_backend() == "gpu":
        if heads_major:
            q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        return fused_attention(q, k, v, scale), None
    # Heads-major operands: XLA:CPU runs the two batched matmuls ~2.5x faster on (batch, heads, tokens,
    # head_dim) arrays than when the einsums transpose inside the dot (measured on ViT-B/16 shapes).
    if not heads_major:
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    # The scale on q, as timm applies it: XLA:CPU folded a scale on the logits into the matmul and ran it
    # ~1.6x slower (CrossViT's small branch: 401 tokens, 32-wide heads).
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    # The softmax with its normalisation moved after the value matmul: one division per output
    # element instead of one per attention weight (dropout commutes with the per-row division).
    # The returned weights are the same division, so the output never depends on asking for them.
    unnormalized = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    denominator = unnormalized.sum(axis=-1, keepdims=True)
    if dropout is not None:
        unnormalized = dropout(unnormalized, deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bhqd", unnormalized.astype(dtype), v, preferred_element_type=jnp.float32)
    out = (out / denominator).astype(dtype).transpose(0, 2, 1, 3)
    return out, (unnormalized / denominator if return_weights else None)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al., arXiv 1706.03762) with a fused qkv projection.

    ``project_out=False`` mirrors vit-pytorch, which drops the output projection when
    ``heads == 1 and dim_head == dim``.
    """

    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    qkv_bias: bool = False
    project_out: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        self.qkv = dense(3 * self.heads * self.dim_head, use_bias=self.qkv_bias)
        self.attn_drop = nn.Dropout(self.dropout)
        if self.project_out:
            self.proj = dense(self.dim)
            self.proj_drop = nn.Dropout(self.dropout)

    def __call__(self, x, *, deterministic: bool = True, output_attentions: bool = False):
        batch, tokens, _ = x.shape
        # One transpose to (3, batch, heads, tokens, head_dim): q, k and v are then contiguous slices,
        # and the backward pass stacks their gradients instead of padding each into the qkv layout.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.dim_head).transpose(2, 0, 3, 1, 4)
        q, k, v = (part[0] for part in jnp.split(qkv, 3))
        out, weights = attend(
            q,
            k,
            v,
            scale=self.dim_head**-0.5,
            dropout=self.attn_drop,
            deterministic=deterministic,
            return_weights=output_attentions,
            heads_major=True,
        )
        out = out.reshape(batch, tokens, self.heads * self.dim_head)
        if self.project_out:
            out = self.proj_drop(self.proj(out), deterministic=deterministic)
        return out, weights
