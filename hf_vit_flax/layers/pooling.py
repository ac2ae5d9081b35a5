"""Multihead attention pooling by a learned latent query (timm's ``AttentionPoolLatent``)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .. import weight_tables as wt
from .attention import attend
from .linear import Dense
from .mlp import FeedForward
from .norm import LayerNorm, NormLayer

Dtype = Any


class AttentionPoolLatent(nn.Module):
    """Multihead attention pooling by a learned latent query (timm's ``AttentionPoolLatent``, big_vision's MAP head).

    One query attends over the tokens; its output goes through a projection and a residual
    LayerNorm -> MLP, as in "Scaling Vision Transformers" (Zhai et al., arXiv 2106.04560) and SigLIP.
    """

    dim: int
    heads: int
    mlp_dim: int
    norm_layer: NormLayer = LayerNorm
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, tokens, _ = x.shape
        head_dim = self.dim // self.heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        latent = self.param("latent", nn.initializers.normal(self.dim**-0.5), (1, self.dim), self.param_dtype)
        q = Dense(self.dim, name="q", **kw)(jnp.broadcast_to(latent.astype(x.dtype), (batch, 1, self.dim)))
        kv = Dense(2 * self.dim, name="kv", **kw)(x).reshape(batch, tokens, 2, self.heads, head_dim)
        out, _ = attend(q.reshape(batch, 1, self.heads, head_dim), kv[:, :, 0], kv[:, :, 1], scale=head_dim**-0.5)
        out = Dense(self.dim, name="proj", **kw)(out.reshape(batch, 1, self.dim))
        norm = self.norm_layer(name="norm")
        out = out + FeedForward(self.dim, self.mlp_dim, activation=self.activation, name="mlp", **kw)(norm(out))
        return out[:, 0]


def attention_pool_table(torch: str, flax: str) -> wt.Table:
    """timm's ``AttentionPoolLatent`` (``latent`` (1, 1, dim), ``q``, ``kv``, ``proj``, ``norm``, ``mlp``) <->
    :class:`AttentionPoolLatent`."""
    return [
        wt.Entry(f"{torch}.latent", f"{flax}/latent", wt.TOKEN),
        *(
            e
            for part in ("q", "kv", "proj", "mlp.fc1", "mlp.fc2")
            for e in wt.linear(f"{torch}.{part}", f"{flax}/{part.replace('.', '/')}")
        ),
        *wt.norm(f"{torch}.norm", f"{flax}/norm"),
    ]
