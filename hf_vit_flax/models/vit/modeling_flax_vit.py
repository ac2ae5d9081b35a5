"""ViT: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
(Dosovitskiy et al., arXiv 2010.11929).

``ViT`` computes the same function as lucidrains' vit-pytorch ``vit_pytorch.vit.ViT``: patch
LayerNorm -> Linear -> LayerNorm embedding, a class token (``pool='cls'``) or none (``pool='mean'``),
learned position embeddings, pre-norm blocks with exact GELU, a final LayerNorm, then the head.

With its further options the same module is timm's ``VisionTransformer`` / ``VisionTransformerDistilled``
(``timm/models/vision_transformer.py``, ``deit.py``): conv patch embedding, qkv bias, class / register /
distillation tokens ("Training data-efficient image transformers & distillation through attention",
arXiv 2012.12877; "Vision Transformers Need Registers", arXiv 2309.16588), position embeddings with or
without slots for those tokens, CLIP's ``norm_pre``, LayerScale ("DeiT III: Revenge of the ViT",
arXiv 2204.07118), token, average (with ``fc_norm``) or multihead attention pooling, and stochastic depth.
The Hugging Face classes below are config-driven shells around the same module.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from ...layers import (
    AttentionPoolLatent,
    ConvPatchEmbedding,
    CoreModule,
    Dense,
    Features,
    PatchEmbedding,
    Transformer,
    TransformerBlock,
    check_divisible,
    check_image,
    interpolate_pos_embedding,
    norm_factory,
    pair,
    remat_if,
)
from ...modeling_utils import FlaxVisionPreTrainedModel
from .configuration_vit import ViTConfig, check_vit_options


class ViTHead(nn.Module):
    """ViT's head ``head``; for a distilled DeiT also ``head_dist``, and the mean of their logits."""

    param_names: ClassVar[tuple[str, ...]] = ("head", "head_dist")

    num_classes: int
    distilled: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.head = Dense(self.num_classes, **kw)
        if self.distilled:
            self.head_dist = Dense(self.num_classes, **kw)

    def __call__(self, pooled):
        if self.distilled:  # DeiT: the mean of the class-token and distillation-token heads
            return (self.head(pooled[:, 0]) + self.head_dist(pooled[:, 1])) / 2
        return self.head(pooled)


# The arguments vit-pytorch's constructor requires (it has a default for the rest).
SEED_REQUIRED = ("image_size", "patch_size", "num_classes", "dim", "depth", "heads", "mlp_dim")


class ViT(CoreModule, ViTConfig.options_dataclass(required=SEED_REQUIRED)):
    """Vision Transformer with vit-pytorch's constructor arguments; NHWC images.

    ``ViT(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with ``num_classes <= 0``
    it returns the normed tokens ``(batch, tokens, dim)``, as vit-pytorch does. Dropout (``dropout``,
    ``emb_dropout``) is active only with ``train=True`` and then needs a ``'dropout'`` rng.

    The options after ``layer_norm_eps`` express timm's ``VisionTransformer`` (see ``ViTConfig``);
    their defaults keep vit-pytorch's model. ``forward_features`` returns the tokens after the final
    norm and the pooled features: the class token, the mean of the patch tokens (``pool='mean'``),
    their attention pooling (``pool='map'``), then ``fc_norm`` when set, then ``tanh(dense(.))`` with
    ``pooler=True`` (transformers' ``ViTPooler``; the head reads its output); or, for a distilled model,
    the class and distillation tokens
    stacked as ``(batch, 2, dim)`` (its two heads read one each).

    Its fields are the constructor arguments of :class:`ViTConfig` (names, defaults, order), declared there once.
    """

    head_class = ViTHead
    config_class = ViTConfig
    supports_interpolate_pos_encoding = True

    @property
    def has_class_token(self) -> bool:
        return self.pool == "cls" if self.class_token is None else bool(self.class_token)

    @property
    def num_prefix_tokens(self) -> int:
        """Class, register and distillation tokens, which precede the patch tokens."""
        return int(self.has_class_token) + int(self.distilled) + int(self.reg_tokens)

    def setup(self):
        image_size, patch_size = pair(self.image_size), pair(self.patch_size)
        if self.patch_embedding == "norm_linear":  # timm's conv embedding ignores the remainder
            check_divisible(image_size, patch_size)
        check_vit_options(self)
        num_patches = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_layer = norm_factory(self.layer_norm_eps, **kw)
        token_init = nn.initializers.normal(1.0)

        if self.patch_embedding == "conv":
            self.patch_embed = ConvPatchEmbedding(self.dim, patch_size, self.patch_bias, **kw)
        else:
            self.patch_embed = PatchEmbedding(self.dim, patch_size, norm_layer, **kw)
        if self.has_class_token:
            self.cls_token = self.param("cls_token", token_init, (1, self.dim), self.param_dtype)
        if self.reg_tokens:
            self.reg_token = self.param("reg_token", token_init, (self.reg_tokens, self.dim), self.param_dtype)
        if self.distilled:
            self.dist_token = self.param("dist_token", token_init, (1, self.dim), self.param_dtype)
        num_embedded = num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embedding = self.param("pos_embedding", token_init, (num_embedded, self.dim), self.param_dtype)
        self.emb_drop = nn.Dropout(self.emb_dropout)
        if self.pre_norm:
            self.norm_pre = norm_layer()
        # vit-pytorch drops the output projection when one head spans the whole width; timm never does.
        project_out = self.patch_embedding != "norm_linear" or not (self.heads == 1 and self.dim_head == self.dim)
        block = functools.partial(
            remat_if(TransformerBlock, self.remat),
            self.dim,
            self.heads,
            self.dim_head,
            self.mlp_dim,
            self.dropout,
            qkv_bias=self.qkv_bias,
            project_out=project_out,
            norm_layer=norm_layer,
            layer_scale_init=self.layer_scale_init,
            activation=self.mlp_activation,
            **kw,
        )
        final_norm = norm_layer if self.final_norm and not self.fc_norm else None
        self.transformer = Transformer(block, self.depth, self.drop_path_rate, final_norm)
        if self.pool == "map":
            self.attn_pool = AttentionPoolLatent(
                self.dim, self.heads, self.mlp_dim, norm_layer, self.mlp_activation, **kw
            )
        if self.final_norm and self.fc_norm:
            self.fc_norm_layer = norm_layer(name="fc_norm")
        if self.pooler:
            self.pooler_layer = Dense(self.dim, name="pooler", **kw)
        self.head_drop = nn.Dropout(self.head_dropout)
        self.setup_head()

    def prefix_tokens(self, batch: int, dtype) -> list:
        """[class token, register tokens, distillation token] as present, each ``(batch, n, dim)``."""
        present = [(self.has_class_token, "cls_token"), (self.reg_tokens, "reg_token"), (self.distilled, "dist_token")]
        tokens = [getattr(self, name).astype(dtype) for on, name in present if on]
        return [jnp.broadcast_to(t, (batch, *t.shape)) for t in tokens]

    def forward_features(
        self,
        img,
        *,
        train: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> Features:
        """``interpolate_pos_encoding=True`` takes images of any size (at least one patch): the position
        embeddings are resized to the image's patch grid with PyTorch's bicubic interpolation, as
        transformers' ViT does (the image size of the config is then only the size they were trained at)."""
        check_image(img, None if interpolate_pos_encoding else pair(self.image_size), self.channels, family="ViT")
        x = self.patch_embed(img.astype(self.dtype))
        prefix = self.prefix_tokens(x.shape[0], x.dtype)
        pos_embedding = self.pos_embedding
        if interpolate_pos_encoding:
            patch_size = pair(self.patch_size)
            grid = (img.shape[1] // patch_size[0], img.shape[2] // patch_size[1])
            in_pos = 0 if self.no_embed_class else self.num_prefix_tokens
            pos_embedding = interpolate_pos_embedding(pos_embedding, grid, in_pos)
        pos_embedding = pos_embedding.astype(x.dtype)
        if self.no_embed_class:  # DeiT III / big_vision: add to the patches, then prepend the tokens
            x = jnp.concatenate([*prefix, x + pos_embedding], axis=1)
        else:  # the original ViT and DeiT: prepend, then add to every token
            x = jnp.concatenate([*prefix, x], axis=1) + pos_embedding
        x = self.emb_drop(x, deterministic=not train)
        if self.pre_norm:
            x = self.norm_pre(x)
        x, hidden_states, attentions = self.transformer(
            x, deterministic=not train, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        # The head dropout belongs to the pooled features, as in timm's pre-logits.
        pooled = self.head_drop(self.pool_tokens(x), deterministic=not train)
        return Features(x, pooled, hidden_states, attentions)

    def pool_tokens(self, x):
        if self.distilled:
            return x[:, :2]  # class and distillation tokens, one per head
        if self.pool == "mean":
            pooled = x[:, self.num_prefix_tokens :].mean(axis=1)
        elif self.pool == "map":
            pooled = self.attn_pool(x[:, self.num_prefix_tokens :])
        else:
            pooled = x[:, 0]
        if self.final_norm and self.fc_norm:
            pooled = self.fc_norm_layer(pooled)
        if self.pooler:  # transformers' ViTPooler: the original ViT's pre-logits layer
            pooled = jnp.tanh(self.pooler_layer(pooled))
        return pooled


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxViTPreTrainedModel(FlaxVisionPreTrainedModel):
    core_module_class = ViT
    base_model_prefix = "vit"


FlaxViTModule, FlaxViTForImageClassificationModule = FlaxViTPreTrainedModel.shell_modules()


class FlaxViTModel(FlaxViTPreTrainedModel):
    """ViT features: ``last_hidden_state`` (normed tokens) and ``pooler_output`` (class token or mean;
    ``tanh(dense(class token))`` with ``pooler=True``, as transformers' ``ViTModel``; for a distilled DeiT
    the class and distillation tokens, ``(batch, 2, dim)``)."""

    module_class = FlaxViTModule


class FlaxViTForImageClassification(FlaxViTPreTrainedModel):
    """ViT with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxViTForImageClassificationModule
