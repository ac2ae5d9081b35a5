"""Weights of vit-pytorch's and timm's CrossViT -> ``FlaxCrossViTForImageClassification`` (pure numpy; no torch).

vit-pytorch ``vit_pytorch.cross_vit.CrossViT`` (``style='vit_pytorch'``), per branch ``b`` in (sm, lg):
  {b}_image_embedder.to_patch_embedding.{1,2,3}      -> {b}_embed.patch_embed.{patch_norm, proj, norm}
  {b}_image_embedder.{cls_token, pos_embedding}      -> {b}_embed.{cls_token, pos_embedding} (batch axis dropped)
  multi_scale_encoder.layers.i.{0,1}  (Transformer)  -> blocks_i.{sm,lg}_encoder.blocks_j / .norm, with
      .layers.j.0.{norm, to_q + to_kv, to_out.0}     -> .{norm1, attn.qkv (concatenated), attn.proj}
      .layers.j.1.net.{0,1,4}                        -> .{norm2, mlp.fc1, mlp.fc2}
  multi_scale_encoder.layers.i.2.layers.k.{0,1}      -> blocks_i.{sm_attend_lg, lg_attend_sm}_k, with
      .project_in, .project_out (widths differ)      -> .project_in, .project_out
      .fn.{norm, to_q, to_kv, to_out.0}              -> .attn.{norm, q, kv, proj}
  {b}_mlp_head.{0,1}                                 -> {b}_head.{norm, fc}

timm ``timm.models.crossvit.CrossVit`` (``style='timm'``), branch index d (0: sm, 1: lg):
  pos_embed_d, cls_token_d (or pos_embed.d ...)      -> {b}_embed.{pos_embedding, cls_token}
  patch_embed.d.proj  /  .proj.{0,2,4} (multi_conv)  -> {b}_embed.patch_embed.proj / .conv{1,2,3}
  blocks.i.blocks.d.j.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2} -> blocks_i.{b}_blocks_j.(same)
  blocks.i.projs.d.{0,2}, blocks.i.revert_projs.d.{0,2}                     -> blocks_i.{b}_proj / {b}_revert.{norm, fc}
  blocks.i.fusion.d[.k].{norm1, attn.wq, attn.wk + attn.wv, attn.proj}     -> blocks_i.{b}_attend_{other}_k.{norm, q, kv, proj}
  norm.d, head.d                                     -> {b}_norm, {b}_head
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...conversion_utils import StateDictReader, linear
from .configuration_crossvit import CrossViTConfig

BRANCHES = ("sm", "lg")


def _size(height: int, width: int):
    return height if height == width else (height, width)


# -- vit-pytorch ------------------------------------------------------------------------------------------


def config_from_vit_pytorch(model: Any) -> CrossViTConfig:
    """Read a ``CrossViTConfig`` off a live ``vit_pytorch.cross_vit.CrossViT`` (duck-typed: no torch import)."""
    values: dict[str, Any] = {}
    image_sizes = set()
    for b in BRANCHES:
        embedder = getattr(model, f"{b}_image_embedder")
        to_patch = embedder.to_patch_embedding
        patch = int(to_patch[0].axes_lengths["p1"])
        num_patches = embedder.pos_embedding.shape[1] - 1
        side = math.isqrt(num_patches)
        image_sizes.add(side * patch)
        values[f"{b}_patch_size"] = patch
        values[f"{b}_dim"] = to_patch[2].out_features
        values["channels"] = to_patch[1].normalized_shape[0] // (patch * patch)
        values["emb_dropout"] = float(embedder.dropout.p)
    if len(image_sizes) != 1:
        raise ValueError(f"the two branches of this vit-pytorch CrossViT disagree on the image size: {image_sizes}")
    layers = model.multi_scale_encoder.layers
    for b, encoder in zip(BRANCHES, (layers[0][0], layers[0][1]), strict=True):
        values[f"{b}_enc_depth"] = len(encoder.layers)
        if len(encoder.layers):
            attention, feed_forward = encoder.layers[0]
            values[f"{b}_enc_heads"] = attention.heads
            values[f"{b}_enc_dim_head"] = attention.to_q.out_features // attention.heads
            values[f"{b}_enc_mlp_dim"] = feed_forward.net[1].out_features
            values["dropout"] = float(attention.dropout.p)
    cross_layers = layers[0][2].layers
    values["cross_attn_depth"] = len(cross_layers)
    if len(cross_layers):
        attention = cross_layers[0][0].fn
        values["cross_attn_heads"] = attention.heads
        values["cross_attn_dim_head"] = attention.to_q.out_features // attention.heads
        values["dropout"] = float(attention.dropout.p)
    return CrossViTConfig(
        image_size=image_sizes.pop(),
        num_classes=model.sm_mlp_head[1].out_features,
        depth=len(layers),
        style="vit_pytorch",
        **values,
    )


def _vit_pytorch_attention(sd: StateDictReader, prefix: str) -> dict:
    """vit-pytorch's separate to_q / to_kv as one fused qkv kernel (q, then k, then v)."""
    return {
        "qkv": {
            "kernel": np.concatenate(
                [linear(sd.pop(f"{prefix}.to_q.weight")), linear(sd.pop(f"{prefix}.to_kv.weight"))], axis=1
            )
        },
        "proj": sd.linear(f"{prefix}.to_out.0"),
    }


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CrossViTConfig) -> dict:
    """vit-pytorch ``CrossViT`` state dict (numpy) -> the params of ``hf_vit_flax.CrossViT`` (unchecked tree)."""
    sd = StateDictReader(state_dict)
    params: dict[str, Any] = {}
    for b in BRANCHES:
        p = f"{b}_image_embedder"
        params[f"{b}_embed"] = {
            "patch_embed": {
                "patch_norm": sd.layer_norm(f"{p}.to_patch_embedding.1"),
                "proj": sd.linear(f"{p}.to_patch_embedding.2"),
                "norm": sd.layer_norm(f"{p}.to_patch_embedding.3"),
            },
            "cls_token": sd.pop(f"{p}.cls_token")[0],
            "pos_embedding": sd.pop(f"{p}.pos_embedding")[0],
        }
    for i in range(config.depth):
        layer = f"multi_scale_encoder.layers.{i}"
        block: dict[str, Any] = {}
        for index, b in enumerate(BRANCHES):
            p = f"{layer}.{index}"
            encoder: dict[str, Any] = {"norm": sd.layer_norm(f"{p}.norm")}
            for j in range(getattr(config, f"{b}_enc_depth")):
                q = f"{p}.layers.{j}"
                encoder[f"blocks_{j}"] = {
                    "norm1": sd.layer_norm(f"{q}.0.norm"),
                    "attn": _vit_pytorch_attention(sd, f"{q}.0"),
                    "norm2": sd.layer_norm(f"{q}.1.net.0"),
                    "mlp": {"fc1": sd.linear(f"{q}.1.net.1"), "fc2": sd.linear(f"{q}.1.net.4")},
                }
            block[f"{b}_encoder"] = encoder
        for k in range(config.cross_attn_depth):
            for index, name in enumerate(("sm_attend_lg", "lg_attend_sm")):
                p = f"{layer}.2.layers.{k}.{index}"
                cross = {
                    "attn": {
                        "norm": sd.layer_norm(f"{p}.fn.norm"),
                        "q": {"kernel": linear(sd.pop(f"{p}.fn.to_q.weight"))},
                        "kv": {"kernel": linear(sd.pop(f"{p}.fn.to_kv.weight"))},
                        "proj": sd.linear(f"{p}.fn.to_out.0"),
                    }
                }
                if f"{p}.project_in.weight" in sd:
                    cross["project_in"] = sd.linear(f"{p}.project_in")
                    cross["project_out"] = sd.linear(f"{p}.project_out")
                block[f"{name}_{k}"] = cross
        params[f"blocks_{i}"] = block
    for b in BRANCHES:
        head = {"norm": sd.layer_norm(f"{b}_mlp_head.0"), "fc": sd.linear(f"{b}_mlp_head.1")}
        # vit-pytorch built with num_classes=0 keeps a LayerNorm and an empty Linear: no head then.
        if config.num_labels > 0:
            params[f"{b}_head"] = head
    sd.finish("vit-pytorch CrossViT")
    return params


# -- timm -------------------------------------------------------------------------------------------------


def _uniform(values: list, what: str):
    if len(set(values)) != 1:
        raise ValueError(
            f"this timm CrossVit has a different {what} in each multi-scale block ({values}); "
            f"hf_vit_flax.CrossViT takes one value for all blocks"
        )
    return values[0]


def config_from_timm(model: Any) -> CrossViTConfig:
    """Read a ``CrossViTConfig`` off a live ``timm.models.crossvit.CrossVit`` (duck-typed: no torch import).

    timm's dropout before the heads (``drop_rate``) is not modelled and a separate attention-probability
    dropout rate is not either (``dropout`` = timm's ``proj_drop_rate`` serves both): neither changes the
    function in evaluation; a warning says when they are set.
    """
    if getattr(model, "num_branches", 2) != 2:
        raise ValueError(f"hf_vit_flax.CrossViT has two branches; this timm CrossVit has {model.num_branches}")
    image_size = tuple(int(s) for s in model.img_size)
    branch_sizes = [tuple(int(s) for s in size) for size in model.img_size_scaled]
    values: dict[str, Any] = {}
    for d, b in enumerate(BRANCHES):
        patch_embed = model.patch_embed[d]
        patch_h, patch_w = (int(p) for p in patch_embed.patch_size)
        if patch_h != patch_w:
            raise ValueError(f"hf_vit_flax.CrossViT takes square patches; branch {d} has {patch_h}x{patch_w}")
        values[f"{b}_patch_size"] = patch_h
        values[f"{b}_dim"] = int(model.embed_dim[d])
        values[f"{b}_image_size"] = _size(*branch_sizes[d]) if branch_sizes[d] != image_size else None
        first = model.blocks[0].blocks[d][0]
        values[f"{b}_enc_heads"] = int(first.attn.num_heads)
        values[f"{b}_enc_dim_head"] = int(first.attn.head_dim)
        values[f"{b}_enc_mlp_dim"] = int(first.mlp.fc1.out_features)
        values[f"{b}_enc_depth"] = _uniform([len(blk.blocks[d]) for blk in model.blocks], f"branch {d} depth")
    first_block = model.blocks[0].blocks[0][0]
    # A fusion entry is one CrossAttentionBlock (timm's depth[-1] == 0) or a Sequential of them.
    cross_depths = [1 if hasattr(blk.fusion[0], "attn") else len(blk.fusion[0]) for blk in model.blocks]
    drop_path = max(
        [
            float(getattr(m, "drop_prob", 0.0))
            for blk in model.blocks
            for branch in blk.blocks
            for block in branch
            for m in (block.drop_path1, block.drop_path2)
        ]
        or [0.0]
    )
    proj_drop, attn_drop = float(first_block.attn.proj_drop.p), float(first_block.attn.attn_drop.p)
    head_drop = float(model.head_drop.p)
    if attn_drop != proj_drop or head_drop:
        warnings.warn(
            f"timm's attn_drop_rate ({attn_drop}) and drop_rate ({head_drop}) are not modelled: the converted "
            f"model uses dropout={proj_drop} everywhere and none before the heads (evaluation is unaffected)",
            stacklevel=2,
        )
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return CrossViTConfig(
        image_size=_size(*image_size),
        num_classes=int(model.num_classes),
        cross_attn_depth=_uniform(cross_depths, "cross-attention depth"),
        cross_attn_heads=None,
        cross_attn_dim_head=None,
        depth=len(model.blocks),
        dropout=proj_drop,
        emb_dropout=float(model.pos_drop.p),
        channels=int(model.in_chans),
        style="timm",
        multi_conv=not hasattr(model.patch_embed[0].proj, "weight"),
        qkv_bias=first_block.attn.qkv.bias is not None,
        crop_scale=bool(model.crop_scale),
        global_pool=model.global_pool,
        layer_norm_eps=float(model.norm[0].eps),
        drop_path_rate=drop_path,
        image_mean=pretrained_cfg.get("mean"),
        image_std=pretrained_cfg.get("std"),
        **values,
    )


def convert_timm(state_dict: Mapping[str, np.ndarray], config: CrossViTConfig) -> dict:
    """timm ``CrossVit`` state dict (numpy) -> the params of ``hf_vit_flax.CrossViT`` (unchecked tree).

    Takes timm's key names (``pos_embed_0``) and those of the original release (``pos_embed.0``).
    """
    sd = StateDictReader(state_dict)

    def pop_either(*keys: str) -> np.ndarray:
        for key in keys:
            if key in sd:
                return sd.pop(key)
        return sd.pop(keys[0])  # raises, naming the key

    params: dict[str, Any] = {}
    for d, b in enumerate(BRANCHES):
        p = f"patch_embed.{d}.proj"
        if config.multi_conv:
            patch_embed = {f"conv{n + 1}": sd.conv(f"{p}.{index}") for n, index in enumerate((0, 2, 4))}
        else:
            patch_embed = {"proj": sd.conv(p)}
        params[f"{b}_embed"] = {
            "patch_embed": patch_embed,
            "cls_token": pop_either(f"cls_token_{d}", f"cls_token.{d}")[0],
            "pos_embedding": pop_either(f"pos_embed_{d}", f"pos_embed.{d}")[0],
        }
    bias = config.qkv_bias
    for i in range(config.depth):
        block: dict[str, Any] = {}
        for d, b in enumerate(BRANCHES):
            other = BRANCHES[1 - d]
            for j in range(getattr(config, f"{b}_enc_depth")):
                p = f"blocks.{i}.blocks.{d}.{j}"
                block[f"{b}_blocks_{j}"] = {
                    "norm1": sd.layer_norm(f"{p}.norm1"),
                    "attn": {"qkv": sd.linear(f"{p}.attn.qkv", bias=bias), "proj": sd.linear(f"{p}.attn.proj")},
                    "norm2": sd.layer_norm(f"{p}.norm2"),
                    "mlp": {"fc1": sd.linear(f"{p}.mlp.fc1"), "fc2": sd.linear(f"{p}.mlp.fc2")},
                }
            block[f"{b}_proj"] = {
                "norm": sd.layer_norm(f"blocks.{i}.projs.{d}.0"),
                "fc": sd.linear(f"blocks.{i}.projs.{d}.2"),
            }
            block[f"{b}_revert"] = {
                "norm": sd.layer_norm(f"blocks.{i}.revert_projs.{d}.0"),
                "fc": sd.linear(f"blocks.{i}.revert_projs.{d}.2"),
            }
            for k in range(config.cross_attn_depth):
                p = f"blocks.{i}.fusion.{d}.{k}"
                if k == 0 and config.cross_attn_depth == 1 and f"{p}.norm1.weight" not in sd:
                    p = f"blocks.{i}.fusion.{d}"  # timm's single, un-nested fusion block (depth[-1] == 0)
                kv = {
                    "kernel": np.concatenate(
                        [linear(sd.pop(f"{p}.attn.wk.weight")), linear(sd.pop(f"{p}.attn.wv.weight"))], axis=1
                    )
                }
                if bias:
                    kv["bias"] = np.concatenate([sd.pop(f"{p}.attn.wk.bias"), sd.pop(f"{p}.attn.wv.bias")])
                block[f"{b}_attend_{other}_{k}"] = {
                    "norm": sd.layer_norm(f"{p}.norm1"),
                    "q": sd.linear(f"{p}.attn.wq", bias=bias),
                    "kv": kv,
                    "proj": sd.linear(f"{p}.attn.proj"),
                }
        params[f"blocks_{i}"] = block
    for d, b in enumerate(BRANCHES):
        params[f"{b}_norm"] = sd.layer_norm(f"norm.{d}")
        if f"head.{d}.weight" in sd:
            params[f"{b}_head"] = sd.linear(f"head.{d}")
    sd.finish("timm CrossVit")
    return params
