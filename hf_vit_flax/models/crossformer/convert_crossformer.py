"""Weights of the two CrossFormer references <-> ``hf_vit_flax.CrossFormer`` (pure numpy, no torch import).

CrossFormer: "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention"
(Wang et al., arXiv 2108.00154).

Each layout is one declarative table (``hf_vit_flax.weight_tables``), read in both directions:

vit-pytorch ``vit_pytorch.crossformer.CrossFormer`` (:func:`vit_pytorch_table`; its layer k of a stage
holds our blocks 2k (short) and 2k+1 (long)):
  layers.i.0.convs.j                          -> stages_i/embed/conv_j
  layers.i.1.layers.k.{0,2}.norm.{g,b}        -> stages_i/blocks_{2k, 2k+1}/norm1 (channel LN, (1, C, 1, 1))
  layers.i.1.layers.k.{0,2}.to_qkv, to_out    -> .../attn/qkv, attn/proj (1x1 convolutions as Dense)
  layers.i.1.layers.k.{0,2}.dpb.{0,1,3,4,6,7,9} -> .../attn/pos/{pos_proj, pos1/norm, pos1/fc, pos2..., pos3/fc}
  layers.i.1.layers.k.{1,3}.{0,1,4}           -> .../{norm2, mlp/fc1, mlp/fc2}
  to_logits.1                                 -> head

The original release (cheerss/CrossFormer v1, :func:`original_table`):
  patch_embed.projs.j, patch_embed.norm       -> stages_0/embed/conv_j, stages_0/embed/norm
  layers.i.blocks.j.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2} -> stages_i/blocks_j/(same)
  layers.i.blocks.j.attn.pos.pos_proj         -> .../attn/pos/pos_proj
  layers.i.blocks.j.attn.pos.posN.{0,2}       -> .../attn/pos/posN/{norm, fc}
  layers.i.downsample.{norm, reductions.j}    -> stages_{i+1}/embed/{norm, conv_j}
  norm, head                                  -> norm, head
  dropped by name (non-learned buffers, recomputed): attn.biases, attn.relative_position_index

Also here: reading a config off a live vit-pytorch module, and the original release's constructor
arguments (:func:`config_from_original`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import weight_tables as wt
from ...conversion_utils import read_state_dict, same_named, to_numpy
from ...layers import TIMM_BLOCK, block_table
from .configuration_crossformer import PER_STAGE_FIELDS, PRESETS, CrossFormerConfig, expand_options
from .geometry import NUM_STAGES

# Persistent buffers of every v1 block: the offsets table and the relative index, both recomputed.
ORIGINAL_BUFFERS = ("attn.biases", "attn.relative_position_index")
# ImageNet normalisation (timm's IMAGENET_DEFAULT_MEAN / STD), used to train the released models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- shared pieces ------------------------------------------------------------------------------------

# The position-bias MLP: our name -> the PyTorch index or name within it.
VIT_PYTORCH_POSITION_BIAS = {
    "pos_proj": "0",
    "pos1/norm": "1",
    "pos1/fc": "3",
    "pos2/norm": "4",
    "pos2/fc": "6",
    "pos3/norm": "7",
    "pos3/fc": "9",
}
ORIGINAL_POSITION_BIAS = {
    "pos_proj": "pos_proj",
    **{f"pos{n}/{part}": f"pos{n}.{index}" for n in (1, 2, 3) for part, index in (("norm", 0), ("fc", 2))},
}


def position_bias_table(torch: str, flax: str, names: Mapping[str, str]) -> wt.Table:
    """The weight map of a :class:`DynamicPositionBias` (``names``: the PyTorch name of each part)."""
    table: wt.Table = []
    for part, name in names.items():
        maker = wt.norm if part.endswith("norm") else wt.linear
        table += maker(f"{torch}.{name}", f"{flax}/{part}")
    return table


# A 1x1 Conv2d (O, I, 1, 1) <-> a Dense kernel (I, O).
POINTWISE = wt.Transform(
    "pointwise",
    lambda w: np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]).T),
    lambda k: np.ascontiguousarray(k.T[:, :, None, None]),
)


def _differences(options: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``name=value (needs wanted)`` for each option that is not the wanted value."""
    return [f"{name}={options[name]!r} (needs {value!r})" for name, value in wanted.items() if options[name] != value]


def pointwise(torch: str, flax: str, bias: bool = True) -> wt.Table:
    table = [wt.Entry(f"{torch}.weight", f"{flax}/kernel", POINTWISE)]
    return table + ([wt.Entry(f"{torch}.bias", f"{flax}/bias")] if bias else [])


def channel_norm(torch: str, flax: str, dim: int) -> wt.Table:
    """vit-pytorch's channel LayerNorm: ``g``, ``b`` of shape (1, C, 1, 1)."""
    shape = (1, dim, 1, 1)
    return [
        wt.Entry(f"{torch}.g", f"{flax}/scale", wt.flatten_to(shape)),
        wt.Entry(f"{torch}.b", f"{flax}/bias", wt.flatten_to(shape)),
    ]


# -- vit-pytorch ----------------------------------------------------------------------------------------

# The options vit-pytorch's CrossFormer has, fixed in its code: weights and a function only it can take.
VIT_PYTORCH_OPTIONS = {**PRESETS["vit_pytorch"].options, "mlp_ratio": 4.0, "layer_norm_eps": 1e-5}


def config_from_vit_pytorch(model: Any, image_size=None) -> CrossFormerConfig:
    """Read a ``CrossFormerConfig`` off a live ``vit_pytorch.crossformer.CrossFormer`` (duck-typed, no torch).

    The module does not fix an image size, and neither does the port: it takes every size the
    original takes (sides its windows tile, e.g. multiples of 224 with the default windows). The
    config's ``image_size`` (224 unless given) is the size its image processor resizes to.
    """
    stages = [_vit_pytorch_stage(cross_embed, transformer) for cross_embed, transformer in model.layers]
    short_attn, short_ff, _, _ = model.layers[-1][1].layers[0]  # options every stage shares: read off the last
    return CrossFormerConfig(
        **{name: [stage[name] for stage in stages] for name in stages[0]},
        num_classes=model.to_logits[1].out_features,
        attn_dropout=float(short_attn.dropout.p),
        ff_dropout=float(short_ff[3].p),
        channels=model.layers[0][0].convs[0].in_channels,
        dim_head=round(short_attn.scale**-2),
        **({"image_size": image_size} if image_size is not None else {}),
    )


def _vit_pytorch_stage(cross_embed: Any, transformer: Any) -> dict[str, Any]:
    """A stage of vit-pytorch's CrossFormer (its cross embedding and its transformer) as the config's
    per-stage fields."""
    convs, layers = list(cross_embed.convs), list(transformer.layers)
    short_attn, _, long_attn, _ = layers[0]
    return {
        "dim": sum(c.out_channels for c in convs),
        "depth": len(layers),
        "local_window_size": short_attn.window_size,
        "global_window_size": long_attn.window_size,
        "cross_embed_kernel_sizes": [c.kernel_size[0] for c in convs],
        "cross_embed_strides": convs[0].stride[0],
    }


def check_vit_pytorch_options(config: CrossFormerConfig) -> dict[str, Any]:
    """The config's expanded options, or ValueError naming each one vit-pytorch's CrossFormer does not have."""
    options = {**expand_options(config), "mlp_ratio": config.mlp_ratio, "layer_norm_eps": config.layer_norm_eps}
    wrong = _differences(options, VIT_PYTORCH_OPTIONS)
    wrong += [f"depth[{i}]={d} blocks (needs an even count: pairs)" for i, d in enumerate(options["depth"]) if d % 2]
    wrong += [
        f"heads[{i}]={h}, dim_head[{i}]={w} (needs dim // 32 heads of width 32)"
        for i, (d, h, w) in enumerate(zip(options["dim"], options["heads"], options["dim_head"], strict=True))
        if w != 32 or h != d // 32
    ]
    if wrong:
        raise ValueError(
            f"vit-pytorch's CrossFormer has no {'; '.join(wrong)}: its weights need style='vit_pytorch' and its "
            f"options (weights of the original release load with hf_vit_flax.from_crossformer_checkpoint)"
        )
    return options


def vit_pytorch_kwargs(config: CrossFormerConfig) -> dict[str, Any]:
    """The constructor arguments of ``vit_pytorch.crossformer.CrossFormer`` for this config, in its
    vocabulary (``depth`` counts (short, long) pairs); ValueError naming what vit-pytorch lacks."""
    options = check_vit_pytorch_options(config)
    if config.drop_path_rate:
        raise ValueError("vit-pytorch's CrossFormer has no drop_path_rate")
    return dict(
        depth=[d // 2 for d in options["depth"]],
        num_classes=config.num_labels,
        **same_named(options, *PER_STAGE_FIELDS, "cross_embed_kernel_sizes"),
        **same_named(config, "attn_dropout", "ff_dropout", "channels"),
    )


def vit_pytorch_table(config: CrossFormerConfig) -> wt.Table:
    """Every tensor of vit-pytorch's ``CrossFormer`` state dict and its place in our params (head included
    when ``num_labels > 0``)."""
    options = check_vit_pytorch_options(config)
    table: wt.Table = []
    for i, (dim, kernels, blocks) in enumerate(
        zip(options["dim"], options["cross_embed_kernel_sizes"], options["depth"], strict=True)
    ):
        for j in range(len(kernels)):
            table += wt.conv(f"layers.{i}.0.convs.{j}", f"stages_{i}/embed/conv_{j}")
        for b in range(blocks):  # layer k holds [short attention, its ff, long attention, its ff]
            layer, half = divmod(b, 2)
            attn, ff = f"layers.{i}.1.layers.{layer}.{2 * half}", f"layers.{i}.1.layers.{layer}.{2 * half + 1}"
            block = f"stages_{i}/blocks_{b}"
            table += [
                *channel_norm(f"{attn}.norm", f"{block}/norm1", dim),
                *pointwise(f"{attn}.to_qkv", f"{block}/attn/qkv", bias=False),
                *pointwise(f"{attn}.to_out", f"{block}/attn/proj"),
                *position_bias_table(f"{attn}.dpb", f"{block}/attn/pos", VIT_PYTORCH_POSITION_BIAS),
                *channel_norm(f"{ff}.0", f"{block}/norm2", dim),
                *pointwise(f"{ff}.1", f"{block}/mlp/fc1"),
                *pointwise(f"{ff}.4", f"{block}/mlp/fc2"),
            ]
    if config.num_labels > 0:
        table += wt.linear("to_logits.1", "head")
    return table


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CrossFormerConfig) -> dict:
    """vit-pytorch ``CrossFormer`` state dict (numpy) -> the params of ``hf_vit_flax.CrossFormer`` (unchecked).

    A headless config (``num_labels == 0``) drops the checkpoint's head."""
    head = ("to_logits.1.weight", "to_logits.1.bias") if config.num_labels <= 0 else ()
    return wt.to_flax(state_dict, vit_pytorch_table(config), what="vit-pytorch CrossFormer", ignore=head)


def export_vit_pytorch(params: Mapping, config: CrossFormerConfig) -> dict[str, np.ndarray]:
    """The params of ``hf_vit_flax.CrossFormer`` (``model.module_params()["params"]`` of a HF model) -> a
    vit-pytorch ``CrossFormer`` state dict of numpy arrays, for ``load_state_dict(strict=True)`` into the
    model built with the same arguments. ValueError for options vit-pytorch does not have.

    A headless model (``num_labels == 0``) gets vit-pytorch's empty head, ``Linear(dim, 0)``."""
    state_dict = wt.to_torch(params, vit_pytorch_table(config), what="CrossFormer")
    if config.num_labels <= 0:
        state_dict["to_logits.1.weight"] = np.zeros((0, expand_options(config)["dim"][-1]), np.float32)
        state_dict["to_logits.1.bias"] = np.zeros((0,), np.float32)
    return state_dict


# -- the original release -------------------------------------------------------------------------------

# The options of the release that its layout and function fix (qkv_bias and the dropouts are its arguments).
ORIGINAL_OPTIONS = {k: v for k, v in PRESETS["original"].options.items() if k != "qkv_bias"}


def check_original_options(config: CrossFormerConfig) -> dict[str, Any]:
    """The config's expanded options, or ValueError naming each one the original release does not have."""
    options = expand_options(config)
    wrong = _differences(options, ORIGINAL_OPTIONS)
    if wrong:
        raise ValueError(
            f"weights of the original CrossFormer need a config with style='original' (or its options); this "
            f"config (style={config.style!r}) has {'; '.join(wrong)}"
        )
    return options


def original_table(config: CrossFormerConfig) -> wt.Table:
    """Every learned tensor of the original release's state dict and its place in our params (head included
    when ``num_labels > 0``)."""
    options = check_original_options(config)
    table: wt.Table = []
    for i, (kernels, blocks) in enumerate(zip(options["cross_embed_kernel_sizes"], options["depth"], strict=True)):
        embed = "patch_embed" if i == 0 else f"layers.{i - 1}.downsample"
        convs = "projs" if i == 0 else "reductions"
        for j in range(len(kernels)):
            table += wt.conv(f"{embed}.{convs}.{j}", f"stages_{i}/embed/conv_{j}")
        table += wt.norm(f"{embed}.norm", f"stages_{i}/embed/norm")
        for j in range(blocks):
            src, dst = f"layers.{i}.blocks.{j}", f"stages_{i}/blocks_{j}"
            table += block_table(src, dst, TIMM_BLOCK, qkv_bias=options["qkv_bias"])
            table += position_bias_table(f"{src}.attn.pos", f"{dst}/attn/pos", ORIGINAL_POSITION_BIAS)
    table += wt.norm("norm", "norm")
    if config.num_labels > 0:
        table += wt.linear("head", "head")
    return table


def convert_original(state_dict: Mapping[str, np.ndarray], config: CrossFormerConfig) -> dict:
    """State dict of the original release (numpy) -> the params of ``hf_vit_flax.CrossFormer`` (unchecked).

    The non-learned buffers ``attn.biases`` and ``attn.relative_position_index`` are dropped by name, and
    the head when the config is headless; a missing key or any other key left over is an error that
    names them all, with the config they were read against.
    """
    table = original_table(config)
    dropped = [k for k in state_dict if k.endswith(ORIGINAL_BUFFERS)]
    if config.num_labels <= 0:  # a classifier checkpoint loaded as a backbone: the head is not used
        dropped += [k for k in ("head.weight", "head.bias") if k in state_dict]
    needed, present = {e.torch for e in table}, set(state_dict) - set(dropped)
    missing, unexpected = sorted(needed - present), sorted(present - needed)
    if missing or unexpected:
        options = expand_options(config)
        raise ValueError(
            f"the checkpoint does not match this CrossFormer config (depths {list(options['depth'])}, dims "
            f"{list(options['dim'])}): missing keys {_abbrev(missing)}; unexpected keys {_abbrev(unexpected)}. "
            f"Pass the config the checkpoint was trained with (e.g. its preset)."
        )
    return wt.to_flax(state_dict, table, what="original CrossFormer", ignore=dropped)


def _abbrev(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def config_from_original(kwargs: Mapping[str, Any], **overrides) -> CrossFormerConfig:
    """The config of the original release's ``CrossFormer(**kwargs)`` (its constructor's keyword names).

    ``patch_size`` becomes the first stage's kernels (stride ``patch_size[0]``), ``merge_size``
    the kernels of the three patch mergings (stride 2), ``embed_dim`` doubles per stage,
    ``group_size`` is both the local and the global window.
    """
    kw = dict(kwargs)
    unsupported = {"ape": False, "patch_norm": True, "qk_scale": None}
    for name, supported in unsupported.items():
        if kw.pop(name, supported) != supported:
            raise ValueError(f"{name}={kwargs[name]!r} is not supported (the released models use {supported!r})")
    kw.pop("use_checkpoint", None)
    kw.pop("norm_layer", None)
    known = {
        "img_size",
        "patch_size",
        "in_chans",
        "num_classes",
        "embed_dim",
        "depths",
        "num_heads",
        "group_size",
        "mlp_ratio",
        "qkv_bias",
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
        "merge_size",
    }
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"unknown constructor arguments of the original CrossFormer: {unknown}")
    depths = list(kw.get("depths", [2, 2, 6, 2]))
    patch_size = list(kw.get("patch_size", [4]))
    merge_size = [list(m) for m in kw.get("merge_size", [[2], [2], [2]])]
    if len(depths) != NUM_STAGES or len(merge_size) != NUM_STAGES - 1:
        raise ValueError(f"only {NUM_STAGES}-stage models are supported, got depths={depths}")
    embed_dim = int(kw.get("embed_dim", 96))
    group_size = kw.get("group_size", 7)
    values = dict(
        style="original",
        image_size=kw.get("img_size", 224),
        dim=[embed_dim * 2**i for i in range(NUM_STAGES)],
        depth=depths,
        heads=list(kw.get("num_heads", [3, 6, 12, 24])),
        local_window_size=group_size,
        global_window_size=group_size,
        cross_embed_kernel_sizes=[patch_size, *merge_size],
        cross_embed_strides=[patch_size[0], 2, 2, 2],
        num_classes=kw.get("num_classes", 1000),
        channels=kw.get("in_chans", 3),
        mlp_ratio=kw.get("mlp_ratio", 4.0),
        qkv_bias=bool(kw.get("qkv_bias", True)),
        ff_dropout=kw.get("drop_rate", 0.0),
        attn_dropout=kw.get("attn_drop_rate", 0.0),
        drop_path_rate=kw.get("drop_path_rate", 0.1),
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    values.update(overrides)
    return CrossFormerConfig(**values)


def load_state_dict(path_or_state_dict: Any) -> dict[str, np.ndarray]:
    """A state dict as numpy: a mapping (tensors or arrays) as is, or a weights file.

    A ``.pth`` is read with torch (weights only), a ``.safetensors`` file without; the release's
    container ``{'model': state_dict}`` is unwrapped.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return read_state_dict(path_or_state_dict)
    if not isinstance(path_or_state_dict, Mapping):
        raise TypeError(f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    state_dict = path_or_state_dict
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    return to_numpy(state_dict)


def from_crossformer_checkpoint(path_or_state_dict: Any, config: CrossFormerConfig | str | Mapping):
    """Load a checkpoint of the original CrossFormer release into ``FlaxCrossFormerForImageClassification``.

    Args:
        path_or_state_dict: the release's ``.pth`` file (``{'model': state_dict}``, read with
            ``torch.load(..., weights_only=True)``), a ``.safetensors`` copy of it, or a state dict
            of tensors or numpy arrays.
        config: a ``CrossFormerConfig`` with ``style="original"``, a preset name
            (``"crossformer-t"``, ``"crossformer-s"``, ``"crossformer-b"``, ``"crossformer-l"``) or the
            reference constructor's keyword arguments (a mapping).

    Returns the classification model (the headless ``FlaxCrossFormerModel`` when ``num_classes=0``),
    checked strictly against the converted weights.
    """
    from .modeling_flax_crossformer import FlaxCrossFormerForImageClassification, FlaxCrossFormerModel

    if isinstance(config, str):
        config = CrossFormerConfig.from_preset(config)
    elif isinstance(config, Mapping):
        config = config_from_original(config)
    elif not isinstance(config, CrossFormerConfig):
        raise TypeError(f"config must be a CrossFormerConfig, a preset name or constructor kwargs, got {config!r}")
    params = convert_original(load_state_dict(path_or_state_dict), config)
    model_class = FlaxCrossFormerForImageClassification if config.num_labels > 0 else FlaxCrossFormerModel
    return model_class.from_params(config, params)
