"""LayerNorm computed as PyTorch computes it, and the norm factory the blocks take."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed like PyTorch's: two-pass variance, all in float32.

    The parameters are flax's ``nn.LayerNorm`` ones (``scale``, ``bias``). Unlike flax, which multiplies
    the centred input by ``rsqrt(var + eps) * scale``, the scale applies after normalising: the
    backward pass then no longer materialises ``scale`` broadcast to the activations' shape, which
    XLA:CPU could not fuse into its matmul fusions (two such arrays per block of the training step).
    """

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        x = x.astype(jnp.promote_types(jnp.float32, x.dtype))
        centred = x - x.mean(axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(jnp.square(centred).mean(axis=-1, keepdims=True) + self.epsilon)
        y = y * self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        y = y + self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        return y.astype(self.dtype)


# A norm factory: called with an optional ``name=``, it returns the norm module (timm's ``norm_layer``).
NormLayer = Callable[..., nn.Module]


def norm_factory(eps: float, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> NormLayer:
    """``functools.partial(LayerNorm, epsilon=eps, ...)``: what the blocks take as ``norm_layer``, as timm's
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``, so eps and dtypes are set once per model."""
    return functools.partial(LayerNorm, epsilon=eps, dtype=dtype, param_dtype=param_dtype)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> LayerNorm:
    """PyTorch's ``nn.LayerNorm(dim, eps)`` as a module (see :class:`LayerNorm`)."""
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
