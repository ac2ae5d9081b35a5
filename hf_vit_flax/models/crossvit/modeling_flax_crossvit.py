"""CrossViT: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification"
(Chen et al., arXiv 2103.14899).

Two branches see the same image through different patch sizes (small patches: fine, narrow; large
patches: coarse, wide). Each multi-scale block runs both branches' transformer encoders, then fuses
them through the class tokens only: each branch's class token attends to itself and the other
branch's patch tokens (paper Sec. 3.3), which is linear in the number of tokens.

``CrossViT`` is that one architecture with named variations (``CrossViTConfig`` documents each):
the patch embedding (``patch_embedding``, ``multi_conv``), per-branch input sizes, a LayerNorm closing
each branch encoder (``encoder_norm``), the fusion block (``fusion``: vit-pytorch's ``'project_in_out'``
or the paper's ``'token_projection'``), a final LayerNorm (``final_norm``), the heads (``head_norm``,
``head_combine``). ``style='vit_pytorch'`` (lucidrains' ``vit_pytorch.cross_vit.CrossViT``, the
defaults) and ``style='timm'`` (``timm.models.crossvit.CrossVit``, the paper authors' code) are presets
of those options, expanded once when the module is built.

The Hugging Face classes at the bottom are config-driven shells around the same module.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ... import weight_tables as wt
from ...layers import (
    Attention,
    ConvPatchEmbedding,
    CoreModule,
    Dense,
    DropPath,
    Features,
    LayerNorm,
    NormLayer,
    NormLinear,
    PatchEmbedding,
    PatchEmbeddingBase,
    Transformer,
    TransformerBlock,
    attend,
    check_image,
    flatten_tokens,
    gelu,
    norm_factory,
    pair,
    remat_if,
)
from ...modeling_flax_outputs import FlaxBaseModelOutputWithPooling, FlaxSequenceClassifierOutput
from ...modeling_utils import FlaxVisionPreTrainedModel
from .configuration_crossvit import CrossViTConfig, check_crossvit_options, expand_style

Dtype = Any

# timm's 'dagger' stems: per convolution (output width divisor, kernel, stride, padding).
DAGGER_STEMS = {
    12: ((4, 7, 4, 3), (2, 3, 3, 0), (1, 3, 1, 1)),
    16: ((4, 7, 4, 3), (2, 3, 2, 1), (1, 3, 2, 1)),
}
# ``token_init``: vit-pytorch's torch.randn, timm's trunc_normal_(std=.02).
TOKEN_INITIALIZERS = {"normal": nn.initializers.normal(1.0), "trunc_normal": nn.initializers.truncated_normal(0.02)}


class DaggerPatchEmbedding(PatchEmbeddingBase):
    """timm's ``PatchEmbed(multi_conv=True)`` of the *_dagger_* models: three convolutions, ReLU between
    (``patch_size``: an int, a key of ``DAGGER_STEMS``)."""

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
    patch_embedding: str = "norm_linear"
    multi_conv: bool = False
    token_init: str = "normal"
    emb_dropout: float = 0.0
    norm_layer: NormLayer = LayerNorm
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.patch_embedding == "conv" and self.multi_conv:
            self.patch_embed = DaggerPatchEmbedding(self.dim, self.patch_size, **kw)
        elif self.patch_embedding == "conv":
            self.patch_embed = ConvPatchEmbedding(self.dim, pair(self.patch_size), **kw)
        else:
            self.patch_embed = PatchEmbedding(self.dim, pair(self.patch_size), self.norm_layer, **kw)
        init = TOKEN_INITIALIZERS[self.token_init]
        num_patches = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        self.cls_token = self.param("cls_token", init, (1, self.dim), self.param_dtype)
        self.pos_embedding = self.param("pos_embedding", init, (num_patches + 1, self.dim), self.param_dtype)
        self.drop = nn.Dropout(self.emb_dropout)

    def __call__(self, images, *, deterministic: bool = True):
        x = self.patch_embed(images)
        class_token = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.dim))
        x = jnp.concatenate([class_token, x], axis=1) + self.pos_embedding.astype(x.dtype)
        return self.drop(x, deterministic=deterministic)


class CrossAttention(Attention):
    """A class token attends to ``[itself, context]`` (paper Sec. 3.3): one query, so linear in the tokens.

    The hyper-parameters of :class:`hf_vit_flax.layers.Attention`, with the query projected from the class
    token and the keys and values from ``[itself, context]`` (``q`` and ``kv``, vit-pytorch's ``to_q`` /
    ``to_kv``). ``norm`` is applied to the class token; with ``norm_context`` (the paper's, timm's) also to
    the context, which vit-pytorch leaves as it is. ``context=None``: the class token attends to itself only
    (the second and later blocks of ``fusion='token_projection'`` see only the class token their predecessor
    returned). Returns the attention output (no residual) and, when asked, the probabilities.
    """

    norm_context: bool = False
    norm_layer: NormLayer = LayerNorm

    def setup(self):
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.dim_head
        self.norm = self.norm_layer()
        self.q = dense(inner, use_bias=self.qkv_bias)
        self.kv = dense(2 * inner, use_bias=self.qkv_bias)  # keys, then values (vit-pytorch's to_kv)
        self.attn_drop = nn.Dropout(self.dropout)
        if self.project_out:
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
        out = out.reshape(batch, 1, self.heads * self.dim_head)
        if self.project_out:
            out = self.proj_drop(self.proj(out), deterministic=deterministic)
        return out, weights


class ProjectedCrossAttention(nn.Module):
    """vit-pytorch's ``ProjectInOut(dim, context_dim, Attention(context_dim))``: cross attention in the
    other branch's width, with Linear projections in and out when the two widths differ."""

    dim: int
    context_dim: int
    attention: Callable[..., nn.Module]  # builds the CrossAttention in the context width (a partial)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.dim != self.context_dim:
            self.project_in = Dense(self.context_dim, dtype=self.dtype, param_dtype=self.param_dtype)
            self.project_out = Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype)
        self.attn = self.attention(self.context_dim)

    def __call__(self, class_token, context, *, deterministic: bool = True, output_attentions: bool = False):
        projected = self.dim != self.context_dim
        x = self.project_in(class_token) if projected else class_token
        x, weights = self.attn(x, context, deterministic=deterministic, output_attentions=output_attentions)
        return (self.project_out(x) if projected else x), weights


class CrossViTHead(nn.Module):
    """One head per branch, ``sm_head`` and ``lg_head`` (LayerNorm -> Linear with ``head_norm``, else Linear).

    Splits the pooled features into the two branches, classifies each, and combines the logits
    (``head_combine``: vit-pytorch sums them, timm averages them).
    """

    param_names: ClassVar[tuple[str, ...]] = ("sm_head", "lg_head")

    num_classes: int
    sm_dim: int
    head_norm: bool = True
    head_combine: str = "sum"
    norm_layer: NormLayer = LayerNorm
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.head_norm:
            self.sm_head = NormLinear(self.num_classes, norm_layer=self.norm_layer, **kw)
            self.lg_head = NormLinear(self.num_classes, norm_layer=self.norm_layer, **kw)
        else:
            self.sm_head = Dense(self.num_classes, **kw)
            self.lg_head = Dense(self.num_classes, **kw)

    def __call__(self, pooled):
        logits = self.sm_head(pooled[..., : self.sm_dim]) + self.lg_head(pooled[..., self.sm_dim :])
        return logits / 2 if self.head_combine == "mean" else logits


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """The hyper-parameters of one branch's encoder (a hashable module field)."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int


class MultiScaleBlock(nn.Module):
    """One multi-scale block: each branch's pre-norm transformer blocks, then the class tokens fused across
    the branches by the sub-class (:class:`ProjectInOutBlock`, :class:`TokenProjectionBlock`: ``fusion``).

    The layers come configured from the model, each built here from its sizes: ``block`` builds a
    :class:`TransformerBlock` from a branch's (dim, heads, dim_head, mlp_dim) and ``cross_attention`` a
    :class:`CrossAttention` from (dim, heads, dim_head); ``norm_layer`` builds the LayerNorms.

    ``encoder_norm``: each branch's blocks and a final LayerNorm form vit-pytorch's ``Transformer``
    (parameters under ``{branch}_encoder``); without it the blocks sit in the multi-scale block itself
    (``{branch}_blocks_j``, timm's layout), with stochastic depth at the given rates.
    """

    sm: BranchSpec
    lg: BranchSpec
    cross_depth: int
    block: Callable[..., nn.Module]
    cross_attention: Callable[..., nn.Module]
    norm_layer: NormLayer = LayerNorm
    encoder_norm: bool = True
    sm_drop_path: tuple[float, ...] = ()
    lg_drop_path: tuple[float, ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        def branch_block(b: BranchSpec):
            return functools.partial(self.block, b.dim, b.heads, b.dim_head, b.mlp_dim)

        if self.encoder_norm:
            if any(self.sm_drop_path + self.lg_drop_path):
                raise ValueError("stochastic depth needs encoder_norm=False (vit-pytorch's Transformer has none)")
            self.sm_encoder = Transformer(branch_block(self.sm), self.sm.depth, norm_layer=self.norm_layer)
            self.lg_encoder = Transformer(branch_block(self.lg), self.lg.depth, norm_layer=self.norm_layer)
        else:
            self.sm_blocks = [branch_block(self.sm)(drop_path=r) for r in self.sm_drop_path or (0.0,) * self.sm.depth]
            self.lg_blocks = [branch_block(self.lg)(drop_path=r) for r in self.lg_drop_path or (0.0,) * self.lg.depth]
        self.setup_fusion()

    def setup_fusion(self) -> None:
        raise NotImplementedError

    def fuse(self, sm_tokens, lg_tokens, deterministic: bool):
        """Both branches' tokens with their class tokens updated from the other branch."""
        raise NotImplementedError

    def encode(self, branch: str, x, deterministic: bool, output_attentions: bool):
        if self.encoder_norm:
            encoder = getattr(self, f"{branch}_encoder")
            x, _, weights = encoder(x, deterministic=deterministic, output_attentions=output_attentions)
            return x, weights
        weights = ()
        for block in getattr(self, f"{branch}_blocks"):
            x, w = block(x, deterministic, output_attentions)
            weights += (w,)
        return x, weights if output_attentions else None

    def __call__(self, sm_tokens, lg_tokens, deterministic: bool = True, output_attentions: bool = False):
        sm_tokens, sm_weights = self.encode("sm", sm_tokens, deterministic, output_attentions)
        lg_tokens, lg_weights = self.encode("lg", lg_tokens, deterministic, output_attentions)
        sm_tokens, lg_tokens = self.fuse(sm_tokens, lg_tokens, deterministic)
        return sm_tokens, lg_tokens, (sm_weights, lg_weights)


class ProjectInOutBlock(MultiScaleBlock):
    """``fusion='project_in_out'``, vit-pytorch's ``CrossTransformer``: ``cross_depth`` rounds of
    ``cls = ProjectInOut(Attention)(cls, other branch's patches) + cls``, in each branch's own width."""

    cross_heads: int = 8
    cross_dim_head: int = 64

    def setup_fusion(self) -> None:
        attention = functools.partial(self.cross_attention, heads=self.cross_heads, dim_head=self.cross_dim_head)

        def cross(dim: int, context_dim: int):
            return ProjectedCrossAttention(dim, context_dim, attention, dtype=self.dtype, param_dtype=self.param_dtype)

        self.sm_attend_lg = [cross(self.sm.dim, self.lg.dim) for _ in range(self.cross_depth)]
        self.lg_attend_sm = [cross(self.lg.dim, self.sm.dim) for _ in range(self.cross_depth)]

    def fuse(self, sm_tokens, lg_tokens, deterministic: bool):
        sm_cls, sm_patches = sm_tokens[:, :1], sm_tokens[:, 1:]
        lg_cls, lg_patches = lg_tokens[:, :1], lg_tokens[:, 1:]
        kw = dict(deterministic=deterministic)
        for sm_attend_lg, lg_attend_sm in zip(self.sm_attend_lg, self.lg_attend_sm, strict=True):
            sm_cls = sm_attend_lg(sm_cls, lg_patches, **kw)[0] + sm_cls
            lg_cls = lg_attend_sm(lg_cls, sm_patches, **kw)[0] + lg_cls
        return jnp.concatenate([sm_cls, sm_patches], axis=1), jnp.concatenate([lg_cls, lg_patches], axis=1)


class TokenProjectionBlock(MultiScaleBlock):
    """``fusion='token_projection'``, the paper's cross-attention fusion (Eq. 8-9; timm's ``MultiScaleBlock``):
    per branch, its class token projected (LayerNorm -> GELU -> Linear) to the other width, ``cross_depth``
    cross-attention blocks over ``[class token, other branch's patch tokens]`` with the residual in that width
    (stochastic depth ``fusion_drop_path``), projected back; the result replaces the class token (no residual in
    the branch's own width, as in timm). The heads are those of the branch whose width the attention runs in."""

    fusion_drop_path: float = 0.0

    def setup_fusion(self) -> None:
        kw = dict(norm_layer=self.norm_layer, dtype=self.dtype, param_dtype=self.param_dtype)

        def cross(b: BranchSpec):
            # Runs in the width of branch ``b`` with its heads (timm: num_heads[(d + 1) % 2]).
            return [
                self.cross_attention(b.dim, b.heads, b.dim_head, norm_context=True) for _ in range(self.cross_depth)
            ]

        # The paper's f and g (timm's ``projs`` / ``revert_projs``): LayerNorm -> GELU -> Linear.
        self.sm_proj = NormLinear(self.lg.dim, gelu, **kw)
        self.lg_proj = NormLinear(self.sm.dim, gelu, **kw)
        self.sm_attend_lg = cross(self.lg)
        self.lg_attend_sm = cross(self.sm)
        self.sm_revert = NormLinear(self.sm.dim, gelu, **kw)
        self.lg_revert = NormLinear(self.lg.dim, gelu, **kw)
        self.drop_path = DropPath(self.fusion_drop_path)

    def _fuse(self, tokens, other, proj, attends, revert, deterministic):
        class_token = proj(tokens[:, :1])
        for k, attn in enumerate(attends):
            y, _ = attn(class_token, other[:, 1:] if k == 0 else None, deterministic=deterministic)
            class_token = class_token + self.drop_path(y, deterministic=deterministic)
        return jnp.concatenate([revert(class_token), tokens[:, 1:]], axis=1)

    def fuse(self, sm_tokens, lg_tokens, deterministic: bool):
        # Both fusions read the encoders' outputs (timm's outs_b), not each other's results.
        sm_fused = self._fuse(sm_tokens, lg_tokens, self.sm_proj, self.sm_attend_lg, self.sm_revert, deterministic)
        lg_fused = self._fuse(lg_tokens, sm_tokens, self.lg_proj, self.lg_attend_sm, self.lg_revert, deterministic)
        return sm_fused, lg_fused


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


# The arguments vit-pytorch's constructor requires (it has a default for the rest).
SEED_REQUIRED = ("image_size", "num_classes", "sm_dim", "lg_dim")


class CrossViT(CoreModule, CrossViTConfig.options_dataclass(required=SEED_REQUIRED)):
    """CrossViT with vit-pytorch's constructor arguments (plus named options); NHWC images.

    ``CrossViT(...)(img, train=False)`` returns logits ``(batch, num_classes)``: the sum (``head_combine='sum'``,
    vit-pytorch) or the mean (``'mean'``, timm) of the two branch heads. With ``num_classes <= 0`` there are no
    heads and it returns the pooled features (see ``forward_features``), as timm does. Dropout (``dropout``,
    ``emb_dropout``) and stochastic depth are active only with ``train=True`` and then need a ``'dropout'`` rng.

    The fields after ``channels`` are ``CrossViTConfig``'s (documented there): ``style`` is a preset, expanded
    once, when the module is built, into the named options it leaves unset (``None``), so
    ``CrossViT(..., style='timm')`` reads back ``fusion='token_projection'`` and so on; without a style the
    options default to vit-pytorch's. A branch whose size (``sm_image_size``, ``lg_image_size``) differs from
    ``image_size`` gets the image resized inside the forward with PyTorch's bicubic kernel (a=-0.75,
    align_corners=False, no antialias: ``jax.image.resize(method='bicubic-pytorch', antialias=False)``), or
    centre-cropped with ``crop_scale`` when it is smaller. ``remat``, ``dtype``, ``param_dtype``: gradient
    checkpointing, computation and parameter dtypes.

    Its fields are the constructor arguments of :class:`CrossViTConfig` (names, defaults, order), declared there once.
    """

    headless_output = "pooler_output"

    head_class = CrossViTHead
    config_class = CrossViTConfig

    def __post_init__(self):
        # The preset, once: the options it fills are ordinary field values from here on.
        for name, value in expand_style({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)
        super().__post_init__()

    @property
    def norm_layer(self) -> NormLayer:
        """Every LayerNorm of the model (eps and dtypes set once)."""
        return norm_factory(self.layer_norm_eps, self.dtype, self.param_dtype)

    @classmethod
    def head_module(cls, kwargs: dict) -> nn.Module:
        # The HF classifier shell passes the config's options: the head's norm factory is made from them.
        if "norm_layer" not in kwargs:
            dtypes = {k: kwargs[k] for k in ("dtype", "param_dtype") if k in kwargs}
            kwargs = {**kwargs, "norm_layer": norm_factory(kwargs.get("layer_norm_eps", 1e-5), **dtypes)}
        return super().head_module(kwargs)

    @property
    def branch_image_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(small branch, large branch) input sizes."""
        return tuple(pair(s if s is not None else self.image_size) for s in (self.sm_image_size, self.lg_image_size))

    def setup(self):
        check_crossvit_options(self)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_layer = self.norm_layer
        sm_size, lg_size = self.branch_image_sizes
        embed = functools.partial(
            BranchEmbedding,
            patch_embedding=self.patch_embedding,
            multi_conv=self.multi_conv,
            token_init=self.token_init,
            emb_dropout=self.emb_dropout,
            norm_layer=norm_layer,
            **kw,
        )
        self.sm_embed = embed(self.sm_dim, sm_size, self.sm_patch_size)
        self.lg_embed = embed(self.lg_dim, lg_size, self.lg_patch_size)

        sm = BranchSpec(self.sm_dim, self.sm_enc_depth, self.sm_enc_heads, self.sm_enc_dim_head, self.sm_enc_mlp_dim)
        lg = BranchSpec(self.lg_dim, self.lg_enc_depth, self.lg_enc_heads, self.lg_enc_dim_head, self.lg_enc_mlp_dim)
        rates = timm_drop_path_rates(
            self.drop_path_rate, self.depth, self.sm_enc_depth, self.lg_enc_depth, self.cross_attn_depth
        )
        # The layers' configuration, given once (cross_vit's Attention always has its output projection).
        layers = dict(dropout=self.dropout, qkv_bias=self.qkv_bias, norm_layer=norm_layer, **kw)
        block = functools.partial(remat_if(TransformerBlock, self.remat), **layers)
        cross_attention = functools.partial(CrossAttention, **layers)
        blocks = []
        for sm_rates, lg_rates, fusion_rate in rates:
            if self.fusion == "token_projection":
                fusion = functools.partial(TokenProjectionBlock, fusion_drop_path=fusion_rate)
            else:
                fusion = functools.partial(
                    ProjectInOutBlock, cross_heads=self.cross_attn_heads, cross_dim_head=self.cross_attn_dim_head
                )
            multi_scale = (sm, lg, self.cross_attn_depth, block, cross_attention, norm_layer, self.encoder_norm)
            blocks.append(fusion(*multi_scale, sm_rates, lg_rates, **kw))
        self.blocks = blocks
        if self.final_norm:
            self.sm_norm = norm_layer()
            self.lg_norm = norm_layer()
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
                ``final_norm``, when set);
            pooler_output: both branches' pooled features concatenated, ``(batch, sm_dim + lg_dim)``: the
                class tokens (or patch-token means), what ``forward_head`` splits and classifies (timm's
                ``pre_logits``);
            hidden_states: when asked, the small-patch branch's tokens ``(batch, 1 + patches, sm_dim)``
                per stage: the embeddings, then each multi-scale block's output (``hidden_states[-1]``
                is the last block's, before ``final_norm``);
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
        if self.final_norm:
            sm, lg = self.sm_norm(sm), self.lg_norm(lg)
        pooled = jnp.concatenate([self._pool(sm), self._pool(lg)], axis=-1)
        hidden_states = tuple(map(tuple, hidden_states)) if output_hidden_states else (None, None)
        attentions = tuple(map(tuple, attentions)) if output_attentions else (None, None)
        extra = {"lg_hidden_states": hidden_states[1], "lg_attentions": attentions[1]}
        return Features(sm, pooled, hidden_states[0], attentions[0], extra)


# -- weight maps of the family's own layers (hf_vit_flax.weight_tables; composed in convert_crossvit) ---------

# The PyTorch names of a CrossAttention's parts: timm's CrossAttentionBlock (its wk and wv concatenated into
# one "wkv" by the converter) and vit-pytorch's cross_vit.Attention.
TIMM_CROSS_ATTENTION = {"norm": "norm1", "q": "attn.wq", "kv": "attn.wkv", "proj": "attn.proj"}
VIT_PYTORCH_CROSS_ATTENTION = {"norm": "norm", "q": "to_q", "kv": "to_kv", "proj": "to_out.0"}


def dagger_patch_embedding_table(torch: str, flax: str) -> wt.Table:
    """timm's ``PatchEmbed(multi_conv=True)`` (``{torch}.proj.{0,2,4}``, ReLUs between) <-> :class:`DaggerPatchEmbedding`."""
    return [e for n, i in enumerate((0, 2, 4)) for e in wt.conv(f"{torch}.proj.{i}", f"{flax}/conv{n + 1}")]


def cross_attention_table(torch: str, flax: str, names: dict[str, str], *, qkv_bias: bool) -> wt.Table:
    """The weight map of one :class:`CrossAttention` (``names``: the PyTorch name of each part)."""
    t = lambda part: wt.join(torch, names[part], ".")  # noqa: E731
    return [
        *wt.norm(t("norm"), f"{flax}/norm"),
        *wt.linear(t("q"), f"{flax}/q", bias=qkv_bias),
        *wt.linear(t("kv"), f"{flax}/kv", bias=qkv_bias),
        *wt.linear(t("proj"), f"{flax}/proj"),
    ]


def projected_cross_attention_table(torch: str, flax: str, *, projected: bool) -> wt.Table:
    """vit-pytorch's ``ProjectInOut(Attention)`` <-> :class:`ProjectedCrossAttention` (``projected``: the widths
    differ, so ``project_in`` / ``project_out`` are Linear layers, not identities)."""
    table = cross_attention_table(f"{torch}.fn", f"{flax}/attn", VIT_PYTORCH_CROSS_ATTENTION, qkv_bias=False)
    if projected:
        table += [*wt.linear(f"{torch}.project_in", f"{flax}/project_in")]
        table += [*wt.linear(f"{torch}.project_out", f"{flax}/project_out")]
    return table


def class_token_projection_table(torch: str, flax: str) -> wt.Table:
    """timm's ``Sequential(norm, act, Linear)`` (``{torch}.0``, ``{torch}.2``) <-> a :class:`NormLinear` projection."""
    return [*wt.norm(f"{torch}.0", f"{flax}/norm"), *wt.linear(f"{torch}.2", f"{flax}/fc")]


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


class FlaxCrossViTPreTrainedModel(FlaxVisionPreTrainedModel):
    core_module_class = CrossViT
    base_model_prefix = "crossvit"


FlaxCrossViTModule, FlaxCrossViTForImageClassificationModule = FlaxCrossViTPreTrainedModel.shell_modules(
    FlaxCrossViTModelOutput, FlaxCrossViTImageClassifierOutput
)


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
