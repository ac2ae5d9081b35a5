"""CaiT: "Going deeper with Image Transformers" (Touvron et al., arXiv 2103.17239).

``CaiT`` is one architecture with named variations, as timm's ``Cait`` takes its blocks as arguments:
patch embedding -> position embedding -> self-attention layers over the patches (talking heads,
LayerScale) -> class-attention layers that update the class token alone -> LayerNorm -> head on
the class token. Its options express the two PyTorch CaiTs people use (``style`` names the preset):

* lucidrains' ``vit_pytorch.cait.CaiT`` (``style="vit_pytorch"``, the default): patch LayerNorm ->
  Linear -> LayerNorm embedding (``patch_embedding="norm_linear"``); bias-free head-mixing matrices,
  with attention dropout before the post-softmax mixing; talking heads in the class-attention layers
  too (``cls_talking_heads``), which attend to [normed class token, *un-normalised* patch tokens]
  (``cls_norm_patches=False``) and use dropout (``cls_dropout``); LayerScale initialised from each
  layer's index within its stack (``layer_scale_init=None``); layer dropout while training.
* timm's ``timm.models.cait.Cait`` (``style="timm"``, the paper's released models): a convolutional
  patch embedding with bias; mixing layers ``proj_l`` / ``proj_w`` with biases
  (``talking_heads_bias``), attention dropout after the mixing; class attention without talking
  heads, in which the class token queries the LayerNorm of [class token, patch tokens], without
  dropout; drop path in the self-attention layers only.

Both share the same parameter names, so each converter is a short rename table:
``patch_embed``, ``pos_embedding`` (1, patches, dim), ``cls_token`` (1, 1, dim),
``patch_transformer.blocks_i.{norm1, attn.{qkv, proj_l, proj_w, proj}, ls1, norm2, mlp, ls2}``,
``cls_transformer.blocks_i.{norm1, attn.{q, k, v, [proj_l, proj_w], proj}, ls1, norm2, mlp, ls2}``,
``norm`` and ``head``. The Hugging Face classes at the bottom are config-driven shells around ``CaiT``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...layers import (
    ConvPatchEmbedding,
    CoreModule,
    Dense,
    DropPath,
    Features,
    FeedForward,
    LayerNorm,
    LayerScale,
    LinearHead,
    NormLayer,
    PatchEmbedding,
    attend,
    check_image,
    gradient_barrier,
    norm_factory,
    pair,
    remat_if,
)
from ...modeling_utils import FlaxVisionPreTrainedModel
from .configuration_cait import STYLES, CaiTConfig, apply_style, check_cait_options

Dtype = Any

# ``weight_init``: how the position embedding, the class token and the talking-heads matrices start.
INITIALIZERS = {
    "normal": nn.initializers.normal(1.0),  # vit-pytorch: torch.randn
    "trunc_normal": nn.initializers.truncated_normal(0.02),  # timm: trunc_normal_(std=.02)
}


def vit_pytorch_layer_scale_init(index: int) -> float:
    """vit-pytorch's LayerScale init from a layer's 1-based index within its stack (the paper, section 2)."""
    if index <= 18:
        return 0.1
    if index <= 24:
        return 1e-5
    return 1e-6


class TalkingHeads(nn.Module):
    """Linear mixing of attention heads (Shazeer et al., "Talking-Heads Attention", arXiv 2003.02436).

    ``out[:, g] = sum_h x[:, h] * kernel[h, g] (+ bias[g])`` over ``(batch, heads, q, k)`` maps: vit-pytorch's
    ``einsum('b h i j, h g -> b g i j', x, mix)`` with ``kernel = mix``, and timm's ``proj_l`` / ``proj_w``
    Linear layers over the head axis with ``kernel = weight.T``.
    """

    heads: int
    use_bias: bool = False
    kernel_init: Callable = nn.initializers.normal(1.0)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (self.heads, self.heads), self.param_dtype)
        # A batched (g, h) @ (h, q k) matmul with the kernel broadcast over the batch: no transposes of the
        # maps, unlike the plain einsum (whose dot contracts the maps' second axis); measured on XLA:CPU,
        # the forward and backward of CaiT-XXS24's attention 2x faster.
        batch, heads, queries, keys = x.shape
        kernel = jnp.broadcast_to(kernel.T.astype(x.dtype), (batch, self.heads, heads))
        x = jnp.einsum("bgh,bhn->bgn", kernel, x.reshape(batch, heads, queries * keys))
        x = x.reshape(batch, self.heads, queries, keys)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.heads,), self.param_dtype)
            x = x + bias.astype(x.dtype)[None, :, None, None]
        return x


def talking_heads_attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    pre_softmax: TalkingHeads,
    post_softmax: TalkingHeads,
    dropout: nn.Dropout,
    dropout_before_mixing: bool,
    deterministic: bool,
    return_weights: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """:func:`hf_vit_flax.layers.attend` with head mixing before and after the softmax (all in float32).

    vit-pytorch drops attention weights before the post-softmax mixing, timm after it. The returned
    weights are the ones that multiply the values (after the post-softmax mixing: they need not sum to 1).
    """
    # Heads-major operands, as in ``attend`` (XLA:CPU's batched matmuls are faster without transposes inside
    # the dot). Unlike there, the softmax is normalised before the value matmul: the post-softmax mixing
    # needs the normalised weights.
    dtype = q.dtype
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    weights = jax.nn.softmax(pre_softmax(logits), axis=-1)
    if dropout_before_mixing:
        weights = dropout(weights, deterministic=deterministic)
    weights = post_softmax(weights)
    if not dropout_before_mixing:
        weights = dropout(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype), v).transpose(0, 2, 1, 3)
    return out, (weights if return_weights else None)


class _CaiTAttentionBase(nn.Module):
    dim: int
    heads: int
    dim_head: int
    dropout: float = 0.0
    attn_dropout: float = 0.0
    qkv_bias: bool = False
    # Builds a head-mixing layer (a TalkingHeads partial); None: plain softmax attention.
    talking_heads: Callable[..., nn.Module] | None = None
    dropout_before_mixing: bool = True  # vit-pytorch drops attention weights before the post-softmax mixing
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _dense(self, features: int, **kwargs) -> Dense:
        return Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)

    def _setup_output(self) -> None:
        """The head mixings (if any), attention dropout and the output projection (the layers after q, k, v)."""
        if self.talking_heads is not None:
            self.proj_l, self.proj_w = self.talking_heads(), self.talking_heads()
        self.attn_drop = nn.Dropout(self.attn_dropout)
        self.proj = self._dense(self.dim)
        self.proj_drop = nn.Dropout(self.dropout)

    def _attend(self, q, k, v, deterministic: bool, output_attentions: bool):
        scale = self.dim_head**-0.5
        if self.talking_heads is not None:
            return talking_heads_attend(
                q,
                k,
                v,
                scale=scale,
                pre_softmax=self.proj_l,
                post_softmax=self.proj_w,
                dropout=self.attn_drop,
                dropout_before_mixing=self.dropout_before_mixing,
                deterministic=deterministic,
                return_weights=output_attentions,
            )
        return attend(
            q, k, v, scale=scale, dropout=self.attn_drop, deterministic=deterministic, return_weights=output_attentions
        )

    def _project(self, out, deterministic: bool):
        batch, tokens = out.shape[:2]
        out = self.proj(out.reshape(batch, tokens, self.heads * self.dim_head))
        return self.proj_drop(out, deterministic=deterministic)


class TalkingHeadAttention(_CaiTAttentionBase):
    """Self-attention over the patch tokens with a fused ``qkv`` projection (talking heads in both references).

    vit-pytorch's separate ``to_q`` / ``to_kv`` of the same normed tokens are stored fused, as timm's ``qkv``.
    """

    def setup(self):
        self.qkv = self._dense(3 * self.heads * self.dim_head, use_bias=self.qkv_bias)
        self._setup_output()

    def __call__(self, x, *, deterministic: bool = True, output_attentions: bool = False):
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.dim_head)
        out, weights = self._attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], deterministic, output_attentions)
        return self._project(out, deterministic), weights


class ClassAttention(_CaiTAttentionBase):
    """Class attention: the class token(s) query ``context`` (the class token and the patch tokens).

    timm's ``ClassAttn`` (no talking heads); vit-pytorch reuses its talking-heads ``Attention`` here, whose
    ``to_kv`` is stored split into ``k`` and ``v``.
    """

    def setup(self):
        inner = self.heads * self.dim_head
        self.q = self._dense(inner, use_bias=self.qkv_bias)
        self.k = self._dense(inner, use_bias=self.qkv_bias)
        self.v = self._dense(inner, use_bias=self.qkv_bias)
        self._setup_output()

    def __call__(self, cls, context, *, deterministic: bool = True, output_attentions: bool = False):
        def split(t):
            return t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)

        q, k, v = split(self.q(cls)), split(self.k(context)), split(self.v(context))
        out, weights = self._attend(q, k, v, deterministic, output_attentions)
        return self._project(out, deterministic), weights


class _CaiTBlockBase(nn.Module):
    dim: int
    mlp_dim: int
    attention: Callable[..., nn.Module]  # builds the attention layer (a partial of one of the classes above)
    norm_layer: NormLayer = LayerNorm
    dropout: float = 0.0
    layer_scale_init: float = 0.1
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    # The positions of ``deterministic`` and ``output_attentions`` in ``__call__`` (self = 0), for nn.remat.
    static_argnums: ClassVar[tuple[int, ...]]

    def setup(self):
        self.norm1 = self.norm_layer()
        self.attn = self.attention()
        self.ls1 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
        self.norm2 = self.norm_layer()
        self.mlp = FeedForward(self.dim, self.mlp_dim, self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)
        self.ls2 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
        self.drop_path1 = DropPath(self.drop_path)
        self.drop_path2 = DropPath(self.drop_path)

    def _feed_forward(self, x, deterministic: bool):
        # The barrier at every layer's output keeps XLA:CPU's backward linear in depth (see gradient_barrier).
        y = self.drop_path2(self.ls2(self.mlp(self.norm2(x), deterministic=deterministic)), deterministic=deterministic)
        return gradient_barrier(x + y)


class LayerScaleBlock(_CaiTBlockBase):
    """A self-attention layer: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    static_argnums = (2, 3)

    def __call__(self, x, deterministic: bool = True, output_attentions: bool = False):
        y, weights = self.attn(self.norm1(x), deterministic=deterministic, output_attentions=output_attentions)
        x = x + self.drop_path1(self.ls1(y), deterministic=deterministic)
        return self._feed_forward(x, deterministic), weights


class ClassAttentionBlock(_CaiTBlockBase):
    """A class-attention layer: updates the class token only, from [class token, patch tokens].

    ``norm_patches``: ``norm1`` normalises the whole sequence and the query is the normed class token
    (timm); otherwise it normalises the class token only and the patch tokens are appended as they are
    (vit-pytorch).
    """

    norm_patches: bool = False

    static_argnums = (3, 4)

    def __call__(self, cls, patches, deterministic: bool = True, output_attentions: bool = False):
        if self.norm_patches:
            context = self.norm1(jnp.concatenate([cls, patches], axis=1))
            query = context[:, : cls.shape[1]]
        else:
            query = self.norm1(cls)
            context = jnp.concatenate([query, patches], axis=1)
        y, weights = self.attn(query, context, deterministic=deterministic, output_attentions=output_attentions)
        cls = cls + self.drop_path1(self.ls1(y), deterministic=deterministic)
        return self._feed_forward(cls, deterministic), weights


class CaiTStack(nn.Module):
    """One of CaiT's two stacks (self-attention over patches, or class attention), with layer dropout.

    ``block`` builds one layer (a partial of ``LayerScaleBlock`` or ``ClassAttentionBlock``) given its
    LayerScale init: ``layer_scale_init`` or, when that is ``None``, vit-pytorch's value for the layer's
    index in this stack. Layer dropout (vit-pytorch's ``dropout_layers``) skips each whole layer with
    probability ``layer_dropout`` while training, keeping at least one; the draw comes from the
    ``'dropout'`` rng on every call (the mask is sown as the ``'intermediates'`` ``kept_layers``). Every
    layer's parameters exist whatever is dropped.
    """

    block: Callable[..., nn.Module]
    depth: int
    layer_scale_init: float | None = None
    layer_dropout: float = 0.0

    def setup(self):
        self.blocks = [
            self.block(
                layer_scale_init=(
                    vit_pytorch_layer_scale_init(i + 1) if self.layer_scale_init is None else self.layer_scale_init
                )
            )
            for i in range(self.depth)
        ]

    def kept_layers(self) -> jax.Array:
        drop_key, rescue_key = jax.random.split(self.make_rng("dropout"))
        keep = jax.random.uniform(drop_key, (self.depth,)) >= self.layer_dropout
        rescue = jax.random.randint(rescue_key, (), 0, self.depth)
        return keep | (~keep.any() & (jnp.arange(self.depth) == rescue))

    def __call__(
        self,
        x,
        context=None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        """``x``: the tokens this stack updates; ``context``: the patch tokens (class attention only).

        Returns ``(x, hidden_states, attentions)``; ``hidden_states`` holds the stack's input and every
        layer's output (for class attention: the class token(s) followed by ``context``).
        """

        def sequence(y):
            return y if context is None else jnp.concatenate([y, context], axis=1)

        keep = self.kept_layers() if not deterministic and self.layer_dropout > 0 else None
        if keep is not None:
            self.sow("intermediates", "kept_layers", keep)  # which layers ran: apply(..., mutable="intermediates")
        hidden_states = (sequence(x),) if output_hidden_states else None
        attentions = () if output_attentions else None
        for i, block in enumerate(self.blocks):
            if context is None:
                y, weights = block(x, deterministic, output_attentions)
            else:
                y, weights = block(x, context, deterministic, output_attentions)
            x = y if keep is None else jnp.where(keep[i], y, x)
            if output_hidden_states:
                hidden_states += (sequence(x),)
            if output_attentions:
                attentions += (weights,)
        return x, hidden_states, attentions


# The arguments vit-pytorch's constructor requires (it has a default for the rest).
SEED_REQUIRED = ("image_size", "patch_size", "num_classes", "dim", "depth", "cls_depth", "heads", "mlp_dim")


class CaiT(CoreModule, CaiTConfig.options_dataclass(required=SEED_REQUIRED)):
    """Class-Attention in Image Transformers, with vit-pytorch's constructor arguments; NHWC images.

    ``CaiT(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with ``num_classes <= 0``
    it returns the final normed tokens ``(batch, 1 + patches, dim)`` (class token first). Dropout,
    layer dropout and drop path act only with ``train=True`` and then need a ``'dropout'`` rng.

    Beyond vit-pytorch's arguments: ``channels``, ``layer_norm_eps``, ``qkv_bias``, ``layer_scale_init``
    (``None``: vit-pytorch's rule by layer index), ``cls_mlp_dim`` (default ``mlp_dim``), ``attn_dropout``
    (default ``dropout``), ``drop_path_rate`` (self-attention layers), ``head_dropout``, the options that
    tell vit-pytorch's and timm's CaiT apart (``patch_embedding`` ... ``weight_init``: see
    :class:`hf_vit_flax.CaiTConfig`), ``remat``, ``dtype``, ``param_dtype``.

    ``style`` (``"vit_pytorch"`` or ``"timm"``) is a preset of those options, expanded once, at construction:
    the options left ``None`` take its values (without ``style``, vit-pytorch's), and the field then reads
    ``None``. Nothing below this module knows the presets.

    Its fields are the constructor arguments of :class:`CaiTConfig` (names, defaults, order), declared there once.
    """

    head_class = LinearHead
    config_class = CaiTConfig

    def __post_init__(self):
        # The preset, expanded into its options once (the per-field checks of CoreModule then see them).
        names = ("style", *STYLES["vit_pytorch"])
        for name, value in {"style": None, **apply_style({n: getattr(self, n) for n in names})}.items():
            object.__setattr__(self, name, value)
        super().__post_init__()

    def setup(self):
        check_cait_options(self)
        (height, width), patch_size = pair(self.image_size), pair(self.patch_size)
        num_patches = (height // patch_size[0]) * (width // patch_size[1])
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_layer = norm_factory(self.layer_norm_eps, **kw)
        init = INITIALIZERS[self.weight_init]

        if self.patch_embedding == "conv":
            self.patch_embed = ConvPatchEmbedding(self.dim, patch_size, **kw)
        else:
            self.patch_embed = PatchEmbedding(self.dim, patch_size, norm_layer, **kw)
        # Position embeddings cover the patches only: the class token joins after the patch stack.
        self.pos_embedding = self.param("pos_embedding", init, (1, num_patches, self.dim), self.param_dtype)
        self.cls_token = self.param("cls_token", init, (1, 1, self.dim), self.param_dtype)
        self.emb_drop = nn.Dropout(self.emb_dropout)

        def stack(block_class, attention_class, depth, *, dropout, attn_dropout, talking_heads, **block_options):
            attention = functools.partial(
                attention_class,
                self.dim,
                self.heads,
                self.dim_head,
                dropout=dropout,
                attn_dropout=attn_dropout,
                qkv_bias=self.qkv_bias,
                talking_heads=talking_heads,
                dropout_before_mixing=self.attn_dropout_before_mixing,
                **kw,
            )
            block = functools.partial(
                remat_if(block_class, self.remat, block_class.static_argnums),
                attention=attention,
                norm_layer=norm_layer,
                dim=self.dim,
                dropout=dropout,
                **block_options,
                **kw,
            )
            return CaiTStack(block, depth, layer_scale_init=self.layer_scale_init, layer_dropout=self.layer_dropout)

        talking_heads = functools.partial(
            TalkingHeads, self.heads, use_bias=self.talking_heads_bias, kernel_init=init, param_dtype=self.param_dtype
        )
        attn_dropout = self.dropout if self.attn_dropout is None else self.attn_dropout
        self.patch_transformer = stack(
            LayerScaleBlock,
            TalkingHeadAttention,
            self.depth,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attn_dropout=attn_dropout,
            talking_heads=talking_heads,
            drop_path=self.drop_path_rate,
        )
        self.cls_transformer = stack(
            ClassAttentionBlock,
            ClassAttention,
            self.cls_depth,
            mlp_dim=self.cls_mlp_dim or self.mlp_dim,
            dropout=self.dropout if self.cls_dropout else 0.0,
            attn_dropout=attn_dropout if self.cls_dropout else 0.0,
            talking_heads=talking_heads if self.cls_talking_heads else None,
            norm_patches=self.cls_norm_patches,
        )
        self.norm = norm_layer()
        self.head_drop = nn.Dropout(self.head_dropout)
        self.setup_head()

    def forward_features(
        self, img, *, train: bool = False, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> Features:
        check_image(img, pair(self.image_size), self.channels, family="CaiT")
        x = self.patch_embed(img.astype(self.dtype))
        x = x + self.pos_embedding.astype(x.dtype)
        x = self.emb_drop(x, deterministic=not train)
        x, hidden_states, attentions = self.patch_transformer(
            x, deterministic=not train, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        class_token = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.dim))
        class_token, cls_hidden_states, cls_attentions = self.cls_transformer(
            class_token,
            x,
            deterministic=not train,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        # vit-pytorch's head LayerNorm on the class token = timm's final norm of [class token, patches].
        x = self.norm(jnp.concatenate([class_token, x], axis=1))
        if output_hidden_states:
            hidden_states += cls_hidden_states[1:]
        if output_attentions:
            attentions += cls_attentions
        return Features(x, self.head_drop(x[:, 0], deterministic=not train), hidden_states, attentions)


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxCaiTPreTrainedModel(FlaxVisionPreTrainedModel):
    core_module_class = CaiT
    base_model_prefix = "cait"


FlaxCaiTModule, FlaxCaiTForImageClassificationModule = FlaxCaiTPreTrainedModel.shell_modules()


class FlaxCaiTModel(FlaxCaiTPreTrainedModel):
    """CaiT features: ``last_hidden_state`` (normed [class token, patch tokens]) and ``pooler_output`` (class token)."""

    module_class = FlaxCaiTModule


class FlaxCaiTForImageClassification(FlaxCaiTPreTrainedModel):
    """CaiT with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxCaiTForImageClassificationModule
