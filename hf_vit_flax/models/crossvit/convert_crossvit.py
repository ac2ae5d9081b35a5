"""Weights of vit-pytorch's and timm's CrossViT <-> ``hf_vit_flax.CrossViT`` params (pure numpy; no torch).

Each direction reads one declarative table (:func:`vit_pytorch_table`, :func:`timm_table`: PyTorch key,
Flax path, transform), built from the layers' own tables, so an import and an export cannot disagree.
The only steps that are not renames run on the state dict before (and, inverted, after) the table:
PyTorch Linear layers that read the same input and that we store as one kernel are concatenated
(vit-pytorch's ``to_q`` + ``to_kv`` -> our ``qkv``; timm's ``wk`` + ``wv`` -> our ``kv``), and the
original release's ``pos_embed.0`` names become timm's ``pos_embed_0`` (timm's ``checkpoint_filter_fn``).

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

The way back: :func:`vit_pytorch_kwargs` and :func:`timm_architecture` are the constructor arguments and timm's
architecture and ``model_args`` that rebuild the model, which ``hf_vit_flax.export_vit_pytorch`` / ``export_timm``
write next to the exported state dict (NotImplementedError naming what the library cannot express).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...configuration_utils import to_pair
from ...conversion_utils import image_size_from_patches, same_named, timm_normalization
from ...layers import (
    TIMM_BLOCK,
    VIT_PYTORCH_BLOCK,
    block_table,
    conv_patch_embedding_table,
    patch_embedding_table,
    transformer_table,
)
from ...weight_tables import TOKEN, Entry, Table, linear, norm, to_flax, to_torch
from .configuration_crossvit import PRESETS, CrossViTConfig
from .modeling_flax_crossvit import (
    TIMM_CROSS_ATTENTION,
    class_token_projection_table,
    cross_attention_table,
    dagger_patch_embedding_table,
    projected_cross_attention_table,
)

BRANCHES = ("sm", "lg")
# (branch, the other branch): the small branch's class token attends to the large branch and back.
PAIRS = (("sm", "lg"), ("lg", "sm"))


def _size(height: int, width: int):
    return height if height == width else (height, width)


# -- what is not a rename: Linear layers stored as one kernel ---------------------------------------------


@dataclass(frozen=True)
class Concatenated:
    """PyTorch Linear layers ``parts`` (``sizes`` output features each) reading the same input, which we
    store as one kernel: the table reads them, concatenated in order, under the key ``fused``."""

    fused: str
    parts: tuple[str, ...]
    sizes: tuple[int, ...]
    bias: bool = False

    def suffixes(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.bias else ("weight",)


def concatenate_linears(
    state_dict: Mapping[str, Any], groups: Sequence[Concatenated], *, what: str
) -> dict[str, np.ndarray]:
    """``state_dict`` with each group's parts replaced by their concatenation (output axis, in order)."""
    out = dict(state_dict)
    for group in groups:
        for suffix in group.suffixes():
            keys = [f"{part}.{suffix}" for part in group.parts]
            missing = [key for key in keys if key not in out]
            if missing:
                raise ValueError(
                    f"{what}: the checkpoint has no {', '.join(map(repr, missing))}. It does not match the "
                    f"configuration (another architecture or other options)."
                )
            out[f"{group.fused}.{suffix}"] = np.concatenate([np.asarray(out.pop(key)) for key in keys], axis=0)
    return out


def split_linears(state_dict: Mapping[str, np.ndarray], groups: Sequence[Concatenated]) -> dict[str, np.ndarray]:
    """The inverse of :func:`concatenate_linears`."""
    out = dict(state_dict)
    for group in groups:
        for suffix in group.suffixes():
            fused = out.pop(f"{group.fused}.{suffix}")
            pieces = np.split(fused, np.cumsum(group.sizes)[:-1], axis=0)
            for part, piece in zip(group.parts, pieces, strict=True):
                out[f"{part}.{suffix}"] = np.ascontiguousarray(piece)
    return out


def _require(config: CrossViTConfig, preset: str, what: str, **more: Any) -> None:
    """``config`` has the named options of ``preset`` (initialisation aside) and ``more``: else the weights of
    ``what`` do not describe it."""
    wanted = {k: v for k, v in PRESETS[preset].items() if k != "token_init"} | more
    wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
    if wrong:
        given = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
        need = ", ".join(f"{k}={wanted[k]!r}" for k in wrong)
        raise ValueError(f"{what} has {need}; this config has {given} (build it with style={preset!r})")


# -- vit-pytorch ------------------------------------------------------------------------------------------


def config_from_vit_pytorch(model: Any, image_size=None) -> CrossViTConfig:
    """Read a ``CrossViTConfig`` off a live ``vit_pytorch.cross_vit.CrossViT`` (duck-typed: no torch import).

    ``image_size`` (int or (height, width)) for a model used on images that are not square: vit-pytorch's
    ``CrossViT`` takes one int ``image_size``, which only sets each branch's number of patches, and its forward
    takes any image with that many patches in both branches (one built with 64, patch sizes 8 and 16, takes
    32x128 images too), so the module cannot tell which it was used on. Without it, the square size.
    """
    values: dict[str, Any] = {}
    image_sizes = set()
    for b in BRANCHES:
        embedder = getattr(model, f"{b}_image_embedder")
        to_patch = embedder.to_patch_embedding
        patch = int(to_patch[0].axes_lengths["p1"])
        num_patches = embedder.pos_embedding.shape[1] - 1
        what = f"vit-pytorch CrossViT's {b} branch"
        size = image_size_from_patches(num_patches, (patch, patch), what, image_size)
        image_sizes.add(size)
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


def vit_pytorch_concatenated(config: CrossViTConfig) -> list[Concatenated]:
    """Each encoder attention's ``to_q`` and ``to_kv``, read as the fused ``to_qkv`` of ``VIT_PYTORCH_BLOCK``."""
    groups = []
    for i in range(config.depth):
        for index, b in enumerate(BRANCHES):
            inner = getattr(config, f"{b}_enc_heads") * getattr(config, f"{b}_enc_dim_head")
            for j in range(getattr(config, f"{b}_enc_depth")):
                attention = f"multi_scale_encoder.layers.{i}.{index}.layers.{j}.0"
                groups.append(
                    Concatenated(f"{attention}.to_qkv", (f"{attention}.to_q", f"{attention}.to_kv"), (inner, 2 * inner))
                )
    return groups


def vit_pytorch_table(config: CrossViTConfig) -> Table:
    """vit-pytorch ``CrossViT`` state-dict keys (its ``to_q`` + ``to_kv`` as ``to_qkv``) <-> ``CrossViT`` params."""
    _require(config, "vit_pytorch", "vit-pytorch's CrossViT", multi_conv=False, qkv_bias=False)
    table: Table = []
    for b in BRANCHES:
        embedder = f"{b}_image_embedder"
        table += patch_embedding_table(f"{embedder}.to_patch_embedding", f"{b}_embed/patch_embed")
        table += [Entry(f"{embedder}.cls_token", f"{b}_embed/cls_token", TOKEN)]
        table += [Entry(f"{embedder}.pos_embedding", f"{b}_embed/pos_embedding", TOKEN)]
    for i in range(config.depth):
        for index, b in enumerate(BRANCHES):
            encoder, depth = f"multi_scale_encoder.layers.{i}.{index}", getattr(config, f"{b}_enc_depth")
            table += transformer_table(encoder, f"blocks_{i}/{b}_encoder", depth, VIT_PYTORCH_BLOCK, qkv_bias=False)
        for k in range(config.cross_attn_depth):
            for index, (b, o) in enumerate(PAIRS):
                projected = getattr(config, f"{b}_dim") != getattr(config, f"{o}_dim")
                torch = f"multi_scale_encoder.layers.{i}.2.layers.{k}.{index}"
                table += projected_cross_attention_table(torch, f"blocks_{i}/{b}_attend_{o}_{k}", projected=projected)
    if config.num_labels > 0:
        for b in BRANCHES:
            table += [*norm(f"{b}_mlp_head.0", f"{b}_head/norm"), *linear(f"{b}_mlp_head.1", f"{b}_head/fc")]
    return table


def _vit_pytorch_empty_heads(config: CrossViTConfig) -> dict[str, np.ndarray]:
    """What vit-pytorch keeps with ``num_classes=0``: per branch a LayerNorm and a Linear with no outputs, which
    compute nothing (``to_flax`` ignores them; an export writes them as an identity norm and an empty Linear)."""
    out = {}
    for b in BRANCHES:
        dim = getattr(config, f"{b}_dim")
        out[f"{b}_mlp_head.0.weight"], out[f"{b}_mlp_head.0.bias"] = np.ones(dim, np.float32), np.zeros(dim, np.float32)
        out[f"{b}_mlp_head.1.weight"], out[f"{b}_mlp_head.1.bias"] = (
            np.zeros((0, dim), np.float32),
            np.zeros(0, np.float32),
        )
    return out


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CrossViTConfig) -> dict:
    """vit-pytorch ``CrossViT`` state dict (numpy) -> the params of ``hf_vit_flax.CrossViT`` (unchecked tree)."""
    what = "vit-pytorch CrossViT"
    table = vit_pytorch_table(config)
    state = concatenate_linears(state_dict, vit_pytorch_concatenated(config), what=what)
    ignore = _vit_pytorch_empty_heads(config) if config.num_labels <= 0 else ()
    return to_flax(state, table, what=what, ignore=ignore)


def export_vit_pytorch(params: Mapping, config: CrossViTConfig) -> dict[str, np.ndarray]:
    """``hf_vit_flax.CrossViT`` params -> a vit-pytorch ``CrossViT`` state dict (numpy), for ``load_state_dict``."""
    state = split_linears(to_torch(params, vit_pytorch_table(config)), vit_pytorch_concatenated(config))
    state = {k: np.array(v) for k, v in state.items()}  # writable: torch.from_numpy takes them as they are
    return {**state, **(_vit_pytorch_empty_heads(config) if config.num_labels <= 0 else {})}


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
        **timm_normalization(pretrained_cfg, int(model.in_chans)),
        **values,
    )


def _timm_fusion(i: int, d: int, k: int, nested: bool) -> str:
    """timm's fusion block ``k`` of branch ``d``: nested in a Sequential, or (timm's depth[-1] == 0) on its own."""
    return f"blocks.{i}.fusion.{d}.{k}" if nested else f"blocks.{i}.fusion.{d}"


def timm_concatenated(config: CrossViTConfig, *, nested_fusion: bool | None = None) -> list[Concatenated]:
    """Each fusion block's ``attn.wk`` and ``attn.wv``, read as the ``attn.wkv`` of ``TIMM_CROSS_ATTENTION``."""
    nested = config.cross_attn_depth != 1 if nested_fusion is None else nested_fusion
    groups = []
    for i in range(config.depth):
        for d, (_, o) in enumerate(PAIRS):
            width = getattr(config, f"{o}_dim")  # the attention runs in the other branch's width
            for k in range(config.cross_attn_depth):
                attn = f"{_timm_fusion(i, d, k, nested)}.attn"
                groups.append(
                    Concatenated(f"{attn}.wkv", (f"{attn}.wk", f"{attn}.wv"), (width, width), bias=config.qkv_bias)
                )
    return groups


def timm_table(config: CrossViTConfig, *, nested_fusion: bool | None = None) -> Table:
    """timm ``CrossVit`` state-dict keys (its ``wk`` + ``wv`` as ``wkv``) <-> ``CrossViT`` params.

    ``nested_fusion``: timm keeps a single fusion block per branch on its own (``fusion.d``, its ``depth[-1] ==
    0``, the registered models) or in a Sequential (``fusion.d.0``, ``depth[-1] == 1``); ``None``: on its own
    when ``cross_attn_depth == 1``.
    """
    _require(config, "timm", "timm's CrossVit")
    for b in BRANCHES:
        if getattr(config, f"{b}_enc_depth") < 1:
            raise ValueError(f"timm's CrossVit has at least one block per branch, this config {b}_enc_depth=0")
    nested = config.cross_attn_depth != 1 if nested_fusion is None else nested_fusion
    table: Table = []
    for d, b in enumerate(BRANCHES):
        if config.multi_conv:
            table += dagger_patch_embedding_table(f"patch_embed.{d}", f"{b}_embed/patch_embed")
        else:
            table += conv_patch_embedding_table(f"patch_embed.{d}", f"{b}_embed/patch_embed")
        table += [Entry(f"cls_token_{d}", f"{b}_embed/cls_token", TOKEN)]
        table += [Entry(f"pos_embed_{d}", f"{b}_embed/pos_embedding", TOKEN)]
    for i in range(config.depth):
        block = f"blocks_{i}"
        for d, (b, o) in enumerate(PAIRS):
            for j in range(getattr(config, f"{b}_enc_depth")):
                table += block_table(
                    f"blocks.{i}.blocks.{d}.{j}", f"{block}/{b}_blocks_{j}", TIMM_BLOCK, qkv_bias=config.qkv_bias
                )
            table += class_token_projection_table(f"blocks.{i}.projs.{d}", f"{block}/{b}_proj")
            for k in range(config.cross_attn_depth):
                fusion = _timm_fusion(i, d, k, nested)
                table += cross_attention_table(
                    fusion, f"{block}/{b}_attend_{o}_{k}", TIMM_CROSS_ATTENTION, qkv_bias=config.qkv_bias
                )
            table += class_token_projection_table(f"blocks.{i}.revert_projs.{d}", f"{block}/{b}_revert")
    for d, b in enumerate(BRANCHES):
        table += norm(f"norm.{d}", f"{b}_norm")
    if config.num_labels > 0:
        for d, b in enumerate(BRANCHES):
            table += linear(f"head.{d}", f"{b}_head")
    return table


def _timm_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The original release's ``pos_embed.0`` / ``cls_token.0`` as timm's ``pos_embed_0`` (its checkpoint filter)."""
    return {
        (key.replace(".", "_") if key.startswith(("pos_embed.", "cls_token.")) else key): value
        for key, value in state_dict.items()
    }


def convert_timm(state_dict: Mapping[str, np.ndarray], config: CrossViTConfig) -> dict:
    """timm ``CrossVit`` state dict (numpy) -> the params of ``hf_vit_flax.CrossViT`` (unchecked tree).

    Takes timm's key names (``pos_embed_0``) and those of the original release (``pos_embed.0``).
    """
    what = "timm CrossVit"
    state = _timm_names(state_dict)
    nested = "blocks.0.fusion.0.norm1.weight" not in state  # else timm's un-nested single fusion block
    groups = timm_concatenated(config, nested_fusion=nested)
    return to_flax(concatenate_linears(state, groups, what=what), timm_table(config, nested_fusion=nested), what=what)


def export_timm(params: Mapping, config: CrossViTConfig, *, nested_fusion: bool | None = None) -> dict[str, np.ndarray]:
    """``hf_vit_flax.CrossViT`` params -> a timm ``CrossVit`` state dict (numpy), for ``load_state_dict``
    (``nested_fusion``: see :func:`timm_table`)."""
    state = to_torch(params, timm_table(config, nested_fusion=nested_fusion))
    state = split_linears(state, timm_concatenated(config, nested_fusion=nested_fusion))
    return {k: np.array(v) for k, v in state.items()}  # writable: torch.from_numpy takes them as they are


# -- the constructors that rebuild a CrossViT in the PyTorch libraries ------------------------------------------


def _preset_differences(config: CrossViTConfig, preset: str) -> list[str]:
    """The named options of ``config`` that are not those of ``preset`` (initialisation aside), as text."""
    return [
        f"{name}={getattr(config, name)!r} ({preset}'s: {value!r})"
        for name, value in PRESETS[preset].items()
        if name != "token_init" and getattr(config, name) != value
    ]


def _branch_sizes(config: CrossViTConfig) -> dict[str, tuple[int, int]]:
    image = to_pair(config.image_size)
    return {b: to_pair(getattr(config, f"{b}_image_size") or image) for b in BRANCHES}


def vit_pytorch_kwargs(config: CrossViTConfig) -> dict[str, Any]:
    """The constructor arguments of ``vit_pytorch.cross_vit.CrossViT`` for this config (the inverse of
    :func:`config_from_vit_pytorch`), or ``NotImplementedError`` naming what vit-pytorch's CrossViT lacks.

    vit-pytorch takes one int ``image_size``, which only sets each branch's number of patches; a (height, width)
    config is written as the square with the same patch counts (32x128 with patch sizes 8 and 16: 64), whose
    module takes the config's images as they are (read it back with ``image_size=(32, 128)``).
    """
    missing = _preset_differences(config, "vit_pytorch")
    if config.multi_conv:
        missing.append("multi_conv (timm's 'dagger' patch embedding)")
    if config.qkv_bias:
        missing.append("qkv_bias (vit-pytorch's attention has no query/key/value biases)")
    if config.global_pool != "token":
        missing.append(f"global_pool={config.global_pool!r} (vit-pytorch classifies the class tokens)")
    if not math.isclose(config.layer_norm_eps, 1e-5, rel_tol=1e-6):
        missing.append(f"layer_norm_eps={config.layer_norm_eps} (vit-pytorch's LayerNorms use PyTorch's 1e-5)")
    if config.drop_path_rate:
        missing.append(f"drop_path_rate={config.drop_path_rate} (stochastic depth)")
    height, width = to_pair(config.image_size)
    sizes = _branch_sizes(config)
    if any(size != (height, width) for size in sizes.values()):
        missing.append(
            f"per-branch image sizes (sm_image_size={config.sm_image_size!r}, lg_image_size={config.lg_image_size!r}): "
            f"vit-pytorch feeds both branches the image as it is"
        )
    if config.crop_scale:
        missing.append("crop_scale (timm's centre crop of a branch's input)")
    side = math.isqrt(height * width)
    patches = (config.sm_patch_size, config.lg_patch_size)
    if side * side != height * width or any(side % patch for patch in patches):
        missing.append(
            f"image_size={config.image_size!r}: vit-pytorch takes one int image_size (a square grid of patches per "
            f"branch), and no square that patch sizes {patches} divide has the patch counts of {height}x{width}"
        )
    if missing:
        raise NotImplementedError("this CrossViT cannot be written as a vit-pytorch CrossViT: " + "; ".join(missing))
    names = ("dim", "patch_size", "enc_depth", "enc_heads", "enc_mlp_dim", "enc_dim_head")
    branch = [f"{b}_{name}" for b in BRANCHES for name in names]
    cross = ("cross_attn_depth", "cross_attn_heads", "cross_attn_dim_head")
    return dict(
        image_size=side,
        num_classes=config.num_labels,
        **same_named(config, *branch, *cross, "depth", "dropout", "emb_dropout", "channels"),
    )


def _timm_scale(image: tuple[int, int], branch: tuple[int, int]) -> float | None:
    """timm's ``img_scale`` entry for a branch: the factor ``s`` with ``int(side * s)`` = the branch's size on
    both sides (timm's ``img_size_scaled``), or ``None`` when no single factor gives it."""
    if branch == image:
        return 1.0
    for ratio in (branch[0] / image[0], branch[1] / image[1]):
        for scale in (ratio, math.nextafter(ratio, math.inf)):  # the float just above, if int() rounds down
            if all(int(side * scale) == want for side, want in zip(image, branch, strict=True)):
                return scale
    return None


def timm_architecture(config: CrossViTConfig) -> tuple[str, dict[str, Any]]:
    """timm's architecture name and ``model_args`` that build this CrossViT as timm's ``CrossVit`` (as its Hub
    ``config.json`` records them), or ``NotImplementedError`` naming what timm's ``CrossVit`` cannot express.

    A single cross-attention block per branch is timm's registered layout (``depth[-1] == 0``: the block on its
    own, with its stochastic-depth schedule), which :func:`export_timm` writes by default; more are nested.
    """
    missing = _preset_differences(config, "timm")
    image = to_pair(config.image_size)
    scales = []
    for b, size in _branch_sizes(config).items():
        dim, mlp_dim = getattr(config, f"{b}_dim"), getattr(config, f"{b}_enc_mlp_dim")
        if getattr(config, f"{b}_enc_depth") < 1:
            missing.append(f"{b}_enc_depth=0 (timm's CrossVit has at least one block per branch)")
        if int(dim * (mlp_dim / dim)) != mlp_dim:
            missing.append(f"{b}_enc_mlp_dim={mlp_dim}, which is no ratio of {b}_dim={dim} timm rounds back to")
        scale = _timm_scale(image, size)
        if scale is None:
            missing.append(
                f"{b}_image_size={getattr(config, f'{b}_image_size')!r}, which is no single scale of "
                f"image_size={config.image_size!r} (timm's img_scale scales both sides by one factor)"
            )
        scales.append(scale)
    if not math.isclose(config.layer_norm_eps, 1e-6, rel_tol=1e-6):
        missing.append(f"layer_norm_eps={config.layer_norm_eps} (timm's CrossVit builds its LayerNorms with eps 1e-6)")
    if missing:
        raise NotImplementedError("this CrossViT cannot be written as a timm CrossVit: " + "; ".join(missing))
    # timm's depth[-1]: 0 for a single fusion block on its own, else the number of nested ones.
    fusion_depth = 0 if config.cross_attn_depth == 1 else config.cross_attn_depth
    architecture = "crossvit_9_dagger_240" if config.multi_conv else "crossvit_9_240"
    return architecture, dict(
        img_size=config.image_size if isinstance(config.image_size, int) else list(image),
        img_scale=scales,
        patch_size=[config.sm_patch_size, config.lg_patch_size],
        in_chans=config.channels,
        num_classes=config.num_labels,
        embed_dim=[config.sm_dim, config.lg_dim],
        depth=[[config.sm_enc_depth, config.lg_enc_depth, fusion_depth]] * config.depth,
        num_heads=[config.sm_enc_heads, config.lg_enc_heads],
        # The third entry is read by the fusion blocks, which have no MLP (timm's registered models: 1).
        mlp_ratio=[config.sm_enc_mlp_dim / config.sm_dim, config.lg_enc_mlp_dim / config.lg_dim, 1.0],
        multi_conv=config.multi_conv,
        crop_scale=config.crop_scale,
        qkv_bias=config.qkv_bias,
        drop_rate=0.0,  # timm's dropout before the heads, which CrossViT does not model
        pos_drop_rate=config.emb_dropout,
        proj_drop_rate=config.dropout,
        attn_drop_rate=config.dropout,
        drop_path_rate=config.drop_path_rate,
        global_pool=config.global_pool,
    )
