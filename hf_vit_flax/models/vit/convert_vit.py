"""Weights of vit-pytorch's ``ViT`` -> ``FlaxViTForImageClassification`` (pure numpy; no torch import).

vit-pytorch layout -> ours:
  to_patch_embedding.{1,2,3}                -> patch_embed.{patch_norm, proj, norm}
  cls_token (n_cls, dim), pos_embedding     -> cls_token, pos_embedding (same shapes)
  transformer.layers.i.0.{norm,to_qkv,to_out.0} -> transformer.blocks_i.{norm1, attn.qkv, attn.proj}
  transformer.layers.i.1.net.{0,1,4}        -> transformer.blocks_i.{norm2, mlp.fc1, mlp.fc2}
  transformer.norm, mlp_head                -> transformer.norm, head
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...conversion_utils import StateDictReader
from .configuration_vit import ViTConfig


def config_from_vit_pytorch(model: Any) -> ViTConfig:
    """Read a ``ViTConfig`` off a live ``vit_pytorch.vit.ViT`` (duck-typed: torch is never imported here)."""
    to_patch = model.to_patch_embedding
    patch_h, patch_w = model.patch_size
    patch_dim = to_patch[1].normalized_shape[0]
    num_tokens, dim = model.pos_embedding.shape
    num_cls = model.cls_token.shape[0]
    num_patches = num_tokens - num_cls
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"the image size of this vit-pytorch ViT cannot be read from the module ({num_patches} patches of "
            f"{patch_h}x{patch_w}, not a square grid): pass config=ViTConfig(image_size=(height, width), ...)"
        )
    layers = model.transformer.layers
    attention, feed_forward = layers[0][0], layers[0][1]
    return ViTConfig(
        image_size=(side * patch_h, side * patch_w) if patch_h != patch_w else side * patch_h,
        patch_size=(patch_h, patch_w) if patch_h != patch_w else patch_h,
        num_classes=model.mlp_head.out_features if model.mlp_head is not None else 0,
        dim=dim,
        depth=len(layers),
        heads=attention.heads,
        mlp_dim=feed_forward.net[1].out_features,
        pool=model.pool,
        channels=patch_dim // (patch_h * patch_w),
        dim_head=round(attention.scale**-2),
        dropout=float(attention.dropout.p),
        emb_dropout=float(model.dropout.p),
    )


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
    """vit-pytorch ``ViT`` state dict (numpy) -> the params of ``hf_vit_flax.ViT`` (unchecked tree)."""
    sd = StateDictReader(state_dict)
    params: dict[str, Any] = {
        "patch_embed": {
            "patch_norm": sd.layer_norm("to_patch_embedding.1"),
            "proj": sd.linear("to_patch_embedding.2"),
            "norm": sd.layer_norm("to_patch_embedding.3"),
        },
        "pos_embedding": sd.pop("pos_embedding"),
    }
    cls_token = sd.pop("cls_token")
    if config.pool == "cls":
        params["cls_token"] = cls_token
    project_out = not (config.heads == 1 and config.dim_head == config.dim)
    transformer: dict[str, Any] = {"norm": sd.layer_norm("transformer.norm")}
    for i in range(config.depth):
        p = f"transformer.layers.{i}"
        attn = {"qkv": sd.linear(f"{p}.0.to_qkv", bias=False)}
        if project_out:
            attn["proj"] = sd.linear(f"{p}.0.to_out.0")
        transformer[f"blocks_{i}"] = {
            "norm1": sd.layer_norm(f"{p}.0.norm"),
            "attn": attn,
            "norm2": sd.layer_norm(f"{p}.1.net.0"),
            "mlp": {"fc1": sd.linear(f"{p}.1.net.1"), "fc2": sd.linear(f"{p}.1.net.4")},
        }
    params["transformer"] = transformer
    if "mlp_head.weight" in sd:
        params["head"] = sd.linear("mlp_head")
    sd.finish("vit-pytorch ViT")
    return params
