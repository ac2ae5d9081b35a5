"""CrossFormer: "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention"
(Wang et al., arXiv 2108.00154).

``CrossFormer`` computes, in eval mode, the same function as either reference, chosen by ``style``:

* ``"vit_pytorch"`` (default): lucidrains' vit-pytorch ``vit_pytorch.crossformer.CrossFormer``.
  Per stage a cross-scale embedding (convolutions of several kernel sizes, same stride, explicit
  symmetric padding ``(k - s) // 2``, concatenated on channels), then pairs of short-distance
  (contiguous windows) and long-distance (tokens sampled at an interval) attention, each followed by
  a feed-forward layer. Channel LayerNorm (biased variance, eps 1e-5), no qkv bias, a dynamic position
  bias shared by the heads (vit-pytorch evaluates its MLP on the offsets ``-w..w`` and indexes that
  ``(2w+1)^2`` table with the ``(2w-1)``-stride index; reproduced as is), mean pooling, Linear head.
* ``"original"``: the authors' v1 release (cheerss/CrossFormer), whose CrossFormer-T/S/B/L
  checkpoints load with :func:`hf_vit_flax.from_crossformer_checkpoint`. LayerNorm after the first
  embedding and before each patch merging, qkv bias, a per-head dynamic position bias MLP of width
  ``dim // 16`` over the ``(2G-1)^2`` offsets (Swin's relative index), blocks alternating short and
  long distance, a whole-map group once a map is no larger than the group size, stochastic depth,
  final LayerNorm, token mean, Linear head.

Exact GELU and LayerNorm eps 1e-5 in both. Images are NHWC; the model takes any size its windows
tile (multiples of 224 at the defaults) and says which sizes work otherwise. The Hugging Face
classes at the bottom are config-driven shells around the same module.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...layers import (
    CoreModule,
    DropPath,
    Features,
    FeedForward,
    LinearHead,
    attend,
    check_image,
    flatten_tokens,
    gradient_barrier,
    layer_norm,
    remat_if,
)
from ...modeling_utils import FlaxBaseModelModule, FlaxClassifierModule, FlaxVisionPreTrainedModel
from .configuration_crossformer import (
    CrossFormerConfig,
    block_grouping,
    check_image_size,
    cross_embed_dims,
    kernel_sizes_per_stage,
    per_stage,
    stage_windows,
    validate_architecture,
)

Dtype = Any


# -- position bias tables (static, numpy) -----------------------------------------------------------


def relative_offsets(window: int, style: str) -> np.ndarray:
    """The 2-d offsets the position-bias MLP is evaluated on, row-major over (dy, dx).

    original: ``-(G-1)..G-1`` ((2G-1)^2 offsets); vit-pytorch: ``-w..w`` ((2w+1)^2 offsets).
    """
    reach = window - 1 if style == "original" else window
    pos = np.arange(-reach, reach + 1)
    grid = np.stack(np.meshgrid(pos, pos, indexing="ij"))
    return grid.reshape(2, -1).T.astype(np.float32)


def relative_position_index(window: int) -> np.ndarray:
    """Swin's index of the offset between tokens i and j of a ``window x window`` group: ``(w^2, w^2)``.

    Both references compute ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``; vit-pytorch applies it to its
    larger ``(2w+1)``-wide table, which is part of its function and kept.
    """
    pos = np.arange(window)
    grid = np.stack(np.meshgrid(pos, pos, indexing="ij")).reshape(2, -1).T
    rel = grid[:, None] - grid[None, :] + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


# -- blocks -------------------------------------------------------------------------------------------


class CrossEmbedLayer(nn.Module):
    """Cross-scale embedding: one convolution per kernel size (smallest first), same stride, concatenated.

    ``norm``: None (vit-pytorch), ``"after"`` (the original's patch embedding) or ``"before"`` (the
    original's patch merging, whose LayerNorm precedes the convolutions).
    """

    dim_out: int
    kernel_sizes: tuple[int, ...]
    stride: int
    norm: str | None = None
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm == "before":
            x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x)
        kernels = sorted(self.kernel_sizes)
        maps = []
        for j, (kernel, dim) in enumerate(zip(kernels, cross_embed_dims(self.dim_out, len(kernels)), strict=True)):
            pad = (kernel - self.stride) // 2  # PyTorch's symmetric padding, not 'SAME'
            conv = nn.Conv(
                dim,
                (kernel, kernel),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv_{j}",
            )
            maps.append(conv(x))
        x = jnp.concatenate(maps, axis=-1)
        if self.norm == "after":
            x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x)
        return x


class NormReluLinear(nn.Module):
    """LayerNorm -> ReLU -> Linear, one step of the position-bias MLP."""

    features: int
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x))
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


class DynamicPositionBias(nn.Module):
    """The paper's dynamic position bias: an MLP from a 2-d offset to a bias (one per head, or one shared).

    ``pos_proj`` Linear(2, width), then three [LayerNorm, ReLU, Linear] (the last to ``out_features``);
    both references have this structure (vit-pytorch: width ``dim // 4``, one output; original:
    width ``dim // 16``, one output per head).
    """

    width: int
    out_features: int
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, offsets):
        kw = dict(layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="pos_proj")(offsets)
        x = NormReluLinear(self.width, **kw, name="pos1")(x)
        x = NormReluLinear(self.width, **kw, name="pos2")(x)
        return NormReluLinear(self.out_features, **kw, name="pos3")(x)


class CrossFormerAttention(nn.Module):
    """Multi-head self-attention within groups of ``window x window`` tokens, plus the dynamic position bias."""

    dim: int
    heads: int
    dim_head: int
    qkv_bias: bool
    style: str
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, window: int, *, deterministic: bool = True, output_attentions: bool = False):
        groups, tokens, _ = x.shape
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * self.heads * self.dim_head, use_bias=self.qkv_bias, name="qkv")(x)
        qkv = qkv.reshape(groups, tokens, 3, self.heads, self.dim_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

        shared = self.style == "vit_pytorch"
        width = self.dim // 4 if shared else self.dim // 16
        pos = DynamicPositionBias(
            width, 1 if shared else self.heads, self.layer_norm_eps, self.dtype, self.param_dtype, name="pos"
        )
        table = pos(jnp.asarray(relative_offsets(window, self.style), self.dtype))  # (offsets, 1 | heads)
        bias = table[relative_position_index(window)].transpose(2, 0, 1)  # (1 | heads, tokens, tokens)

        out, weights = attend(
            q,
            k,
            v,
            scale=self.dim_head**-0.5,
            dropout=nn.Dropout(self.attn_dropout),
            deterministic=deterministic,
            bias=bias[None],
            return_weights=output_attentions,
        )
        out = dense(self.dim, name="proj")(out.reshape(groups, tokens, self.heads * self.dim_head))
        return nn.Dropout(self.proj_dropout)(out, deterministic=deterministic), weights


def group_tokens(x: jax.Array, kind: str, window: int) -> jax.Array:
    """``(B, H, W, C) -> (B * groups, window^2, C)``: contiguous windows (short) or tokens ``H / window``
    apart (long); groups in (b, h, w) order, tokens row-major, as both references do."""
    batch, height, width, channels = x.shape
    rows, cols = height // window, width // window
    if kind == "short":
        x = x.reshape(batch, rows, window, cols, window, channels).transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x.reshape(batch, window, rows, window, cols, channels).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(batch * rows * cols, window * window, channels)


def ungroup_tokens(x: jax.Array, kind: str, window: int, shape: tuple[int, ...]) -> jax.Array:
    batch, height, width, channels = shape
    rows, cols = height // window, width // window
    x = x.reshape(batch, rows, cols, window, window, channels)
    if kind == "short":
        x = x.transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x.transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(shape)


class CrossFormerBlock(nn.Module):
    """``x + attn(norm1(x))`` over short- or long-distance groups, then ``x + mlp(norm2(x))``; NHWC maps."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    kind: str  # 'short' or 'long'
    window: int
    style: str
    qkv_bias: bool
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.norm1 = layer_norm(self.layer_norm_eps, **kw)
        self.attn = CrossFormerAttention(
            self.dim,
            self.heads,
            self.dim_head,
            self.qkv_bias,
            self.style,
            self.attn_dropout,
            proj_dropout=self.ff_dropout if self.style == "original" else 0.0,
            layer_norm_eps=self.layer_norm_eps,
            **kw,
        )
        self.norm2 = layer_norm(self.layer_norm_eps, **kw)
        # The shared feed-forward also drops after fc2 when training (vit-pytorch does not; eval is identical).
        self.mlp = FeedForward(self.dim, self.mlp_dim, self.ff_dropout, **kw)
        self.drop_path_layer = DropPath(self.drop_path)

    def __call__(self, x, deterministic: bool = True, output_attentions: bool = False):
        _, height, width, _ = x.shape
        kind, window = block_grouping(self.style, self.kind, self.window, height, width)
        y = group_tokens(self.norm1(x), kind, window)
        y, weights = self.attn(y, window, deterministic=deterministic, output_attentions=output_attentions)
        x = x + self.drop_path_layer(ungroup_tokens(y, kind, window, x.shape), deterministic=deterministic)
        x = x + self.drop_path_layer(self.mlp(self.norm2(x), deterministic=deterministic), deterministic=deterministic)
        if weights is not None:  # (batch, groups, heads, tokens, tokens)
            groups = (height // window) * (width // window)
            weights = weights.reshape(x.shape[0], groups, *weights.shape[1:])
        # Keeps XLA:CPU's backward of the residual stack linear in depth (see gradient_barrier).
        return gradient_barrier(x), weights


class CrossFormerStage(nn.Module):
    """A cross-scale embedding (or patch merging), then the stage's blocks."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    depth: int
    local_window_size: int
    global_window_size: int
    kernel_sizes: tuple[int, ...]
    stride: int
    embed_norm: str | None
    style: str
    qkv_bias: bool
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    drop_path_rates: tuple[float, ...] = ()
    embed_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed = CrossEmbedLayer(self.dim, self.kernel_sizes, self.stride, self.embed_norm, **kw)
        self.embed_drop = nn.Dropout(self.embed_dropout)
        block = remat_if(CrossFormerBlock, self.remat)
        windows = stage_windows(self.style, self.depth, self.local_window_size, self.global_window_size)
        self.blocks = [
            block(
                self.dim,
                self.heads,
                self.dim_head,
                self.mlp_dim,
                kind,
                window,
                self.style,
                self.qkv_bias,
                self.attn_dropout,
                self.ff_dropout,
                self.drop_path_rates[j] if self.drop_path_rates else 0.0,
                **kw,
            )
            for j, (kind, window) in enumerate(windows)
        ]

    def __call__(self, x, *, deterministic: bool = True, output_attentions: bool = False):
        """Returns the embedded map, the stage's output and, per block, its output and attention weights."""
        embedded = x = self.embed_drop(self.embed(x), deterministic=deterministic)
        hidden_states, attentions = [], []
        for block in self.blocks:
            x, weights = block(x, deterministic, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        return embedded, x, hidden_states, attentions


class CrossFormer(CoreModule):
    """CrossFormer with vit-pytorch's constructor arguments (plus the options of the original release); NHWC.

    ``CrossFormer(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with
    ``num_classes <= 0`` the pooled features ``(batch, dim[-1])``. Dropout and stochastic depth are
    active only with ``train=True`` and then need a ``'dropout'`` rng. The options are those of
    :class:`hf_vit_flax.CrossFormerConfig` (which documents each); per-stage values are an int or 4 values.
    """

    headless_output = "pooler_output"

    dim: Any = (64, 128, 256, 512)
    depth: Any = (2, 2, 8, 2)
    global_window_size: Any = (8, 4, 2, 1)
    local_window_size: Any = 7
    cross_embed_kernel_sizes: Any = ((4, 8, 16, 32), (2, 4), (2, 4), (2, 4))
    cross_embed_strides: Any = (4, 2, 2, 2)
    num_classes: int = 1000
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    channels: int = 3
    style: str = "vit_pytorch"
    heads: Any = None
    dim_head: int = 32
    mlp_ratio: float = 4.0
    qkv_bias: bool | None = None
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    head_class = LinearHead
    config_class = CrossFormerConfig

    def _architecture(self) -> dict[str, Any]:
        return dict(
            style=self.style,
            depth=per_stage(self.depth, "depth"),
            local_window_size=per_stage(self.local_window_size, "local_window_size"),
            global_window_size=per_stage(self.global_window_size, "global_window_size"),
            cross_embed_kernel_sizes=kernel_sizes_per_stage(self.cross_embed_kernel_sizes),
            cross_embed_strides=per_stage(self.cross_embed_strides, "cross_embed_strides"),
        )

    def setup(self):
        validate_architecture(
            style=self.style,
            dim=self.dim,
            depth=self.depth,
            global_window_size=self.global_window_size,
            local_window_size=self.local_window_size,
            cross_embed_kernel_sizes=self.cross_embed_kernel_sizes,
            cross_embed_strides=self.cross_embed_strides,
            channels=self.channels,
            heads=self.heads,
            dim_head=self.dim_head,
            mlp_ratio=self.mlp_ratio,
            layer_norm_eps=self.layer_norm_eps,
        )
        arch = self._architecture()
        dims = per_stage(self.dim, "dim")
        original = self.style == "original"
        qkv_bias = original if self.qkv_bias is None else bool(self.qkv_bias)
        if self.heads is None:  # vit-pytorch: heads of width dim_head
            heads = tuple(d // self.dim_head for d in dims)
            dim_heads = (self.dim_head,) * len(dims)
        else:  # the original: num_heads heads splitting dim
            heads = per_stage(self.heads, "heads")
            dim_heads = tuple(d // h for d, h in zip(dims, heads, strict=True))
        # Stochastic depth grows linearly over all blocks of all stages (torch.linspace(0, rate, n)).
        num_blocks = [len(stage_windows(self.style, d, 1, 1)) for d in arch["depth"]]
        total = sum(num_blocks)
        rates = [self.drop_path_rate * t / max(total - 1, 1) if original else 0.0 for t in range(total)]
        self.stages = [
            CrossFormerStage(
                dims[i],
                heads[i],
                dim_heads[i],
                int(dims[i] * self.mlp_ratio),
                arch["depth"][i],
                arch["local_window_size"][i],
                arch["global_window_size"][i],
                arch["cross_embed_kernel_sizes"][i],
                arch["cross_embed_strides"][i],
                embed_norm=None if not original else ("after" if i == 0 else "before"),
                style=self.style,
                qkv_bias=qkv_bias,
                attn_dropout=self.attn_dropout,
                ff_dropout=self.ff_dropout,
                drop_path_rates=tuple(rates[sum(num_blocks[:i]) : sum(num_blocks[: i + 1])]),
                # the original's pos_drop (its drop_rate) after the patch embedding
                embed_dropout=self.ff_dropout if original and i == 0 else 0.0,
                layer_norm_eps=self.layer_norm_eps,
                remat=self.remat,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            for i in range(len(dims))
        ]
        if original:
            self.norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype)
        self.setup_head()

    def forward_features(
        self, img, *, train: bool = False, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> Features:
        check_image(img, tuple(img.shape[1:3]), self.channels, family="CrossFormer")
        check_image_size(tuple(img.shape[1:3]), **self._architecture())
        x = img.astype(self.dtype)
        hidden_states, attentions = [], []
        for i, stage in enumerate(self.stages):
            embedded, x, stage_hidden, stage_attentions = stage(
                x, deterministic=not train, output_attentions=output_attentions
            )
            hidden_states += ([embedded] if i == 0 else []) + stage_hidden
            attentions += stage_attentions
        x = flatten_tokens(x)
        if self.style == "original":
            x = self.norm(x)
        return Features(
            last_hidden_state=x,
            pooler_output=x.mean(axis=1),
            hidden_states=tuple(flatten_tokens(h) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxCrossFormerModule(FlaxBaseModelModule):
    core_module_class = CrossFormer
    base_model_prefix = "crossformer"


class FlaxCrossFormerForImageClassificationModule(FlaxClassifierModule):
    core_module_class = CrossFormer
    base_model_prefix = "crossformer"


class FlaxCrossFormerPreTrainedModel(FlaxVisionPreTrainedModel):
    config_class = CrossFormerConfig
    base_model_prefix = "crossformer"
    head_param_names = ("head",)


class FlaxCrossFormerModel(FlaxCrossFormerPreTrainedModel):
    """CrossFormer features: ``last_hidden_state`` (the last stage's tokens, after the final norm in the
    original style) and ``pooler_output`` (their mean); ``hidden_states``: the embedding and every block's
    output, as ``(batch, tokens, channels)``."""

    module_class = FlaxCrossFormerModule


class FlaxCrossFormerForImageClassification(FlaxCrossFormerPreTrainedModel):
    """CrossFormer with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxCrossFormerForImageClassificationModule
