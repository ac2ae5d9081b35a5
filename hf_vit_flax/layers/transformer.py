"""Pre-norm transformer blocks and stacks (LayerScale, stochastic depth, gradient checkpointing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import weight_tables as wt
from .attention import Attention
from .mlp import FeedForward
from .norm import LayerNorm, NormLayer

Dtype = Any


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (Touvron et al., "Going deeper with Image Transformers", arXiv 2103.17239)."""

    dim: int
    init_value: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (self.dim,), self.param_dtype)
        return x * gamma.astype(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., arXiv 1603.09382); identity unless training."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


@jax.custom_jvp
def gradient_barrier(x: jax.Array) -> jax.Array:
    """The identity, whose gradient goes through a conditional: put at the output of a residual block.

    Without it, XLA:CPU fuses the element-wise backward of a residual stack (LayerNorm backward and
    residual additions) into every consumer of every layer's gradient, recomputing the chain of all
    later layers each time: the backward pass and its compile time grow quadratically with depth
    (measured: 6x the forward for 12 ViT-Ti blocks, 15x for 24; with a barrier per block, ~3.8x).
    A conditional is a boundary that no fusion crosses (optimization barriers are removed before
    fusion on CPU). Forward values and gradients are unchanged; other backends skip it.
    """
    return x


@gradient_barrier.defjvp
def _gradient_barrier_jvp(primals, tangents):
    (x,), (tangent,) = primals, tangents
    if jax.default_backend() != "cpu" or x.size == 0:
        return x, tangent
    first = x.reshape(-1)[0]
    # Always true unless the activations are NaN already (then so is the gradient); the two branches
    # differ, else XLA would remove the conditional.
    tangent = jax.lax.cond(first == first, lambda t: t, lambda t: jnp.full_like(t, jnp.nan), tangent)
    return x, tangent


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, with optional LayerScale / DropPath."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    qkv_bias: bool = False
    project_out: bool = True
    norm_layer: NormLayer = LayerNorm
    layer_scale_init: float | None = None
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    activation: str = "gelu"

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.norm1 = self.norm_layer()
        self.attn = Attention(
            self.dim,
            self.heads,
            self.dim_head,
            self.dropout,
            qkv_bias=self.qkv_bias,
            project_out=self.project_out,
            **kw,
        )
        self.norm2 = self.norm_layer()
        self.mlp = FeedForward(self.dim, self.mlp_dim, self.dropout, activation=self.activation, **kw)
        if self.layer_scale_init is not None:
            self.ls1 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
            self.ls2 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
        self.drop_path1 = DropPath(self.drop_path)
        self.drop_path2 = DropPath(self.drop_path)

    def _scale(self, name: str, x):
        return getattr(self, name)(x) if self.layer_scale_init is not None else x

    def __call__(self, x, deterministic: bool = True, output_attentions: bool = False):
        y, weights = self.attn(self.norm1(x), deterministic=deterministic, output_attentions=output_attentions)
        x = x + self.drop_path1(self._scale("ls1", y), deterministic=deterministic)
        y = self.mlp(self.norm2(x), deterministic=deterministic)
        x = x + self.drop_path2(self._scale("ls2", y), deterministic=deterministic)
        return gradient_barrier(x), weights


def remat_if(module_cls: type[nn.Module], enabled: bool, static_argnums: tuple[int, ...] = (2, 3)):
    """Gradient checkpointing that keeps parameter paths unchanged (``nn.remat`` wraps the class, not the scope).

    ``static_argnums`` count ``self`` as 0: the default marks ``deterministic`` and ``output_attentions``
    of ``TransformerBlock.__call__(self, x, deterministic, output_attentions)`` static.
    """
    return nn.remat(module_cls, static_argnums=static_argnums) if enabled else module_cls


class Transformer(nn.Module):
    """A stack of ``depth`` blocks followed by an optional final norm (vit-pytorch's ``Transformer``).

    ``block`` builds one block given its stochastic-depth rate (``drop_path=``): a partial of
    :class:`TransformerBlock` (wrapped by :func:`remat_if` for gradient checkpointing) that holds the block
    configuration, as timm's ``block_fn``. The rates rise linearly from 0 at the first block to
    ``drop_path_rate`` at the last. ``norm_layer`` builds the final norm; ``None``: no final norm.

    Returns ``(x, hidden_states, attentions)``: ``hidden_states`` holds the input and every block's
    output (before the final norm), as transformers does, when ``output_hidden_states``; else ``None``.
    """

    block: Callable[..., nn.Module]
    depth: int
    drop_path_rate: float = 0.0
    norm_layer: NormLayer | None = LayerNorm

    def setup(self):
        self.blocks = [
            self.block(drop_path=self.drop_path_rate * i / max(self.depth - 1, 1)) for i in range(self.depth)
        ]
        if self.norm_layer is not None:
            self.norm = self.norm_layer()

    def __call__(
        self, x, *, deterministic: bool = True, output_hidden_states: bool = False, output_attentions: bool = False
    ):
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for block in self.blocks:
            x, weights = block(x, deterministic, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (weights,)
        if self.norm_layer is not None:
            x = self.norm(x)
        return x, hidden_states, attentions


# -- weight maps (hf_vit_flax.weight_tables) -------------------------------------------------------------

# The PyTorch names of a block's parts, by our name: timm's ``Block`` (the same names as ours),
# vit-pytorch's ``Transformer`` layer (``layers.i.0`` = PreNorm(Attention), ``layers.i.1`` = FeedForward)
# and transformers' ``ViTLayer`` (its query, key and value are fused into "qkv" before the table is read).
# ``ls1`` / ``ls2`` name the LayerScale tensor itself.
TIMM_BLOCK = {
    "norm1": "norm1",
    "attn/qkv": "attn.qkv",
    "attn/proj": "attn.proj",
    "ls1": "ls1.gamma",
    "norm2": "norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
    "ls2": "ls2.gamma",
}
VIT_PYTORCH_BLOCK = {
    "norm1": "0.norm",
    "attn/qkv": "0.to_qkv",
    "attn/proj": "0.to_out.0",
    "norm2": "1.net.0",
    "mlp/fc1": "1.net.1",
    "mlp/fc2": "1.net.4",
}
TRANSFORMERS_BLOCK = {
    "norm1": "layernorm_before",
    "attn/qkv": "attention.attention.qkv",
    "attn/proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}


def block_table(
    torch: str,
    flax: str,
    names: dict[str, str] = TIMM_BLOCK,
    *,
    qkv_bias: bool = True,
    project_out: bool = True,
    layer_scale: bool = False,
    layer_scale_transform: wt.Transform = wt.COPY,
    projections: tuple[str, ...] = ("qkv",),
) -> wt.Table:
    """The weight map of one :class:`TransformerBlock` (``names``: the PyTorch name of each part).

    ``projections``: the attention's input projections by our name, the fused ``qkv`` or e.g. ``q``, ``k``,
    ``v`` apart (CaiT's class attention), each mapped through ``names["attn/<name>"]``.
    """
    t = lambda part: wt.join(torch, names[part], ".")  # noqa: E731
    f = lambda part: wt.join(flax, part, "/")  # noqa: E731
    table = wt.norm(t("norm1"), f("norm1"))
    for name in projections:
        table += wt.linear(t(f"attn/{name}"), f(f"attn/{name}"), bias=qkv_bias)
    if project_out:
        table += wt.linear(t("attn/proj"), f("attn/proj"))
    table += [
        *wt.norm(t("norm2"), f("norm2")),
        *wt.linear(t("mlp/fc1"), f("mlp/fc1")),
        *wt.linear(t("mlp/fc2"), f("mlp/fc2")),
    ]
    if layer_scale:
        table += [wt.Entry(t(ls), f(f"{ls}/gamma"), layer_scale_transform) for ls in ("ls1", "ls2")]
    return table


def transformer_table(
    torch: str,
    flax: str,
    depth: int,
    names: dict[str, str] = VIT_PYTORCH_BLOCK,
    *,
    final_norm: str | None = "norm",
    torch_blocks: str = "layers",
    **block_options,
) -> wt.Table:
    """The weight map of a :class:`Transformer`: ``depth`` blocks (PyTorch ``{torch}.{torch_blocks}.i``),
    then the final norm (PyTorch ``{torch}.{final_norm}``, ``None`` for none)."""
    table = [
        entry
        for i in range(depth)
        for entry in block_table(
            wt.join(torch, f"{torch_blocks}.{i}", "."), wt.join(flax, f"blocks_{i}", "/"), names, **block_options
        )
    ]
    if final_norm is not None:
        table += wt.norm(wt.join(torch, final_norm, "."), wt.join(flax, "norm", "/"))
    return table
