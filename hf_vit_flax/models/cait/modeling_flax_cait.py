"""CaiT: "Going deeper with Image Transformers" (Touvron et al., arXiv 2103.17239).

``CaiT`` computes, in one implementation, either of the two PyTorch CaiTs people use (``style``):

* ``"vit_pytorch"`` (default): lucidrains' ``vit_pytorch.cait.CaiT``. Patch LayerNorm -> Linear ->
  LayerNorm embedding; talking-heads attention in both stacks (bias-free head-mixing matrices before
  and after the softmax); LayerScale initialised from each layer's index within its stack; the class
  stack attends to [normed class token, *un-normalised* patch tokens]; layer dropout while training;
  the head is LayerNorm -> Linear on the class token.
* ``"timm"``: timm's ``timm.models.cait.Cait`` (the paper's released models). Convolutional patch
  embedding with bias; talking-heads attention whose mixing layers (``proj_l`` / ``proj_w``) have
  biases; class attention without talking heads in which only the class token queries the
  LayerNorm of [class token, patch tokens]; constant LayerScale init (``layer_scale_init``); drop
  path in the self-attention layers only; a final LayerNorm over [class token, patch tokens] and
  the head on the class token.

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
    DropPath,
    Features,
    FeedForward,
    LayerScale,
    LinearHead,
    PatchEmbedding,
    attend,
    check_image,
    gradient_barrier,
    layer_norm,
    norm_factory,
    pair,
    remat_if,
)
from ...modeling_utils import FlaxBaseModelModule, FlaxClassifierModule, FlaxVisionPreTrainedModel
from .configuration_cait import CaiTConfig, validate_cait

Dtype = Any


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
    style: str = "vit_pytorch"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _dense(self, features: int, **kwargs) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)

    def _talking_heads(self) -> tuple[TalkingHeads, TalkingHeads]:
        timm = self.style == "timm"
        # vit-pytorch: torch.randn matrices without bias; timm: Linear layers, trunc_normal(std=.02), zero bias.
        init = nn.initializers.truncated_normal(0.02) if timm else nn.initializers.normal(1.0)
        make = functools.partial(
            TalkingHeads, self.heads, use_bias=timm, kernel_init=init, param_dtype=self.param_dtype
        )
        return make(name="proj_l"), make(name="proj_w")

    def _attend(self, q, k, v, deterministic: bool, output_attentions: bool, talking_heads: bool):
        scale = self.dim_head**-0.5
        if talking_heads:
            return talking_heads_attend(
                q,
                k,
                v,
                scale=scale,
                pre_softmax=self.proj_l,
                post_softmax=self.proj_w,
                dropout=self.attn_drop,
                dropout_before_mixing=self.style == "vit_pytorch",
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
    """Self-attention over the patch tokens with talking heads (both styles), fused ``qkv`` projection.

    vit-pytorch's separate ``to_q`` / ``to_kv`` of the same normed tokens are stored fused, as timm's ``qkv``.
    """

    def setup(self):
        self.qkv = self._dense(3 * self.heads * self.dim_head, use_bias=self.qkv_bias)
        self.proj_l, self.proj_w = self._talking_heads()
        self.attn_drop = nn.Dropout(self.attn_dropout)
        self.proj = self._dense(self.dim)
        self.proj_drop = nn.Dropout(self.dropout)

    def __call__(self, x, *, deterministic: bool = True, output_attentions: bool = False):
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.dim_head)
        out, weights = self._attend(
            qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], deterministic, output_attentions, talking_heads=True
        )
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
        if self.talking_heads:
            self.proj_l, self.proj_w = self._talking_heads()
        self.attn_drop = nn.Dropout(self.attn_dropout)
        self.proj = self._dense(self.dim)
        self.proj_drop = nn.Dropout(self.dropout)

    @property
    def talking_heads(self) -> bool:
        return self.style == "vit_pytorch"

    def __call__(self, cls, context, *, deterministic: bool = True, output_attentions: bool = False):
        def split(t):
            return t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)

        q, k, v = split(self.q(cls)), split(self.k(context)), split(self.v(context))
        out, weights = self._attend(q, k, v, deterministic, output_attentions, talking_heads=self.talking_heads)
        return self._project(out, deterministic), weights


class _CaiTBlockBase(nn.Module):
    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attn_dropout: float = 0.0
    qkv_bias: bool = False
    style: str = "vit_pytorch"
    layer_norm_eps: float = 1e-5
    layer_scale_init: float = 0.1
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    attention_class: ClassVar[type[_CaiTAttentionBase]]  # set by the subclasses

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.norm1 = layer_norm(self.layer_norm_eps, **kw)
        self.attn = self.attention_class(
            self.dim, self.heads, self.dim_head, self.dropout, self.attn_dropout, self.qkv_bias, self.style, **kw
        )
        self.ls1 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
        self.norm2 = layer_norm(self.layer_norm_eps, **kw)
        self.mlp = FeedForward(self.dim, self.mlp_dim, self.dropout, **kw)
        self.ls2 = LayerScale(self.dim, self.layer_scale_init, self.param_dtype)
        self.drop_path1 = DropPath(self.drop_path)
        self.drop_path2 = DropPath(self.drop_path)

    def _feed_forward(self, x, deterministic: bool):
        # The barrier at every layer's output keeps XLA:CPU's backward linear in depth (see gradient_barrier).
        y = self.drop_path2(self.ls2(self.mlp(self.norm2(x), deterministic=deterministic)), deterministic=deterministic)
        return gradient_barrier(x + y)


class LayerScaleBlock(_CaiTBlockBase):
    """A self-attention layer: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    attention_class = TalkingHeadAttention

    def __call__(self, x, deterministic: bool = True, output_attentions: bool = False):
        y, weights = self.attn(self.norm1(x), deterministic=deterministic, output_attentions=output_attentions)
        x = x + self.drop_path1(self.ls1(y), deterministic=deterministic)
        return self._feed_forward(x, deterministic), weights


class ClassAttentionBlock(_CaiTBlockBase):
    """A class-attention layer: updates the class token only, from [class token, patch tokens]."""

    attention_class = ClassAttention

    def __call__(self, cls, patches, deterministic: bool = True, output_attentions: bool = False):
        if self.style == "timm":
            # timm normalises the whole sequence; the query is the normed class token.
            context = self.norm1(jnp.concatenate([cls, patches], axis=1))
            query = context[:, : cls.shape[1]]
        else:
            # vit-pytorch normalises the class token only, then appends the (un-normalised) patch tokens.
            query = self.norm1(cls)
            context = jnp.concatenate([query, patches], axis=1)
        y, weights = self.attn(query, context, deterministic=deterministic, output_attentions=output_attentions)
        cls = cls + self.drop_path1(self.ls1(y), deterministic=deterministic)
        return self._feed_forward(cls, deterministic), weights


class CaiTStack(nn.Module):
    """One of CaiT's two stacks (self-attention over patches, or class attention), with layer dropout.

    Layer dropout (vit-pytorch's ``dropout_layers``) skips each whole layer with probability
    ``layer_dropout`` while training, keeping at least one; the draw comes from the ``'dropout'`` rng on
    every call (the mask is sown as the ``'intermediates'`` ``kept_layers``). Every layer's parameters exist
    whatever is dropped. LayerScale starts at
    ``layer_scale_init`` or, when that is ``None``, at vit-pytorch's value for the layer's index in this stack.
    """

    depth: int
    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    class_attention: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    qkv_bias: bool = False
    style: str = "vit_pytorch"
    layer_norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    layer_dropout: float = 0.0
    drop_path: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.class_attention:
            block = remat_if(ClassAttentionBlock, self.remat, static_argnums=(3, 4))
        else:
            block = remat_if(LayerScaleBlock, self.remat, static_argnums=(2, 3))
        self.blocks = [
            block(
                self.dim,
                self.heads,
                self.dim_head,
                self.mlp_dim,
                self.dropout,
                self.attn_dropout,
                self.qkv_bias,
                self.style,
                self.layer_norm_eps,
                layer_scale_init=(
                    vit_pytorch_layer_scale_init(i + 1) if self.layer_scale_init is None else self.layer_scale_init
                ),
                drop_path=self.drop_path,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
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
            return jnp.concatenate([y, context], axis=1) if self.class_attention else y

        keep = self.kept_layers() if not deterministic and self.layer_dropout > 0 else None
        if keep is not None:
            self.sow("intermediates", "kept_layers", keep)  # which layers ran: apply(..., mutable="intermediates")
        hidden_states = (sequence(x),) if output_hidden_states else None
        attentions = () if output_attentions else None
        for i, block in enumerate(self.blocks):
            if self.class_attention:
                y, weights = block(x, context, deterministic, output_attentions)
            else:
                y, weights = block(x, deterministic, output_attentions)
            x = y if keep is None else jnp.where(keep[i], y, x)
            if output_hidden_states:
                hidden_states += (sequence(x),)
            if output_attentions:
                attentions += (weights,)
        return x, hidden_states, attentions


class CaiT(CoreModule):
    """Class-Attention in Image Transformers, with vit-pytorch's constructor arguments; NHWC images.

    ``CaiT(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with ``num_classes <= 0``
    it returns the final normed tokens ``(batch, 1 + patches, dim)`` (class token first). Dropout,
    layer dropout and drop path act only with ``train=True`` and then need a ``'dropout'`` rng.

    Beyond vit-pytorch's arguments: ``channels``, ``layer_norm_eps``, ``style`` (``"vit_pytorch"`` or
    ``"timm"``, see the module docstring), ``qkv_bias``, ``layer_scale_init`` (``None``: vit-pytorch's rule
    by layer index), ``cls_mlp_dim`` (default ``mlp_dim``), ``attn_dropout`` (default ``dropout``),
    ``drop_path_rate`` (self-attention layers), ``remat``, ``dtype``, ``param_dtype``.
    In ``style="timm"`` the class-attention layers use no dropout, as in timm.
    """

    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    cls_depth: int
    heads: int
    mlp_dim: int
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    layer_dropout: float = 0.0
    channels: int = 3
    layer_norm_eps: float = 1e-5
    style: str = "vit_pytorch"
    qkv_bias: bool = False
    layer_scale_init: float | None = None
    cls_mlp_dim: int | None = None
    attn_dropout: float | None = None
    drop_path_rate: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    head_class = LinearHead
    config_class = CaiTConfig

    def setup(self):
        validate_cait(
            image_size=self.image_size,
            patch_size=self.patch_size,
            dim=self.dim,
            depth=self.depth,
            cls_depth=self.cls_depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            dim_head=self.dim_head,
            channels=self.channels,
            style=self.style,
            cls_mlp_dim=self.cls_mlp_dim,
            layer_scale_init=self.layer_scale_init,
            layer_norm_eps=self.layer_norm_eps,
        )
        (height, width), patch_size = pair(self.image_size), pair(self.patch_size)
        num_patches = (height // patch_size[0]) * (width // patch_size[1])
        timm = self.style == "timm"
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        if timm:
            self.patch_embed = ConvPatchEmbedding(self.dim, patch_size, **kw)
        else:
            self.patch_embed = PatchEmbedding(self.dim, patch_size, norm_factory(self.layer_norm_eps, **kw), **kw)
        # vit-pytorch: torch.randn; timm: trunc_normal(std=.02). Position embeddings cover the patches only.
        init = nn.initializers.truncated_normal(0.02) if timm else nn.initializers.normal(1.0)
        self.pos_embedding = self.param("pos_embedding", init, (1, num_patches, self.dim), self.param_dtype)
        self.cls_token = self.param("cls_token", init, (1, 1, self.dim), self.param_dtype)
        self.emb_drop = nn.Dropout(self.emb_dropout)

        stack = functools.partial(
            CaiTStack,
            dim=self.dim,
            heads=self.heads,
            dim_head=self.dim_head,
            qkv_bias=self.qkv_bias,
            style=self.style,
            layer_norm_eps=self.layer_norm_eps,
            layer_scale_init=self.layer_scale_init,
            layer_dropout=self.layer_dropout,
            remat=self.remat,
            **kw,
        )
        attn_dropout = self.dropout if self.attn_dropout is None else self.attn_dropout
        self.patch_transformer = stack(
            self.depth,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attn_dropout=attn_dropout,
            drop_path=self.drop_path_rate,
        )
        self.cls_transformer = stack(
            self.cls_depth,
            mlp_dim=self.cls_mlp_dim or self.mlp_dim,
            class_attention=True,
            dropout=0.0 if timm else self.dropout,
            attn_dropout=0.0 if timm else attn_dropout,
        )
        self.norm = layer_norm(self.layer_norm_eps, **kw)
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
        return Features(x, x[:, 0], hidden_states, attentions)


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxCaiTModule(FlaxBaseModelModule):
    core_module_class = CaiT
    base_model_prefix = "cait"


class FlaxCaiTForImageClassificationModule(FlaxClassifierModule):
    core_module_class = CaiT
    base_model_prefix = "cait"


class FlaxCaiTPreTrainedModel(FlaxVisionPreTrainedModel):
    config_class = CaiTConfig
    base_model_prefix = "cait"
    head_param_names = ("head",)


class FlaxCaiTModel(FlaxCaiTPreTrainedModel):
    """CaiT features: ``last_hidden_state`` (normed [class token, patch tokens]) and ``pooler_output`` (class token)."""

    module_class = FlaxCaiTModule


class FlaxCaiTForImageClassification(FlaxCaiTPreTrainedModel):
    """CaiT with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxCaiTForImageClassificationModule
