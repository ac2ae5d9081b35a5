"""Weights of vit-pytorch's ``CaiT`` and timm's ``Cait`` -> ``hf_vit_flax.CaiT`` (pure numpy; no torch import).

vit-pytorch (``style="vit_pytorch"``) -> ours:
  to_patch_embedding.{1,2,3}                 -> patch_embed.{patch_norm, proj, norm}
  pos_embedding, cls_token                   -> pos_embedding, cls_token (same shapes)
  {patch,cls}_transformer.layers.i.0.scale   -> {patch,cls}_transformer.blocks_i.ls1.gamma (flattened)
  ....layers.i.0.fn.norm                     -> ....blocks_i.norm1
  patch stack: ....0.fn.{to_q, to_kv}        -> ....attn.qkv (the two stacked: [q; k; v], timm's layout)
  cls stack:   ....0.fn.{to_q, to_kv}        -> ....attn.{q, k, v} (to_kv split in two)
  ....0.fn.mix_heads_{pre,post}_attn         -> ....attn.{proj_l, proj_w}.kernel (as is: (heads, heads))
  ....0.fn.to_out.0                          -> ....attn.proj
  ....layers.i.1.scale, fn.net.{0,1,4}       -> ....blocks_i.{ls2.gamma, norm2, mlp.fc1, mlp.fc2}
  mlp_head.{0,1}                             -> norm, head

timm (``style="timm"``) -> ours:
  patch_embed.proj (conv), pos_embed, cls_token -> patch_embed.proj, pos_embedding, cls_token
  blocks.i.{norm1, attn.qkv, attn.proj_l, attn.proj_w, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}
                                             -> patch_transformer.blocks_i.{..., ls1.gamma, ls2.gamma}
  blocks_token_only.i.{norm1, attn.{q,k,v,proj}, norm2, mlp, gamma_1, gamma_2}
                                             -> cls_transformer.blocks_i.{...}
  norm, head                                 -> norm, head
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...conversion_utils import StateDictReader, linear, to_numpy
from .configuration_cait import CaiTConfig


def _square_image_size(num_patches: int, patch_h: int, patch_w: int, what: str):
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"the image size of this {what} cannot be read from the module ({num_patches} patches of "
            f"{patch_h}x{patch_w}, not a square grid): pass config=CaiTConfig(image_size=(height, width), ...)"
        )
    return side * patch_h if patch_h == patch_w else (side * patch_h, side * patch_w)


# -- vit-pytorch --------------------------------------------------------------------------------------


def config_from_vit_pytorch(model: Any) -> CaiTConfig:
    """Read a ``CaiTConfig`` off a live ``vit_pytorch.cait.CaiT`` (duck-typed: torch is never imported here)."""
    rearrange, patch_norm = model.to_patch_embedding[0], model.to_patch_embedding[1]
    lengths = dict(rearrange.axes_lengths)
    patch_h, patch_w = int(lengths["p1"]), int(lengths["p2"])
    _, num_patches, dim = model.pos_embedding.shape
    first = model.patch_transformer.layers[0]
    attention, feed_forward = first[0].fn, first[1].fn
    return CaiTConfig(
        image_size=_square_image_size(num_patches, patch_h, patch_w, "vit-pytorch CaiT"),
        patch_size=patch_h if patch_h == patch_w else (patch_h, patch_w),
        num_classes=model.mlp_head[1].out_features,
        dim=dim,
        depth=len(model.patch_transformer.layers),
        cls_depth=len(model.cls_transformer.layers),
        heads=attention.heads,
        mlp_dim=feed_forward.net[1].out_features,
        dim_head=round(attention.scale**-2),
        dropout=float(attention.dropout.p),
        emb_dropout=float(model.dropout.p),
        layer_dropout=float(model.patch_transformer.layer_dropout),
        channels=patch_norm.normalized_shape[0] // (patch_h * patch_w),
        layer_norm_eps=float(patch_norm.eps),
    )


def _vit_pytorch_layer(sd: StateDictReader, prefix: str, class_attention: bool) -> dict:
    attn = f"{prefix}.0.fn"
    q = sd.pop(f"{attn}.to_q.weight")
    k, v = np.split(sd.pop(f"{attn}.to_kv.weight"), 2, axis=0)
    if class_attention:
        projections = {"q": {"kernel": linear(q)}, "k": {"kernel": linear(k)}, "v": {"kernel": linear(v)}}
    else:
        projections = {"qkv": {"kernel": linear(np.concatenate([q, k, v], axis=0))}}
    return {
        "norm1": sd.layer_norm(f"{attn}.norm"),
        "attn": {
            **projections,
            "proj_l": {"kernel": sd.pop(f"{attn}.mix_heads_pre_attn")},
            "proj_w": {"kernel": sd.pop(f"{attn}.mix_heads_post_attn")},
            "proj": sd.linear(f"{attn}.to_out.0"),
        },
        "ls1": {"gamma": sd.pop(f"{prefix}.0.scale").reshape(-1)},
        "norm2": sd.layer_norm(f"{prefix}.1.fn.net.0"),
        "mlp": {"fc1": sd.linear(f"{prefix}.1.fn.net.1"), "fc2": sd.linear(f"{prefix}.1.fn.net.4")},
        "ls2": {"gamma": sd.pop(f"{prefix}.1.scale").reshape(-1)},
    }


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CaiTConfig) -> dict:
    """vit-pytorch ``CaiT`` state dict (numpy) -> the params of ``hf_vit_flax.CaiT`` (unchecked tree)."""
    if config.style != "vit_pytorch":
        raise ValueError(f"a vit-pytorch CaiT converts into a config with style='vit_pytorch', not {config.style!r}")
    sd = StateDictReader(to_numpy(state_dict))
    params: dict[str, Any] = {
        "patch_embed": {
            "patch_norm": sd.layer_norm("to_patch_embedding.1"),
            "proj": sd.linear("to_patch_embedding.2"),
            "norm": sd.layer_norm("to_patch_embedding.3"),
        },
        "pos_embedding": sd.pop("pos_embedding"),
        "cls_token": sd.pop("cls_token"),
    }
    for stack, depth, class_attention in (
        ("patch_transformer", config.depth, False),
        ("cls_transformer", config.cls_depth, True),
    ):
        params[stack] = {
            f"blocks_{i}": _vit_pytorch_layer(sd, f"{stack}.layers.{i}", class_attention) for i in range(depth)
        }
    params["norm"] = sd.layer_norm("mlp_head.0")
    if config.num_labels > 0:
        params["head"] = sd.linear("mlp_head.1")
    elif "mlp_head.1.weight" in sd and sd.remaining["mlp_head.1.weight"].size == 0:
        # vit-pytorch keeps an empty Linear(dim, 0) as the head of a num_classes=0 model.
        sd.pop("mlp_head.1.weight"), sd.pop("mlp_head.1.bias")
    sd.finish("vit-pytorch CaiT")
    return params


# -- timm ---------------------------------------------------------------------------------------------


def config_from_timm(timm_model: Any) -> CaiTConfig:
    """Read a ``CaiTConfig`` (``style="timm"``) off a live ``timm.models.cait.Cait`` (duck-typed, no torch import).

    Works on models built on the meta device. ``layer_scale_init`` is read from the LayerScale
    values when they are all equal (a freshly built model); otherwise (trained or meta weights) it
    is timm's default, 1e-4, which only matters for re-initialising.
    """
    model = timm_model
    if not (hasattr(model, "blocks") and hasattr(model, "blocks_token_only") and hasattr(model, "patch_embed")):
        raise TypeError(f"expected a timm Cait model (timm.models.cait.Cait), got {type(model).__name__}")
    if model.global_pool != "token":
        raise NotImplementedError(
            f"timm Cait with global_pool={model.global_pool!r} is not supported: the Flax CaiT classifies "
            f"from the class token (global_pool='token')"
        )
    patch_embed = model.patch_embed
    if patch_embed.proj.bias is None or type(patch_embed.norm).__name__ != "Identity":
        raise NotImplementedError("only timm's default PatchEmbed (a convolution with bias, no norm) is supported")
    block, cls_block = model.blocks[0], model.blocks_token_only[0]
    if not hasattr(block.attn, "proj_l") or not hasattr(cls_block.attn, "q"):
        raise NotImplementedError(
            "only timm Cait built with its default TalkingHeadAttn and ClassAttn blocks is supported"
        )
    for mlp in (block.mlp, cls_block.mlp):
        if type(mlp.act).__name__ != "GELU" or getattr(mlp.act, "approximate", "none") != "none":
            raise NotImplementedError(f"only the exact GELU activation is supported, got {mlp.act}")
    dim, heads = model.embed_dim, block.attn.num_heads
    (img_h, img_w), (patch_h, patch_w) = patch_embed.img_size, patch_embed.patch_size
    mlp_dim, cls_mlp_dim = block.mlp.fc1.out_features, cls_block.mlp.fc1.out_features
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return CaiTConfig(
        image_size=img_h if img_h == img_w else (img_h, img_w),
        patch_size=patch_h if patch_h == patch_w else (patch_h, patch_w),
        num_classes=model.num_classes,
        dim=dim,
        depth=len(model.blocks),
        cls_depth=len(model.blocks_token_only),
        heads=heads,
        mlp_dim=mlp_dim,
        dim_head=dim // heads,
        dropout=float(block.attn.proj_drop.p),
        emb_dropout=float(model.pos_drop.p),
        channels=patch_embed.proj.in_channels,
        layer_norm_eps=float(model.norm.eps),
        style="timm",
        qkv_bias=block.attn.qkv.bias is not None,
        layer_scale_init=_constant_value(block.gamma_1, default=1e-4),
        cls_mlp_dim=None if cls_mlp_dim == mlp_dim else cls_mlp_dim,
        attn_dropout=float(block.attn.attn_drop.p),
        drop_path_rate=float(getattr(block.drop_path, "drop_prob", 0.0)),
        image_mean=pretrained_cfg.get("mean"),
        image_std=pretrained_cfg.get("std"),
    )


def _constant_value(tensor: Any, default: float) -> float:
    if getattr(tensor, "is_meta", False):
        return default
    values = to_numpy({"t": tensor})["t"]
    return float(values.flat[0]) if values.size and np.all(values == values.flat[0]) else default


def convert_timm(state_dict: Mapping[str, np.ndarray], config: CaiTConfig) -> dict:
    """timm ``Cait`` state dict (numpy) -> the params of ``hf_vit_flax.CaiT`` with ``style="timm"`` (unchecked tree)."""
    if config.style != "timm":
        raise ValueError(f"a timm Cait converts into a config with style='timm', not {config.style!r}")
    sd = StateDictReader(to_numpy(state_dict))
    bias = config.qkv_bias

    def layer(prefix: str, projections: dict) -> dict:
        return {
            "norm1": sd.layer_norm(f"{prefix}.norm1"),
            "attn": {**projections, "proj": sd.linear(f"{prefix}.attn.proj")},
            "ls1": {"gamma": sd.pop(f"{prefix}.gamma_1")},
            "norm2": sd.layer_norm(f"{prefix}.norm2"),
            "mlp": {"fc1": sd.linear(f"{prefix}.mlp.fc1"), "fc2": sd.linear(f"{prefix}.mlp.fc2")},
            "ls2": {"gamma": sd.pop(f"{prefix}.gamma_2")},
        }

    params: dict[str, Any] = {
        "patch_embed": {"proj": sd.conv("patch_embed.proj")},
        "pos_embedding": sd.pop("pos_embed"),
        "cls_token": sd.pop("cls_token"),
        "patch_transformer": {
            f"blocks_{i}": layer(
                f"blocks.{i}",
                {
                    "qkv": sd.linear(f"blocks.{i}.attn.qkv", bias=bias),
                    "proj_l": sd.linear(f"blocks.{i}.attn.proj_l"),
                    "proj_w": sd.linear(f"blocks.{i}.attn.proj_w"),
                },
            )
            for i in range(config.depth)
        },
        "cls_transformer": {
            f"blocks_{i}": layer(
                f"blocks_token_only.{i}",
                {name: sd.linear(f"blocks_token_only.{i}.attn.{name}", bias=bias) for name in ("q", "k", "v")},
            )
            for i in range(config.cls_depth)
        },
        "norm": sd.layer_norm("norm"),
    }
    if config.num_labels > 0:
        params["head"] = sd.linear("head")
    sd.finish("timm Cait")
    return params
