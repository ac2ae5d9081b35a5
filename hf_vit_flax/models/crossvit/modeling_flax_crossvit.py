"""CrossViT: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification"
(Chen et al., arXiv 2103.14899).

Two branches see the same image through different patch sizes (small patches: fine, narrow; large
patches: coarse, wide). Each multi-scale block runs both branches' transformer encoders, then fuses
them through the class tokens only: each branch's class token attends to itself and the other
branch's patch tokens (paper Sec. 3.3), which is linear in the number of tokens.

``CrossViT`` computes exactly one of two reference functions, chosen by ``style``:

* ``'vit_pytorch'`` (default): lucidrains' ``vit_pytorch.cross_vit.CrossViT``. Patch LayerNorm ->
  Linear -> LayerNorm embeddings; each branch encoder is vit-pytorch's pre-norm ``Transformer`` with a
  final LayerNorm; the cross attention queries with the normed class token, projected in and out
  (``ProjectInOut``, plain Linear layers) when the widths differ, and adds it back as a residual; each
  branch's head is LayerNorm -> Linear on its class token; the logits are the *sum* of the two heads.
* ``'timm'``: ``timm.models.crossvit.CrossVit`` (the paper authors' code). Convolutional patch
  embeddings (or the 'dagger' three-convolution stem, ``multi_conv``), per-branch input sizes (the
  second branch's image is resized inside the forward with PyTorch's bicubic kernel), qkv biases,
  LayerNorm eps 1e-6, class-token projections LayerNorm -> GELU -> Linear to the other width and back
  (timm's ``projs`` / ``fusion`` / ``revert_projs``), a final LayerNorm per branch, one Linear head per
  branch, the *mean* of the two heads.

The Hugging Face classes at the bottom are config-driven shells around the same module.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...layers import (
    ConvPatchEmbedding,
    CoreModule,
    DropPath,
    Features,
    PatchEmbedding,
    Transformer,
    TransformerBlock,
    attend,
    check_image,
    flatten_tokens,
    gelu,
    layer_norm,
    norm_factory,
    pair,
    remat_if,
)
from ...modeling_flax_outputs import FlaxBaseModelOutputWithPooling, FlaxSequenceClassifierOutput
from ...modeling_utils import FlaxBaseModelModule, FlaxClassifierModule, FlaxVisionPreTrainedModel
from .configuration_crossvit import CrossViTConfig, check_crossvit_arguments

Dtype = Any

# timm's 'dagger' stems: per convolution (output width divisor, kernel, stride, padding).
DAGGER_STEMS = {
    12: ((4, 7, 4, 3), (2, 3, 3, 0), (1, 3, 1, 1)),
    16: ((4, 7, 4, 3), (2, 3, 2, 1), (1, 3, 2, 1)),
}


class DaggerPatchEmbedding(nn.Module):
    """timm's ``PatchEmbed(multi_conv=True)`` of the *_dagger_* models: three convolutions, ReLU between."""

    dim: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = images
        for i, (divisor, kernel, stride, pad) in enumerate(DAGGER_STEMS[self.patch_size]):
            if i:
                x = nn.relu(x)
            # Explicit symmetric padding, as PyTorch's Conv2d (not 'SAME').
            x = nn.Conv(
                self.dim // divisor,
                (kernel, kernel),
                strides=(stride, stride),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv{i + 1}",
            )(x)
        return flatten_tokens(x)


class BranchEmbedding(nn.Module):
    """One branch's tokens: patch embedding, a class token in front, learned position embeddings, dropout."""

    dim: int
    image_size: tuple[int, int]
    patch_size: int
    style: str = "vit_pytorch"
    multi_conv: bool = False
    emb_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.style == "vit_pytorch":
            self.patch_embed = PatchEmbedding(
                self.dim, pair(self.patch_size), norm_factory(self.layer_norm_eps, **kw), **kw
            )
            init = nn.initializers.normal(1.0)  # torch.randn, as vit-pytorch
        else:
            if self.multi_conv:
                self.patch_embed = DaggerPatchEmbedding(self.dim, self.patch_size, **kw)
            else:
                self.patch_embed = ConvPatchEmbedding(self.dim, pair(self.patch_size), **kw)
            init = nn.initializers.truncated_normal(0.02)  # as timm
        num_patches = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        self.cls_token = self.param("cls_token", init, (1, self.dim), self.param_dtype)
        self.pos_embedding = self.param("pos_embedding", init, (num_patches + 1, self.dim), self.param_dtype)
        self.drop = nn.Dropout(self.emb_dropout)

    def __call__(self, images, *, deterministic: bool = True):
        x = self.patch_embed(images)
        class_token = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.dim))
        x = jnp.concatenate([class_token, x], axis=1) + self.pos_embedding.astype(x.dtype)
        return self.drop(x, deterministic=deterministic)


class CrossAttention(nn.Module):
    """A class token attends to ``[itself, context]`` (paper Sec. 3.3): one query, so linear in the tokens.

    ``norm`` is applied to the class token; with ``norm_context`` (timm) also to the context, which
    vit-pytorch leaves as it is. ``context=None``: the class token attends to itself only (timm's
    second and later fusion blocks see only the class token their predecessor returned).
    Returns the attention output (no residual) and, when asked, the probabilities.
    """

    dim: int
    heads: int
    dim_head: int
    dropout: float = 0.0
    qkv_bias: bool = False
    norm_context: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.dim_head
        self.norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype)
        self.q = dense(inner, use_bias=self.qkv_bias)
        self.kv = dense(2 * inner, use_bias=self.qkv_bias)  # keys, then values (vit-pytorch's to_kv)
        self.attn_drop = nn.Dropout(self.dropout)
        self.proj = dense(self.dim)
        self.proj_drop = nn.Dropout(self.dropout)

    def __call__(self, class_token, context=None, *, deterministic: bool = True, output_attentions: bool = False):
        query = self.norm(class_token)
        if context is None:
            keys = query
        else:
            keys = jnp.concatenate([query, self.norm(context) if self.norm_context else context], axis=1)
        batch, tokens = keys.shape[:2]
        q = self.q(query).reshape(batch, 1, self.heads, self.dim_head)
        kv = self.kv(keys).reshape(batch, tokens, 2, self.heads, self.dim_head)
        out, weights = attend(
            q,
            kv[:, :, 0],
            kv[:, :, 1],
            scale=self.dim_head**-0.5,
            dropout=self.attn_drop,
            deterministic=deterministic,
            return_weights=output_attentions,
        )
        out = self.proj(out.reshape(batch, 1, self.heads * self.dim_head))
        return self.proj_drop(out, deterministic=deterministic), weights


class ProjectedCrossAttention(nn.Module):
    """vit-pytorch's ``ProjectInOut(dim, context_dim, Attention(context_dim))``: cross attention in the
    other branch's width, with Linear projections in and out when the two widths differ."""

    dim: int
    context_dim: int
    heads: int
    dim_head: int
    dropout: float = 0.0
    qkv_bias: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.dim != self.context_dim:
            self.project_in = nn.Dense(self.context_dim, **kw)
            self.project_out = nn.Dense(self.dim, **kw)
        self.attn = CrossAttention(
            self.context_dim,
            self.heads,
            self.dim_head,
            self.dropout,
            qkv_bias=self.qkv_bias,
            layer_norm_eps=self.layer_norm_eps,
            **kw,
        )

    def __call__(self, class_token, context, *, deterministic: bool = True, output_attentions: bool = False):
        projected = self.dim != self.context_dim
        x = self.project_in(class_token) if projected else class_token
        x, weights = self.attn(x, context, deterministic=deterministic, output_attentions=output_attentions)
        return (self.project_out(x) if projected else x), weights


class ClassTokenProjection(nn.Module):
    """timm's ``projs`` / ``revert_projs`` entries: LayerNorm -> GELU -> Linear to the other branch's width."""

    features: int
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = gelu(layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x))
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


class ClassifierHead(nn.Module):
    """vit-pytorch's ``mlp_head``: LayerNorm -> Linear."""

    num_classes: int
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


class CrossViTHead(nn.Module):
    """One head per branch, ``sm_head`` and ``lg_head`` (vit-pytorch: LayerNorm -> Linear; timm: Linear).

    Splits the pooled features into the two branches, classifies each, and combines the logits (vit-pytorch
    sums them, timm averages them).
    """

    num_classes: int
    sm_dim: int
    style: str = "vit_pytorch"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.style == "vit_pytorch":
            self.sm_head = ClassifierHead(self.num_classes, self.layer_norm_eps, **kw)
            self.lg_head = ClassifierHead(self.num_classes, self.layer_norm_eps, **kw)
        else:
            self.sm_head = nn.Dense(self.num_classes, **kw)
            self.lg_head = nn.Dense(self.num_classes, **kw)

    def __call__(self, pooled):
        sm_logits = self.sm_head(pooled[..., : self.sm_dim])
        lg_logits = self.lg_head(pooled[..., self.sm_dim :])
        return sm_logits + lg_logits if self.style == "vit_pytorch" else (sm_logits + lg_logits) / 2


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """The hyper-parameters of one branch's encoder (a hashable module field)."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int


class MultiScaleEncoderLayer(nn.Module):
    """vit-pytorch's multi-scale encoder layer: both branch ``Transformer`` s, then ``cross_depth`` rounds of
    class-token cross attention, each ``cls = ProjectInOut(Attention)(cls, other patches) + cls``."""

    sm: BranchSpec
    lg: BranchSpec
    cross_depth: int
    cross_heads: int
    cross_dim_head: int
    dropout: float = 0.0
    qkv_bias: bool = False
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def encoder(b: BranchSpec):
            # cross_vit's Attention always has its output projection (unlike vit.py's project_out rule).
            return Transformer(
                b.dim,
                b.depth,
                b.heads,
                b.dim_head,
                b.mlp_dim,
                self.dropout,
                qkv_bias=self.qkv_bias,
                norm_layer=norm_factory(self.layer_norm_eps, **kw),
                remat=self.remat,
                **kw,
            )

        def cross(dim: int, context_dim: int):
            return ProjectedCrossAttention(
                dim,
                context_dim,
                self.cross_heads,
                self.cross_dim_head,
                self.dropout,
                self.qkv_bias,
                self.layer_norm_eps,
                **kw,
            )

        self.sm_encoder = encoder(self.sm)
        self.lg_encoder = encoder(self.lg)
        self.sm_attend_lg = [cross(self.sm.dim, self.lg.dim) for _ in range(self.cross_depth)]
        self.lg_attend_sm = [cross(self.lg.dim, self.sm.dim) for _ in range(self.cross_depth)]

    def __call__(self, sm_tokens, lg_tokens, deterministic: bool = True, output_attentions: bool = False):
        sm_tokens, _, sm_weights = self.sm_encoder(
            sm_tokens, deterministic=deterministic, output_attentions=output_attentions
        )
        lg_tokens, _, lg_weights = self.lg_encoder(
            lg_tokens, deterministic=deterministic, output_attentions=output_attentions
        )
        sm_cls, sm_patches = sm_tokens[:, :1], sm_tokens[:, 1:]
        lg_cls, lg_patches = lg_tokens[:, :1], lg_tokens[:, 1:]
        kw = dict(deterministic=deterministic)
        for sm_attend_lg, lg_attend_sm in zip(self.sm_attend_lg, self.lg_attend_sm, strict=True):
            sm_cls = sm_attend_lg(sm_cls, lg_patches, **kw)[0] + sm_cls
            lg_cls = lg_attend_sm(lg_cls, sm_patches, **kw)[0] + lg_cls
        sm_tokens = jnp.concatenate([sm_cls, sm_patches], axis=1)
        lg_tokens = jnp.concatenate([lg_cls, lg_patches], axis=1)
        return sm_tokens, lg_tokens, (sm_weights, lg_weights)


class MultiScaleBlock(nn.Module):
    """timm's ``MultiScaleBlock``: both branches' pre-norm blocks, then per branch: its class token projected
    (LayerNorm -> GELU -> Linear) to the other width, ``cross_depth`` cross-attention blocks over
    ``[class token, other branch's patch tokens]`` with the residual in that width, projected back; the
    result replaces the class token (no residual in the branch's own width, as in timm)."""

    sm: BranchSpec
    lg: BranchSpec
    cross_depth: int
    dropout: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    sm_drop_path: tuple[float, ...] = ()
    lg_drop_path: tuple[float, ...] = ()
    fusion_drop_path: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block_cls = remat_if(TransformerBlock, self.remat)

        def blocks(b: BranchSpec, rates: tuple[float, ...]):
            return [
                block_cls(
                    b.dim,
                    b.heads,
                    b.dim_head,
                    b.mlp_dim,
                    self.dropout,
                    qkv_bias=self.qkv_bias,
                    norm_layer=norm_factory(self.layer_norm_eps, **kw),
                    drop_path=rates[j] if rates else 0.0,
                    **kw,
                )
                for j in range(b.depth)
            ]

        def cross(b: BranchSpec):
            # Runs in the width of branch ``b`` with its heads (timm: num_heads[(d + 1) % 2]).
            return [
                CrossAttention(
                    b.dim,
                    b.heads,
                    b.dim_head,
                    self.dropout,
                    self.qkv_bias,
                    norm_context=True,
                    layer_norm_eps=self.layer_norm_eps,
                    **kw,
                )
                for _ in range(self.cross_depth)
            ]

        self.sm_blocks = blocks(self.sm, self.sm_drop_path)
        self.lg_blocks = blocks(self.lg, self.lg_drop_path)
        self.sm_proj = ClassTokenProjection(self.lg.dim, self.layer_norm_eps, **kw)
        self.lg_proj = ClassTokenProjection(self.sm.dim, self.layer_norm_eps, **kw)
        self.sm_attend_lg = cross(self.lg)
        self.lg_attend_sm = cross(self.sm)
        self.sm_revert = ClassTokenProjection(self.sm.dim, self.layer_norm_eps, **kw)
        self.lg_revert = ClassTokenProjection(self.lg.dim, self.layer_norm_eps, **kw)
        self.drop_path = DropPath(self.fusion_drop_path)

    def _fuse(self, tokens, other, proj, attends, revert, deterministic):
        class_token = proj(tokens[:, :1])
        for k, attn in enumerate(attends):
            y, _ = attn(class_token, other[:, 1:] if k == 0 else None, deterministic=deterministic)
            class_token = class_token + self.drop_path(y, deterministic=deterministic)
        return jnp.concatenate([revert(class_token), tokens[:, 1:]], axis=1)

    def __call__(self, sm_tokens, lg_tokens, deterministic: bool = True, output_attentions: bool = False):
        sm_weights, lg_weights = (), ()
        for block in self.sm_blocks:
            sm_tokens, weights = block(sm_tokens, deterministic, output_attentions)
            sm_weights += (weights,)
        for block in self.lg_blocks:
            lg_tokens, weights = block(lg_tokens, deterministic, output_attentions)
            lg_weights += (weights,)
        # Both fusions read the encoders' outputs (timm's outs_b), not each other's results.
        sm_fused = self._fuse(sm_tokens, lg_tokens, self.sm_proj, self.sm_attend_lg, self.sm_revert, deterministic)
        lg_fused = self._fuse(lg_tokens, sm_tokens, self.lg_proj, self.lg_attend_sm, self.lg_revert, deterministic)
        attentions = (sm_weights, lg_weights) if output_attentions else (None, None)
        return sm_fused, lg_fused, attentions


def timm_drop_path_rates(rate: float, depth: int, sm_depth: int, lg_depth: int, cross_depth: int):
    """timm CrossVit's stochastic-depth schedule: per multi-scale block, the rates of the small and large
    branch blocks and of the fusion blocks.

    timm spaces ``linspace(0, rate, sum(lg_depth + depth[-1]))`` and walks it by
    ``max(sm_depth, lg_depth) + depth[-1]`` per block, where ``depth[-1]`` is 0 for its single (un-nested)
    fusion block. Indices past the end (which make timm itself fail) are clamped.
    """
    timm_cross = 0 if cross_depth == 1 else cross_depth
    total = depth * (lg_depth + timm_cross)
    dpr = np.linspace(0.0, rate, total, dtype=np.float32).tolist() if total else []
    step = max(sm_depth, lg_depth) + timm_cross

    def at(index: int) -> float:
        return float(dpr[min(index, total - 1)]) if dpr else 0.0

    out = []
    for b in range(depth):
        start = b * step
        out.append(
            (
                tuple(at(start + j) for j in range(sm_depth)),
                tuple(at(start + j) for j in range(lg_depth)),
                at(min(start + step, total) - 1),
            )
        )
    return out


class CrossViT(CoreModule):
    """CrossViT with vit-pytorch's constructor arguments (plus timm's options); NHWC images.

    ``CrossViT(...)(img, train=False)`` returns logits ``(batch, num_classes)``: the sum of the two
    branch heads (``style='vit_pytorch'``) or their mean (``style='timm'``). With ``num_classes <= 0``
    there are no heads and it returns the pooled features (see ``forward_features``), as timm does.
    Dropout (``dropout``, ``emb_dropout``) and stochastic depth are active only with ``train=True``
    and then need a ``'dropout'`` rng.

    Fields beyond vit-pytorch's (all with defaults that keep vit-pytorch's function):
        style: ``'vit_pytorch'`` or ``'timm'`` (see the module docstring).
        sm_image_size, lg_image_size: the size each branch sees (timm's ``img_size * img_scale``, e.g. 240
            and 224); a branch whose size differs from ``image_size`` gets the image resized inside the
            forward with PyTorch's bicubic kernel (a=-0.75, align_corners=False, no antialias:
            ``jax.image.resize(method='bicubic-pytorch', antialias=False)``), or centre-cropped with
            ``crop_scale`` when it is smaller. ``None``: ``image_size``.
        multi_conv: timm's 'dagger' three-convolution patch embedding (patch sizes 12 and 16).
        qkv_bias: biases in the query/key/value projections.
        crop_scale: timm's crop-instead-of-resize option.
        global_pool: ``'token'`` (class tokens) or ``'avg'`` (mean of the patch tokens).
        layer_norm_eps: LayerNorm epsilon (1e-5 in vit-pytorch, 1e-6 in timm).
        drop_path_rate: stochastic depth with timm's schedule (``style='timm'``).
        remat, dtype, param_dtype: gradient checkpointing, computation and parameter dtypes.

    In ``style='timm'`` the cross attention runs with the heads of the branch whose width it runs in,
    so ``cross_attn_heads`` / ``cross_attn_dim_head`` are ignored, and ``sm_enc_heads *
    sm_enc_dim_head`` must equal ``sm_dim`` (likewise for the large branch).
    """

    headless_output = "pooler_output"

    image_size: int | tuple[int, int]
    num_classes: int
    sm_dim: int
    lg_dim: int
    sm_patch_size: int = 12
    sm_enc_depth: int = 1
    sm_enc_heads: int = 8
    sm_enc_mlp_dim: int = 2048
    sm_enc_dim_head: int = 64
    lg_patch_size: int = 16
    lg_enc_depth: int = 4
    lg_enc_heads: int = 8
    lg_enc_mlp_dim: int = 2048
    lg_enc_dim_head: int = 64
    cross_attn_depth: int = 2
    cross_attn_heads: int | None = 8
    cross_attn_dim_head: int | None = 64
    depth: int = 3
    dropout: float = 0.1
    emb_dropout: float = 0.1
    channels: int = 3
    style: str = "vit_pytorch"
    sm_image_size: int | tuple[int, int] | None = None
    lg_image_size: int | tuple[int, int] | None = None
    multi_conv: bool = False
    qkv_bias: bool = False
    crop_scale: bool = False
    global_pool: str = "token"
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    head_class = CrossViTHead
    config_class = CrossViTConfig

    @property
    def branch_image_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(small branch, large branch) input sizes."""
        return tuple(pair(s if s is not None else self.image_size) for s in (self.sm_image_size, self.lg_image_size))

    def setup(self):
        check_crossvit_arguments(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        sm_size, lg_size = self.branch_image_sizes
        embed = functools.partial(
            BranchEmbedding,
            style=self.style,
            multi_conv=self.multi_conv,
            emb_dropout=self.emb_dropout,
            layer_norm_eps=self.layer_norm_eps,
            **kw,
        )
        self.sm_embed = embed(self.sm_dim, sm_size, self.sm_patch_size)
        self.lg_embed = embed(self.lg_dim, lg_size, self.lg_patch_size)

        sm = BranchSpec(self.sm_dim, self.sm_enc_depth, self.sm_enc_heads, self.sm_enc_dim_head, self.sm_enc_mlp_dim)
        lg = BranchSpec(self.lg_dim, self.lg_enc_depth, self.lg_enc_heads, self.lg_enc_dim_head, self.lg_enc_mlp_dim)
        common = dict(
            dropout=self.dropout, qkv_bias=self.qkv_bias, layer_norm_eps=self.layer_norm_eps, remat=self.remat, **kw
        )
        if self.style == "vit_pytorch":
            self.blocks = [
                MultiScaleEncoderLayer(
                    sm, lg, self.cross_attn_depth, self.cross_attn_heads, self.cross_attn_dim_head, **common
                )
                for _ in range(self.depth)
            ]
        else:
            rates = timm_drop_path_rates(
                self.drop_path_rate, self.depth, self.sm_enc_depth, self.lg_enc_depth, self.cross_attn_depth
            )
            self.blocks = [
                MultiScaleBlock(
                    sm,
                    lg,
                    self.cross_attn_depth,
                    sm_drop_path=sm_rates,
                    lg_drop_path=lg_rates,
                    fusion_drop_path=fusion_rate,
                    **common,
                )
                for sm_rates, lg_rates, fusion_rate in rates
            ]
            self.sm_norm = layer_norm(self.layer_norm_eps, **kw)
            self.lg_norm = layer_norm(self.layer_norm_eps, **kw)
        self.setup_head()

    def _branch_input(self, img, size: tuple[int, int]):
        """timm's ``scale_image``: the image at the size a branch takes."""
        batch, height, width, channels = img.shape
        if (height, width) == size:
            return img
        if self.crop_scale and size[0] <= height and size[1] <= width:
            top, left = int(round((height - size[0]) / 2.0)), int(round((width - size[1]) / 2.0))
            return img[:, top : top + size[0], left : left + size[1]]
        # F.interpolate(mode='bicubic', align_corners=False): cubic a=-0.75, no antialias, clamped edges.
        return jax.image.resize(img, (batch, *size, channels), method="bicubic-pytorch", antialias=False)

    def _pool(self, tokens):
        return tokens[:, 1:].mean(axis=1) if self.global_pool == "avg" else tokens[:, 0]

    def forward_features(
        self, img, *, train: bool = False, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> Features:
        """Features of both branches.

        Returns ``Features`` with
            last_hidden_state: the small-patch branch's tokens ``(batch, 1 + patches, sm_dim)`` (after
                timm's final norm; vit-pytorch has none before its heads);
            pooler_output: both branches' pooled features concatenated, ``(batch, sm_dim + lg_dim)``: the
                class tokens (or patch-token means), what ``forward_head`` splits and classifies (timm's
                ``pre_logits``);
            hidden_states: when asked, the small-patch branch's tokens ``(batch, 1 + patches, sm_dim)``
                per stage: the embeddings, then each multi-scale block's output (``hidden_states[-1]``
                is the last block's, before timm's final norm);
            attentions: when asked, the small-patch branch's self-attention probabilities
                ``(batch, heads, tokens, tokens)``, one per encoder block in order (all multi-scale blocks);
            extra: the large-patch branch's, in the same structure, as ``lg_hidden_states`` and
                ``lg_attentions`` (fields of the Hugging Face output classes; ``None`` unless asked).
        """
        check_image(img, pair(self.image_size), self.channels, family="CrossViT")
        img = img.astype(self.dtype)
        deterministic = not train
        sm_size, lg_size = self.branch_image_sizes
        sm = self.sm_embed(self._branch_input(img, sm_size), deterministic=deterministic)
        lg = self.lg_embed(self._branch_input(img, lg_size), deterministic=deterministic)
        hidden_states, attentions = ([sm], [lg]), ([], [])
        for block in self.blocks:
            sm, lg, (sm_weights, lg_weights) = block(sm, lg, deterministic, output_attentions)
            hidden_states[0].append(sm)
            hidden_states[1].append(lg)
            if output_attentions:
                attentions[0].extend(sm_weights)
                attentions[1].extend(lg_weights)
        if self.style == "timm":
            sm, lg = self.sm_norm(sm), self.lg_norm(lg)
        pooled = jnp.concatenate([self._pool(sm), self._pool(lg)], axis=-1)
        hidden_states = tuple(map(tuple, hidden_states)) if output_hidden_states else (None, None)
        attentions = tuple(map(tuple, attentions)) if output_attentions else (None, None)
        extra = {"lg_hidden_states": hidden_states[1], "lg_attentions": attentions[1]}
        return Features(sm, pooled, hidden_states[0], attentions[0], extra)


# -- Hugging Face classes -----------------------------------------------------------------------------


@flax.struct.dataclass
class FlaxCrossViTModelOutput(FlaxBaseModelOutputWithPooling):
    """transformers' ``FlaxBaseModelOutputWithPooling`` (its ``hidden_states`` and ``attentions`` are the
    small-patch branch's) plus the large-patch branch's: ``lg_hidden_states`` (the embeddings, then each
    multi-scale block's output, ``(batch, 1 + patches, lg_dim)``) and ``lg_attentions`` (one
    ``(batch, heads, tokens, tokens)`` per encoder block), when asked for."""

    lg_hidden_states: tuple | None = None
    lg_attentions: tuple | None = None


@flax.struct.dataclass
class FlaxCrossViTImageClassifierOutput(FlaxSequenceClassifierOutput):
    """transformers' ``FlaxSequenceClassifierOutput`` plus the large-patch branch's ``lg_hidden_states``
    and ``lg_attentions`` (see :class:`FlaxCrossViTModelOutput`)."""

    lg_hidden_states: tuple | None = None
    lg_attentions: tuple | None = None


class FlaxCrossViTModule(FlaxBaseModelModule):
    core_module_class = CrossViT
    base_model_prefix = "crossvit"
    output_class = FlaxCrossViTModelOutput


class FlaxCrossViTForImageClassificationModule(FlaxClassifierModule):
    core_module_class = CrossViT
    base_model_prefix = "crossvit"
    output_class = FlaxCrossViTImageClassifierOutput


class FlaxCrossViTPreTrainedModel(FlaxVisionPreTrainedModel):
    config_class = CrossViTConfig
    base_model_prefix = "crossvit"
    head_param_names = ("sm_head", "lg_head")


class FlaxCrossViTModel(FlaxCrossViTPreTrainedModel):
    """CrossViT features: ``last_hidden_state`` (the small-patch branch's tokens) and ``pooler_output``
    (both branches' class tokens, concatenated: ``(batch, sm_dim + lg_dim)``).

    With ``output_hidden_states`` / ``output_attentions``, ``hidden_states`` / ``attentions`` are the
    small-patch branch's (tuples of arrays, as in every transformers model) and ``lg_hidden_states`` /
    ``lg_attentions`` the large-patch branch's (:class:`FlaxCrossViTModelOutput`)."""

    module_class = FlaxCrossViTModule


class FlaxCrossViTForImageClassification(FlaxCrossViTPreTrainedModel):
    """CrossViT with its two classification heads; ``logits`` of shape ``(batch, num_labels)``, and the
    branches' ``hidden_states`` / ``lg_hidden_states`` and ``attentions`` / ``lg_attentions`` when asked for
    (:class:`FlaxCrossViTImageClassifierOutput`)."""

    module_class = FlaxCrossViTForImageClassificationModule
