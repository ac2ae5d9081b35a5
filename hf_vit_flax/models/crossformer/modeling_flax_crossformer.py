"""CrossFormer: "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention"
(Wang et al., arXiv 2108.00154).

One architecture: per stage a cross-scale embedding (convolutions of several kernel sizes, same stride,
explicit symmetric padding ``(k - s) // 2``, concatenated on channels), then blocks alternating
short-distance (contiguous windows) and long-distance (tokens sampled at an interval) attention with a
dynamic position bias, each followed by a feed-forward layer; mean pooling, Linear head. Exact GELU,
PyTorch's LayerNorm. The two references differ in named options (``CrossFormerConfig`` documents each):

* lucidrains' vit-pytorch ``vit_pytorch.crossformer.CrossFormer``: no qkv bias, one position bias shared
  by the heads from an MLP of width ``dim // 4``, evaluated on the offsets ``-w..w`` and read with the
  ``(2w-1)``-stride index (``position_bias_wide_table``: its function, kept as is), no other norms.
* the authors' v1 release (cheerss/CrossFormer), whose CrossFormer-T/S/B/L checkpoints load with
  :func:`hf_vit_flax.from_crossformer_checkpoint`: qkv bias, a per-head position bias of width
  ``dim // 16`` over the ``(2G-1)^2`` offsets (Swin's relative index), a LayerNorm after the first
  embedding (``stem_norm``) and before each patch merging (``merge_norm``), a whole-map group once a map
  is no larger than the group (``whole_map_group``), a final LayerNorm (``final_norm``), its ``drop_rate``
  after the embedding and each attention (``embed_dropout``, ``proj_dropout``).

Presets, and what ``depth`` counts (the decision). ``style`` is not a model option: it names a preset,
``"vit_pytorch"`` (the default), ``"original"`` or None (no preset), which the config and the seed-style
constructor expand ONCE, with :func:`expand_options`, into the named options. vit-pytorch's ``depth``
counts (short, long) attention pairs; the release's counts blocks. The ``"vit_pytorch"`` preset reads
``depth`` as vit-pytorch does and doubles it into blocks. So the seed README's call
``CrossFormer(num_classes=1000, dim=(64, 128, 256, 512), depth=(2, 2, 8, 2), ...)`` still computes
vit-pytorch's function, and a config.json saved with ``"style": "vit_pytorch"`` and a pair count loads
into the same model. ``CrossFormer.__post_init__`` performs the expansion when the module is built,
so the fields of a ``CrossFormer`` instance always hold the expanded options: ``depth`` counts blocks,
``heads`` and ``dim_head`` are per stage, every named option is set and ``style`` is None (building a
module from those fields, as flax does when it clones one, expands nothing again).
``CrossFormerConfig.to_module_kwargs()`` returns the same expanded options (``style=None``). No module
below ``CrossFormer`` sees a preset, and none has a field whose meaning depends on another.

Images are NHWC; the model takes any size its windows tile (multiples of 224 at the defaults) and says
which sizes work otherwise. The Hugging Face classes at the bottom are config-driven shells around the
same module.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...layers import (
    CoreModule,
    Dense,
    DropPath,
    Features,
    FeedForward,
    LayerNorm,
    LinearHead,
    NormLayer,
    NormLinear,
    attend,
    check_image,
    flatten_tokens,
    gradient_barrier,
    norm_factory,
    remat_if,
)
from ...modeling_utils import FlaxVisionPreTrainedModel
from .configuration_crossformer import CrossFormerConfig, expand_options
from .geometry import Geometry, cross_embed_dims, group_of

Dtype = Any
ModuleFactory = Callable[..., nn.Module]


# -- position bias tables (static, numpy) -----------------------------------------------------------


def relative_offsets(window: int, wide_table: bool = False) -> np.ndarray:
    """The 2-d offsets the position-bias MLP is evaluated on, row-major over (dy, dx).

    ``-(w-1)..w-1`` (the ``(2w-1)^2`` offsets within a window, the original); ``wide_table``: ``-w..w``
    (``(2w+1)^2`` offsets, vit-pytorch).
    """
    reach = window if wide_table else window - 1
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

    ``norm``: None, ``"after"`` (the original's patch embedding) or ``"before"`` (the original's patch
    merging, whose LayerNorm precedes the convolutions).
    """

    dim_out: int
    kernel_sizes: tuple[int, ...]
    stride: int
    norm: str | None = None
    norm_layer: NormLayer = LayerNorm
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm == "before":
            x = self.norm_layer(name="norm")(x)
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
            x = self.norm_layer(name="norm")(x)
        return x


class DynamicPositionBias(nn.Module):
    """The paper's dynamic position bias: an MLP from a 2-d offset to a bias, one per head or one shared.

    ``pos_proj`` Linear(2, width), then three [LayerNorm, ReLU, Linear] (the last to ``out_features``),
    evaluated on the offsets of a window and gathered into ``(out_features, tokens, tokens)``.
    """

    width: int
    out_features: int
    wide_table: bool = False
    norm_layer: NormLayer = LayerNorm
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, window: int):
        kw = dict(norm_layer=self.norm_layer, dtype=self.dtype, param_dtype=self.param_dtype)
        offsets = jnp.asarray(relative_offsets(window, self.wide_table), self.dtype)
        x = Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="pos_proj")(offsets)
        x = NormLinear(self.width, nn.relu, **kw, name="pos1")(x)
        x = NormLinear(self.width, nn.relu, **kw, name="pos2")(x)
        table = NormLinear(self.out_features, nn.relu, **kw, name="pos3")(x)  # (offsets, out_features)
        return table[relative_position_index(window)].transpose(2, 0, 1)


class CrossFormerAttention(nn.Module):
    """Multi-head self-attention within groups of ``window x window`` tokens, plus the dynamic position bias
    (``position_bias``: a :class:`DynamicPositionBias` factory)."""

    dim: int
    heads: int
    dim_head: int
    qkv_bias: bool
    position_bias: ModuleFactory
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, window: int, *, deterministic: bool = True, output_attentions: bool = False):
        groups, tokens, _ = x.shape
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * self.heads * self.dim_head, use_bias=self.qkv_bias, name="qkv")(x)
        qkv = qkv.reshape(groups, tokens, 3, self.heads, self.dim_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        bias = self.position_bias(name="pos")(window)  # (heads | 1, tokens, tokens)
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
    """``x + attn(norm1(x))`` over short- or long-distance groups, then ``x + mlp(norm2(x))``; NHWC maps.

    ``attention``: a :class:`CrossFormerAttention` factory; ``whole_map_group``: see ``geometry.group_of``.
    """

    dim: int
    mlp_dim: int
    kind: str  # 'short' or 'long'
    window: int
    attention: ModuleFactory
    whole_map_group: bool = False
    ff_dropout: float = 0.0
    drop_path: float = 0.0
    norm_layer: NormLayer = LayerNorm
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.norm1 = self.norm_layer()
        self.attn = self.attention()
        self.norm2 = self.norm_layer()
        # The shared feed-forward also drops after fc2 when training (vit-pytorch does not; eval is identical).
        self.mlp = FeedForward(self.dim, self.mlp_dim, self.ff_dropout, dtype=self.dtype, param_dtype=self.param_dtype)
        self.drop_path_layer = DropPath(self.drop_path)

    def __call__(self, x, deterministic: bool = True, output_attentions: bool = False):
        _, height, width, _ = x.shape
        kind, window = group_of(self.kind, self.window, height, width, self.whole_map_group)
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
    """A cross-scale embedding (or patch merging), then the stage's blocks, one per entry of ``windows``.

    ``embed_layer``: a :class:`CrossEmbedLayer` factory; ``block_layer``: a :class:`CrossFormerBlock` factory
    taking each block's ``kind``, ``window`` and ``drop_path``.
    """

    embed_layer: ModuleFactory
    block_layer: ModuleFactory
    windows: tuple[tuple[str, int], ...]
    drop_path_rates: tuple[float, ...]
    embed_dropout: float = 0.0

    def setup(self):
        self.embed = self.embed_layer()
        self.embed_drop = nn.Dropout(self.embed_dropout)
        self.blocks = [
            self.block_layer(kind=kind, window=window, drop_path=rate)
            for (kind, window), rate in zip(self.windows, self.drop_path_rates, strict=True)
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


class CrossFormer(CoreModule, CrossFormerConfig.options_dataclass(exclude=("image_size",))):
    """CrossFormer with vit-pytorch's constructor arguments and the options of the original release; NHWC.

    ``CrossFormer(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with
    ``num_classes <= 0`` the pooled features ``(batch, dim[-1])``. Dropout and stochastic depth are
    active only with ``train=True`` and then need a ``'dropout'`` rng. The options are those of
    :class:`hf_vit_flax.CrossFormerConfig` (which documents each); per-stage values are an int or 4 values.

    ``style`` is the preset the arguments are read in (default ``"vit_pytorch"``: ``depth`` counts
    vit-pytorch's (short, long) pairs); it is expanded when the module is built, after which the fields
    hold the expanded options (``depth`` in blocks, ``style`` None). See the module docstring.

    Its fields are the constructor arguments of :class:`CrossFormerConfig` (names, defaults, order), declared
    there once, but ``image_size``.
    """

    headless_output = "pooler_output"

    head_class = LinearHead
    config_class = CrossFormerConfig
    fixed_image_size = False  # no position embeddings: any size its windows tile (checked in forward_features)

    def __post_init__(self):
        # The per-field errors on the arguments as given, then the preset, expanded once into the fields.
        names = {f.name for f in dataclasses.fields(self)}
        for name, check in self.config_class.field_checks.items():
            if name in names:
                check(name, getattr(self, name))
        for name, value in expand_options(self).items():
            object.__setattr__(self, name, value)
        super().__post_init__()

    @classmethod
    def kwargs_from_config(cls, config) -> dict:
        """The config's fields with its preset expanded (``style=None``: every option explicit)."""
        return {**super().kwargs_from_config(config), **expand_options(config)}

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self)

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_layer = norm_factory(self.layer_norm_eps, **kw)
        block_class = remat_if(CrossFormerBlock, self.remat)
        # Stochastic depth grows linearly over all blocks of all stages (torch.linspace(0, rate, n)).
        total = sum(self.depth)
        rates = [self.drop_path_rate * t / max(total - 1, 1) for t in range(total)]
        stages, first = [], 0
        for i, dim in enumerate(self.dim):
            position_bias = functools.partial(
                DynamicPositionBias,
                dim // self.position_bias_reduction,
                self.heads[i] if self.position_bias_per_head else 1,
                self.position_bias_wide_table,
                norm_layer,
                **kw,
            )
            attention = functools.partial(
                CrossFormerAttention,
                dim,
                self.heads[i],
                self.dim_head[i],
                self.qkv_bias,
                position_bias,
                self.attn_dropout,
                self.proj_dropout,
                **kw,
            )
            embed_norm = ("after" if self.stem_norm else None) if i == 0 else ("before" if self.merge_norm else None)
            embed = functools.partial(
                CrossEmbedLayer,
                dim,
                self.cross_embed_kernel_sizes[i],
                self.cross_embed_strides[i],
                embed_norm,
                norm_layer,
                **kw,
            )
            block = functools.partial(
                block_class,
                dim=dim,
                mlp_dim=int(dim * self.mlp_ratio),
                attention=attention,
                whole_map_group=self.whole_map_group,
                ff_dropout=self.ff_dropout,
                norm_layer=norm_layer,
                **kw,
            )
            windows = tuple(self.geometry.stage_windows(i))
            stage_rates = tuple(rates[first : first + len(windows)])
            first += len(windows)
            stages.append(CrossFormerStage(embed, block, windows, stage_rates, self.embed_dropout if i == 0 else 0.0))
        self.stages = stages
        if self.final_norm:
            self.norm = norm_layer()
        self.setup_head()

    def forward_features(
        self, img, *, train: bool = False, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> Features:
        check_image(img, tuple(img.shape[1:3]), self.channels, family="CrossFormer")
        self.geometry.check_image_size(img.shape[1:3])
        x = img.astype(self.dtype)
        hidden_states, attentions = [], []
        for i, stage in enumerate(self.stages):
            embedded, x, stage_hidden, stage_attentions = stage(
                x, deterministic=not train, output_attentions=output_attentions
            )
            hidden_states += ([embedded] if i == 0 else []) + stage_hidden
            attentions += stage_attentions
        x = flatten_tokens(x)
        if self.final_norm:
            x = self.norm(x)
        return Features(
            last_hidden_state=x,
            pooler_output=x.mean(axis=1),
            hidden_states=tuple(flatten_tokens(h) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxCrossFormerPreTrainedModel(FlaxVisionPreTrainedModel):
    core_module_class = CrossFormer
    base_model_prefix = "crossformer"


FlaxCrossFormerModule, FlaxCrossFormerForImageClassificationModule = FlaxCrossFormerPreTrainedModel.shell_modules()


class FlaxCrossFormerModel(FlaxCrossFormerPreTrainedModel):
    """CrossFormer features: ``last_hidden_state`` (the last stage's tokens, after the final norm in the
    original style) and ``pooler_output`` (their mean); ``hidden_states``: the embedding and every block's
    output, as ``(batch, tokens, channels)``."""

    module_class = FlaxCrossFormerModule


class FlaxCrossFormerForImageClassification(FlaxCrossFormerPreTrainedModel):
    """CrossFormer with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxCrossFormerForImageClassificationModule
