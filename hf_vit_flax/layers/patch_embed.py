"""Patch embeddings: vit-pytorch's patch LayerNorm -> Linear -> LayerNorm and timm's conv ``PatchEmbed``."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import weight_tables as wt
from .linear import Dense
from .norm import LayerNorm, NormLayer

Dtype = Any


def patchify(images: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """``b (h p1) (w p2) c -> b (h w) (p1 p2 c)``: the same feature order as vit-pytorch's NCHW rearrange."""
    batch, height, width, channels = images.shape
    p1, p2 = patch_size
    x = images.reshape(batch, height // p1, p1, width // p2, p2, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // p1) * (width // p2), p1 * p2 * channels)


def flatten_tokens(x: jax.Array) -> jax.Array:
    """``(b, h, w, c) -> (b, h w, c)``, row-major like timm's and PyTorch's ``flatten(2).transpose(1, 2)``.

    The sizes are spelled out: ``reshape(b, -1, c)`` cannot infer the ``-1`` of an empty batch.
    """
    batch, height, width, channels = x.shape
    return x.reshape(batch, height * width, channels)


class PatchEmbeddingBase(nn.Module):
    """What every patch embedding takes (they are interchangeable): images ``(batch, height, width, channels)``
    in, tokens ``(batch, patches, dim)`` out; a sub-class's own options follow ``patch_size``."""

    dim: int
    patch_size: Any  # (height, width), or an int where a sub-class says so
    dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)
    param_dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)


class PatchEmbedding(PatchEmbeddingBase):
    """vit-pytorch's embedding: ``b (h p1) (w p2) c -> b (h w) (p1 p2 c)``, LayerNorm, Linear, LayerNorm."""

    norm_layer: NormLayer = LayerNorm

    @nn.compact
    def __call__(self, images):
        x = self.norm_layer(name="patch_norm")(patchify(images, self.patch_size))
        x = Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
        return self.norm_layer(name="norm")(x)


class ConvPatchEmbedding(PatchEmbeddingBase):
    """timm's ``PatchEmbed``: a Conv2d with kernel = stride = patch size and no padding, then flatten."""

    use_bias: bool = True

    @nn.compact
    def __call__(self, images):
        x = nn.Conv(
            self.dim,
            self.patch_size,
            strides=self.patch_size,
            padding=((0, 0), (0, 0)),  # PyTorch's padding=0, not 'SAME'
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )(images)
        return flatten_tokens(x)


def patch_embedding_table(torch: str, flax: str) -> wt.Table:
    """vit-pytorch's ``to_patch_embedding`` (``Rearrange, LayerNorm, Linear, LayerNorm``) <-> :class:`PatchEmbedding`."""
    return [
        *wt.norm(f"{torch}.1", f"{flax}/patch_norm"),
        *wt.linear(f"{torch}.2", f"{flax}/proj"),
        *wt.norm(f"{torch}.3", f"{flax}/norm"),
    ]


def conv_patch_embedding_table(torch: str, flax: str, bias: bool = True) -> wt.Table:
    """timm's ``PatchEmbed`` (``{torch}.proj``) <-> :class:`ConvPatchEmbedding`."""
    return wt.conv(f"{torch}.proj", f"{flax}/proj", bias=bias)
