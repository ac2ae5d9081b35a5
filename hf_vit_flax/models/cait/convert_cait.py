"""Weights of vit-pytorch's ``CaiT`` and timm's ``Cait`` <-> ``hf_vit_flax.CaiT`` (no torch import).

Each layout is one declarative table (:mod:`hf_vit_flax.weight_tables`), read both ways:
``convert_vit_pytorch`` / ``convert_timm`` turn a state dict into the core module's params, and
``export_vit_pytorch`` / ``export_timm`` write those params back as a state dict that the PyTorch
model loads with ``load_state_dict(..., strict=True)``. ``vit_pytorch_table(config)`` and
``timm_table(config)`` are the key maps themselves:

vit-pytorch -> ours:
  to_patch_embedding.{1,2,3}                 -> patch_embed.{patch_norm, proj, norm}
  pos_embedding, cls_token                   -> pos_embedding, cls_token (same shapes)
  {patch,cls}_transformer.layers.i           -> {patch,cls}_transformer.blocks_i (VIT_PYTORCH_LAYER)
  mlp_head.{0,1}                             -> norm, head

timm -> ours:
  patch_embed.proj (conv), pos_embed, cls_token -> patch_embed.proj, pos_embedding, cls_token
  blocks.i, blocks_token_only.i              -> patch_transformer.blocks_i, cls_transformer.blocks_i (TIMM_LAYER)
  norm, head                                 -> norm, head

The one step that is not a rename: vit-pytorch keeps an attention's query apart from its keys and values
(``to_q``, ``to_kv``), where our self-attention fuses all three (``qkv``) and our class attention keeps
each apart (``q``, ``k``, ``v``); ``_regroup_projections`` and ``_ungroup_projections`` move between them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import weight_tables as wt
from ...configuration_utils import to_pair
from ...conversion_utils import image_size_from_patches, same_named, timm_normalization, to_numpy
from ...layers import block_table, conv_patch_embedding_table, patch_embedding_table
from .configuration_cait import STYLES, CaiTConfig, format_options

# -- one layer of either stack, by our part names (the names ``block_table`` reads) -----------------------

# vit-pytorch's layer ``layers.i`` = (LayerScale(Attention), LayerScale(FeedForward)), in either stack.
# ``to_qkv`` / ``to_k`` / ``to_v`` are its ``to_q`` and ``to_kv`` regrouped (``_regroup_projections``).
VIT_PYTORCH_LAYER = {
    "norm1": "0.fn.norm",
    "attn/qkv": "0.fn.to_qkv",
    "attn/q": "0.fn.to_q",
    "attn/k": "0.fn.to_k",
    "attn/v": "0.fn.to_v",
    "attn/proj_l": "0.fn.mix_heads_pre_attn",
    "attn/proj_w": "0.fn.mix_heads_post_attn",
    "attn/proj": "0.fn.to_out.0",
    "ls1": "0.scale",
    "norm2": "1.fn.net.0",
    "mlp/fc1": "1.fn.net.1",
    "mlp/fc2": "1.fn.net.4",
    "ls2": "1.scale",
}
# timm's LayerScaleBlock (``blocks.i``, TalkingHeadAttn) and LayerScaleBlockClassAttn (``blocks_token_only.i``,
# ClassAttn).
TIMM_LAYER = {
    "norm1": "norm1",
    "attn/qkv": "attn.qkv",
    "attn/q": "attn.q",
    "attn/k": "attn.k",
    "attn/v": "attn.v",
    "attn/proj_l": "attn.proj_l",
    "attn/proj_w": "attn.proj_w",
    "attn/proj": "attn.proj",
    "ls1": "gamma_1",
    "norm2": "norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
    "ls2": "gamma_2",
}


def layer_table(
    torch: str,
    flax: str,
    names: dict[str, str],
    config: CaiTConfig,
    *,
    class_attention: bool = False,
    layer_scale_transform: wt.Transform = wt.COPY,
) -> wt.Table:
    """The weight map of one ``LayerScaleBlock`` (or ``ClassAttentionBlock``): a pre-norm block with LayerScale
    (``block_table``; q, k and v apart in class attention) and the talking-heads mixings it has.

    A mixing with a bias is a ``Linear`` over the head axis (timm's ``proj_l`` / ``proj_w``: kernel = weight.T);
    one without is the bare ``(heads, heads)`` matrix (vit-pytorch's ``mix_heads_*``: the kernel as it is).
    """
    table = block_table(
        torch,
        flax,
        names,
        qkv_bias=config.qkv_bias,
        layer_scale=True,
        layer_scale_transform=layer_scale_transform,
        projections=("q", "k", "v") if class_attention else ("qkv",),
    )
    if config.cls_talking_heads or not class_attention:
        for mixing in ("attn/proj_l", "attn/proj_w"):
            t, f = wt.join(torch, names[mixing], "."), wt.join(flax, mixing, "/")
            table += wt.linear(t, f) if config.talking_heads_bias else wt.param(t, f"{f}/kernel")
    return table


# -- vit-pytorch --------------------------------------------------------------------------------------


def config_from_vit_pytorch(model: Any, image_size=None) -> CaiTConfig:
    """Read a ``CaiTConfig`` off a live ``vit_pytorch.cait.CaiT`` (duck-typed: torch is never imported here);
    ``image_size`` for a non-square one, whose size the module cannot tell."""
    rearrange, patch_norm = model.to_patch_embedding[0], model.to_patch_embedding[1]
    lengths = dict(rearrange.axes_lengths)
    patch_h, patch_w = int(lengths["p1"]), int(lengths["p2"])
    _, num_patches, dim = model.pos_embedding.shape
    first = model.patch_transformer.layers[0]
    attention, feed_forward = first[0].fn, first[1].fn
    return CaiTConfig(
        image_size=image_size_from_patches(num_patches, (patch_h, patch_w), "vit-pytorch CaiT", image_size),
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


def vit_pytorch_table(config: CaiTConfig) -> wt.Table:
    """vit-pytorch's ``CaiT`` keys (after ``_regroup_projections``) <-> the params of ``hf_vit_flax.CaiT``."""
    check_reference(config, "vit_pytorch", "a vit-pytorch CaiT", qkv_bias=False)
    table = [
        *patch_embedding_table("to_patch_embedding", "patch_embed"),
        *wt.param("pos_embedding", "pos_embedding"),
        *wt.param("cls_token", "cls_token"),
    ]
    for stack, depth in (("patch_transformer", config.depth), ("cls_transformer", config.cls_depth)):
        for i in range(depth):
            table += layer_table(
                f"{stack}.layers.{i}",
                f"{stack}/blocks_{i}",
                VIT_PYTORCH_LAYER,
                config,
                class_attention=stack == "cls_transformer",
                layer_scale_transform=wt.flatten_to((1, 1, config.dim)),  # vit-pytorch's scale is (1, 1, dim)
            )
    table += wt.norm("mlp_head.0", "norm")
    if config.num_labels > 0:
        table += wt.linear("mlp_head.1", "head")
    return table


# vit-pytorch keeps an empty Linear(dim, 0) as the head of a num_classes=0 model.
_EMPTY_HEAD = ("mlp_head.1.weight", "mlp_head.1.bias")


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CaiTConfig) -> dict:
    """vit-pytorch ``CaiT`` state dict (numpy) -> the params of ``hf_vit_flax.CaiT`` (unchecked tree)."""
    table = vit_pytorch_table(config)
    state_dict = _regroup_projections(to_numpy(state_dict))
    empty_head = [k for k in _EMPTY_HEAD if config.num_labels == 0 and k in state_dict and state_dict[k].size == 0]
    return wt.to_flax(state_dict, table, what="vit-pytorch CaiT", ignore=empty_head)


def export_vit_pytorch(params: Mapping, config: CaiTConfig) -> dict[str, np.ndarray]:
    """The params of ``hf_vit_flax.CaiT`` -> a state dict of ``vit_pytorch.cait.CaiT`` (numpy arrays)."""
    state_dict = _ungroup_projections(wt.to_torch(_core_params(params), vit_pytorch_table(config), what="CaiT"))
    if config.num_labels == 0:
        state_dict[_EMPTY_HEAD[0]], state_dict[_EMPTY_HEAD[1]] = (
            np.zeros((0, config.dim), np.float32),
            np.zeros(0, np.float32),
        )
    return state_dict


def _regroup_projections(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """vit-pytorch's ``to_q`` and ``to_kv`` as the table reads them: stacked into ``to_qkv`` in the patch stack
    (our fused ``qkv``), ``to_kv`` split into ``to_k`` and ``to_v`` in the class-attention stack."""
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(".to_kv.weight")]:
        prefix = key.removesuffix("to_kv.weight")
        k, v = np.split(out.pop(key), 2, axis=0)
        if key.startswith("patch_transformer.") and f"{prefix}to_q.weight" in out:
            out[f"{prefix}to_qkv.weight"] = np.concatenate([out.pop(f"{prefix}to_q.weight"), k, v], axis=0)
        else:
            out[f"{prefix}to_k.weight"], out[f"{prefix}to_v.weight"] = k, v
    return out


def _ungroup_projections(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`_regroup_projections`: ``to_q`` and ``to_kv`` again."""
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(".to_qkv.weight")]:
        prefix = key.removesuffix("to_qkv.weight")
        q, k, v = np.split(out.pop(key), 3, axis=0)
        out[f"{prefix}to_q.weight"], out[f"{prefix}to_kv.weight"] = q, np.concatenate([k, v], axis=0)
    for key in [k for k in state_dict if k.endswith(".to_k.weight")]:
        prefix = key.removesuffix("to_k.weight")
        out[f"{prefix}to_kv.weight"] = np.concatenate([out.pop(key), out.pop(f"{prefix}to_v.weight")], axis=0)
    return out


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
        head_dropout=float(getattr(getattr(model, "head_drop", None), "p", 0.0)),
        **timm_normalization(pretrained_cfg, patch_embed.proj.in_channels),
    )


def _constant_value(tensor: Any, default: float) -> float:
    if getattr(tensor, "is_meta", False):
        return default
    values = to_numpy({"t": tensor})["t"]
    return float(values.flat[0]) if values.size and np.all(values == values.flat[0]) else default


def timm_table(config: CaiTConfig) -> wt.Table:
    """timm's ``Cait`` keys <-> the params of ``hf_vit_flax.CaiT``."""
    check_reference(config, "timm", "a timm Cait")
    table = [
        *conv_patch_embedding_table("patch_embed", "patch_embed"),
        *wt.param("pos_embed", "pos_embedding"),
        *wt.param("cls_token", "cls_token"),
    ]
    for i in range(config.depth):
        table += layer_table(f"blocks.{i}", f"patch_transformer/blocks_{i}", TIMM_LAYER, config)
    for i in range(config.cls_depth):
        table += layer_table(
            f"blocks_token_only.{i}", f"cls_transformer/blocks_{i}", TIMM_LAYER, config, class_attention=True
        )
    table += wt.norm("norm", "norm")
    if config.num_labels > 0:
        table += wt.linear("head", "head")
    return table


def convert_timm(state_dict: Mapping[str, np.ndarray], config: CaiTConfig) -> dict:
    """timm ``Cait`` state dict (numpy) -> the params of ``hf_vit_flax.CaiT`` (unchecked tree)."""
    return wt.to_flax(to_numpy(state_dict), timm_table(config), what="timm Cait")


def export_timm(params: Mapping, config: CaiTConfig) -> dict[str, np.ndarray]:
    """The params of ``hf_vit_flax.CaiT`` -> a state dict of timm's ``Cait`` (numpy arrays)."""
    return wt.to_torch(_core_params(params), timm_table(config), what="CaiT")


# -- shared ---------------------------------------------------------------------------------------


def check_reference(config: CaiTConfig, style: str, what: str, **fixed: Any) -> None:
    """A ValueError unless ``config`` has the options of ``style`` (and ``fixed``): the reference's layout."""
    wanted = {**STYLES[style], **fixed}
    wrong = {name: getattr(config, name) for name, value in wanted.items() if getattr(config, name) != value}
    if wrong:
        raise ValueError(
            f"{what} is a CaiT with the options of style={style!r} ({format_options(wanted)}), but this config has "
            f"{format_options(wrong)}: use CaiTConfig(style={style!r}, ...)"
        )


def _core_params(params: Mapping) -> Mapping:
    """The core module's params, also when given as ``{"params": ...}`` (``model.module_params()``)."""
    return params["params"] if set(params) == {"params"} else params


# -- the constructors that rebuild a CaiT in the PyTorch libraries ------------------------------------------


def vit_pytorch_kwargs(config: CaiTConfig) -> dict[str, Any]:
    """The constructor arguments of ``vit_pytorch.cait.CaiT`` for this config (ValueError naming the options
    vit-pytorch's CaiT does not have)."""
    check_reference(config, "vit_pytorch", "vit-pytorch's CaiT", qkv_bias=False, layer_scale_init=None)
    if config.cls_mlp_dim not in (None, config.mlp_dim) or config.drop_path_rate or config.head_dropout:
        raise ValueError("vit-pytorch's CaiT has no cls_mlp_dim, drop_path_rate or head_dropout")
    if config.attn_dropout not in (None, config.dropout) or config.layer_norm_eps != 1e-5:
        raise ValueError("vit-pytorch's CaiT has one dropout rate and LayerNorm eps 1e-5")
    names = ("image_size", "patch_size", "dim", "depth", "cls_depth", "heads", "mlp_dim", "dim_head")
    return dict(num_classes=config.num_labels, **same_named(config, *names, "dropout", "emb_dropout", "layer_dropout"))


def timm_architecture(config: CaiTConfig) -> tuple[str, dict[str, Any]]:
    """timm's architecture name and ``model_args`` that build this CaiT as timm's ``Cait``."""
    check_reference(config, "timm", "timm's Cait")
    missing = []
    if config.heads * config.dim_head != config.dim:
        missing.append(f"heads * dim_head = {config.heads * config.dim_head} != dim = {config.dim}")
    if not math.isclose(config.layer_norm_eps, 1e-6, rel_tol=1e-6):
        missing.append(f"layer_norm_eps={config.layer_norm_eps} (timm's Cait uses 1e-6)")
    if config.layer_dropout:
        missing.append("layer_dropout (vit-pytorch's; timm has drop_path_rate)")
    cls_mlp_dim = config.cls_mlp_dim or config.mlp_dim
    for name, width in (("mlp_dim", config.mlp_dim), ("cls_mlp_dim", cls_mlp_dim)):
        if int(config.dim * (width / config.dim)) != width:
            missing.append(f"{name}={width}, which is no ratio of dim={config.dim} timm rounds back to")
    if missing:
        raise NotImplementedError("this CaiT cannot be written as a timm Cait: " + "; ".join(missing))
    image_size, patch_size = to_pair(config.image_size), to_pair(config.patch_size)
    if image_size[0] != image_size[1] or patch_size[0] != patch_size[1]:
        raise NotImplementedError("timm's Cait takes square images and patches only")
    return "cait_s24_224", dict(
        img_size=image_size[0],
        patch_size=patch_size[0],
        in_chans=config.channels,
        num_classes=config.num_labels,
        embed_dim=config.dim,
        depth=config.depth,
        num_heads=config.heads,
        mlp_ratio=config.mlp_dim / config.dim,
        qkv_bias=config.qkv_bias,
        drop_rate=config.head_dropout,
        pos_drop_rate=config.emb_dropout,
        proj_drop_rate=config.dropout,
        attn_drop_rate=config.dropout if config.attn_dropout is None else config.attn_dropout,
        drop_path_rate=config.drop_path_rate,
        init_values=config.layer_scale_init if config.layer_scale_init is not None else 1e-5,
        depth_token_only=config.cls_depth,
        mlp_ratio_token_only=cls_mlp_dim / config.dim,
    )
