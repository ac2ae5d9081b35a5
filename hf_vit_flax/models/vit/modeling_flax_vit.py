"""ViT: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
(Dosovitskiy et al., arXiv 2010.11929).

``ViT`` computes the same function as lucidrains' vit-pytorch ``vit_pytorch.vit.ViT``: patch
LayerNorm -> Linear -> LayerNorm embedding, a class token (``pool='cls'``) or none (``pool='mean'``),
learned position embeddings, pre-norm blocks with exact GELU, a final LayerNorm, then the head.
The Hugging Face classes below are config-driven shells around the same module.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...layers import Features, Transformer, check_divisible, check_image, layer_norm, pair, patchify
from ...modeling_utils import FlaxBackboneModule, FlaxClassifierModule, FlaxVisionPreTrainedModel
from .configuration_vit import ViTConfig


class PatchEmbedding(nn.Module):
    """vit-pytorch's embedding: ``b (h p1) (w p2) c -> b (h w) (p1 p2 c)``, LayerNorm, Linear, LayerNorm."""

    dim: int
    patch_size: tuple[int, int]
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = patchify(images, self.patch_size)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="patch_norm")(x)
        x = nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
        return layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="norm")(x)


class ViT(nn.Module):
    """Vision Transformer with vit-pytorch's constructor arguments; NHWC images.

    ``ViT(...)(img, train=False)`` returns logits ``(batch, num_classes)``; with ``num_classes <= 0``
    it returns the normed tokens ``(batch, tokens, dim)``, as vit-pytorch does. Dropout (``dropout``,
    ``emb_dropout``) is active only with ``train=True`` and then needs a ``'dropout'`` rng.
    """

    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "cls"
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        image_size, patch_size = pair(self.image_size), pair(self.patch_size)
        check_divisible(image_size, patch_size)
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' (class token) or 'mean' (mean pooling), got {self.pool!r}")
        num_patches = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
        num_prefix_tokens = 1 if self.pool == "cls" else 0
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        self.patch_embed = PatchEmbedding(self.dim, patch_size, self.layer_norm_eps, **kw)
        if num_prefix_tokens:
            self.cls_token = self.param("cls_token", nn.initializers.normal(1.0), (1, self.dim), self.param_dtype)
        self.pos_embedding = self.param(
            "pos_embedding", nn.initializers.normal(1.0), (num_patches + num_prefix_tokens, self.dim), self.param_dtype
        )
        self.emb_drop = nn.Dropout(self.emb_dropout)
        # vit-pytorch drops the output projection when one head spans the whole width.
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        self.transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
            project_out=project_out, layer_norm_eps=self.layer_norm_eps, remat=self.remat, **kw,
        )  # fmt: skip
        if self.num_classes > 0:
            self.head = nn.Dense(self.num_classes, **kw)

    def forward_features(self, img, *, train: bool = False, output_hidden_states: bool = False,
                         output_attentions: bool = False) -> Features:
        check_image(img, pair(self.image_size), self.channels, family="ViT")
        x = self.patch_embed(img.astype(self.dtype))
        if self.pool == "cls":
            class_token = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.dim))
            x = jnp.concatenate([class_token, x], axis=1)
        x = x + self.pos_embedding.astype(x.dtype)
        x = self.emb_drop(x, deterministic=not train)
        x, hidden_states, attentions = self.transformer(
            x, deterministic=not train, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        pooled = x.mean(axis=1) if self.pool == "mean" else x[:, 0]
        return Features(x, pooled, hidden_states, attentions)

    def forward_head(self, pooled):
        return self.head(pooled)

    def __call__(self, img, train: bool = False):
        features = self.forward_features(img, train=train)
        if self.num_classes <= 0:
            return features.last_hidden_state
        return self.forward_head(features.pooler_output)


# -- Hugging Face classes -----------------------------------------------------------------------------


class FlaxViTModule(FlaxBackboneModule):
    seed_module_class = ViT
    base_model_prefix = "vit"


class FlaxViTForImageClassificationModule(FlaxClassifierModule):
    seed_module_class = ViT
    base_model_prefix = "vit"


class FlaxViTPreTrainedModel(FlaxVisionPreTrainedModel):
    config_class = ViTConfig
    base_model_prefix = "vit"


class FlaxViTModel(FlaxViTPreTrainedModel):
    """ViT features: ``last_hidden_state`` (normed tokens) and ``pooler_output`` (class token or mean)."""

    module_class = FlaxViTModule


class FlaxViTForImageClassification(FlaxViTPreTrainedModel):
    """ViT with its classification head; ``logits`` of shape ``(batch, num_labels)``."""

    module_class = FlaxViTForImageClassificationModule


def seed_params(model: FlaxViTForImageClassification) -> dict:
    """The parameters of ``model`` as ``ViT.apply`` takes them (the shells hold ``ViT`` under ``vit``)."""
    return {"params": jax.tree.map(lambda x: x, model.params[model.base_model_prefix])}
