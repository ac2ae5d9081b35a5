"""Building blocks shared by every family: attention, feed-forward, patch embedding, input checks.

Conventions (see the package README): activations are NHWC / (batch, tokens, features); parameters are
created in ``param_dtype`` (float32 by default) and the computation runs in ``dtype``; softmax and
LayerNorm statistics are always computed in float32. Parameter names follow timm (``norm1``,
``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...) so converters read as short rename tables.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


class Features(NamedTuple):
    """What every family's ``forward_features`` returns (the vocabulary of the HF wrappers).

    ``hidden_states`` / ``attentions`` are tuples of arrays when asked for, else ``None``;
    ``hidden_states[-1]`` is the last block's output. ``extra`` holds a family's further outputs by
    name (the fields its output classes add, e.g. CrossViT's large branch), or ``None``.
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    extra: dict | None = None


class CoreModule(nn.Module):
    """Base of the core modules (``ViT``, ``CaiT``, ``CrossViT``, ``CrossFormer``: the seed README's API).

    ``model.apply(params, img, train=False)`` returns logits ``(batch, num_classes)``, or with
    ``num_classes <= 0`` the features named by ``headless_output`` (as the PyTorch original returns
    without its head). Sub-classes define ``num_classes``, ``forward_features`` (a :class:`Features`)
    and ``forward_head``.
    """

    headless_output: ClassVar[str] = "last_hidden_state"
    # The classification head, a module whose fields are a subset of the core module's (same names).
    head_class: ClassVar[type[nn.Module]]
    # The family's config class: its ``field_checks`` validate this module's fields of the same name.
    config_class: ClassVar[type]

    def __post_init__(self):
        super().__post_init__()
        # The same per-field errors as the config's (``ViT(patch_size=0)`` names the field instead of
        # failing inside the forward pass with a ZeroDivisionError).
        names = {f.name for f in dataclasses.fields(self)}
        for name, check in self.config_class.field_checks.items():
            if name in names:
                check(name, getattr(self, name))

    @classmethod
    def head_module(cls, kwargs: dict) -> nn.Module:
        """The family's head built from core-module keyword arguments (the fields it does not take are ignored)."""
        names = {f.name for f in dataclasses.fields(cls.head_class)} - {"parent", "name"}
        return cls.head_class(**{k: v for k, v in kwargs.items() if k in names})

    def setup_head(self) -> None:
        """Create the head (with ``num_classes > 0``) in this module's own scope: its parameters sit at the
        top level (``head``, ``sm_head`` ...), where checkpoints and converters name them. The HF classifier
        shell builds the same head next to the headless core module, so both share one implementation."""
        if self.num_classes > 0:
            names = {f.name for f in dataclasses.fields(self.head_class)} - {"parent", "name"}
            self.classifier = self.head_module({k: getattr(self, k) for k in names})
            nn.share_scope(self, self.classifier)

    def forward_head(self, pooled):
        return self.classifier(pooled)

    def __call__(self, img, train: bool = False):
        features = self.forward_features(img, train=train)
        if self.num_classes <= 0:
            return getattr(features, self.headless_output)
        return self.forward_head(features.pooler_output)


class LinearHead(nn.Module):
    """A single ``Linear`` head named ``head`` (timm's and vit-pytorch's for most families)."""

    num_classes: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, pooled):
        return self.head(pooled)


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; a length-2 sequence is returned as a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


_SQRT_HALF = float(np.sqrt(0.5))


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's ``nn.GELU()``, the exact form ``x (1 + erf(x / sqrt 2)) / 2`` (flax's default is the tanh
    approximation, ~1e-4 off).

    Written with erf, as PyTorch computes it: ``jax.nn.gelu(approximate=False)`` goes through erfc, which
    XLA:CPU evaluates ~2.5x slower (ViT-Ti MLP activations, batch 8: 0.57 ms against 1.40 ms); both are
    within 1.1e-6 of a float64 GELU over [-12, 12], as PyTorch's float32 GELU is.
    """
    return x * (0.5 + 0.5 * jax.lax.erf(x * _SQRT_HALF))


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


# Feed-forward activations by name (names as in timm's ``act_layer``); "gelu" is the exact form.
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": quick_gelu,
}


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


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> LayerNorm:
    """PyTorch's ``nn.LayerNorm(dim, eps)`` as a module (see :class:`LayerNorm`)."""
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def check_image(images: jax.Array, image_size: tuple[int, int], channels: int, *, family: str) -> None:
    """Fail early, with the fix, on images a model cannot take (instead of an einops/XLA traceback)."""
    if images.ndim != 4:
        raise ValueError(
            f"{family} expects a batch of images of shape (batch, height, width, channels), "
            f"got an array of shape {tuple(images.shape)}"
        )
    _, height, width, got_channels = images.shape
    if got_channels != channels:
        hint = ""
        if height == channels and got_channels != channels:
            hint = " (this looks like NCHW input: the flax modules take NHWC, transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"{family} was built for {channels}-channel images but got {got_channels} channels "
            f"in an input of shape {tuple(images.shape)}{hint}"
        )
    if (height, width) != tuple(image_size):
        raise ValueError(
            f"{family} was built for {image_size[0]}x{image_size[1]} images but got {height}x{width}; "
            f"resize the images (e.g. with the model's image processor) or build the model with "
            f"image_size=({height}, {width})"
        )


def check_divisible(image_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
    for axis, image, patch in (("height", image_size[0], patch_size[0]), ("width", image_size[1], patch_size[1])):
        if image % patch != 0:
            raise ValueError(f"image {axis} {image} is not divisible by patch {axis} {patch}")


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
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
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


class FeedForward(nn.Module):
    """Linear -> exact GELU -> dropout -> Linear -> dropout."""

    dim: int
    hidden_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    activation: str = "gelu"  # a key of ACTIVATIONS

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ACTIVATIONS[self.activation](dense(self.hidden_dim, name="fc1")(x))
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = dense(self.dim, name="fc2")(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


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
    layer_norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    activation: str = "gelu"

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.norm1 = layer_norm(self.layer_norm_eps, **kw)
        self.attn = Attention(
            self.dim,
            self.heads,
            self.dim_head,
            self.dropout,
            qkv_bias=self.qkv_bias,
            project_out=self.project_out,
            **kw,
        )
        self.norm2 = layer_norm(self.layer_norm_eps, **kw)
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
    """A stack of ``TransformerBlock`` s followed by an optional final LayerNorm (vit-pytorch's ``Transformer``).

    Returns ``(x, hidden_states, attentions)``: ``hidden_states`` holds the input and every block's
    output (before the final norm), as transformers does, when ``output_hidden_states``; else ``None``.
    """

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    qkv_bias: bool = False
    project_out: bool = True
    layer_norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    drop_path_rate: float = 0.0
    final_norm: bool = True
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    activation: str = "gelu"

    def setup(self):
        block = remat_if(TransformerBlock, self.remat)
        self.blocks = [
            block(
                self.dim,
                self.heads,
                self.dim_head,
                self.mlp_dim,
                self.dropout,
                qkv_bias=self.qkv_bias,
                project_out=self.project_out,
                layer_norm_eps=self.layer_norm_eps,
                layer_scale_init=self.layer_scale_init,
                drop_path=self.drop_path_rate * i / max(self.depth - 1, 1),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                activation=self.activation,
            )
            for i in range(self.depth)
        ]
        if self.final_norm:
            self.norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype)

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
        if self.final_norm:
            x = self.norm(x)
        return x, hidden_states, attentions
