"""Weights of the two CrossFormer references -> ``FlaxCrossFormerForImageClassification`` (pure numpy).

CrossFormer: "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention"
(Wang et al., arXiv 2108.00154).

vit-pytorch ``vit_pytorch.crossformer.CrossFormer`` (``style="vit_pytorch"``) -> ours:
  layers.i.0.convs.j                          -> stages_i.embed.conv_j
  layers.i.1.layers.k.{0,2}.norm.{g,b}        -> stages_i.blocks_{2k, 2k+1}.norm1 (channel LN, (1, C, 1, 1))
  layers.i.1.layers.k.{0,2}.to_qkv, to_out    -> ...attn.qkv, attn.proj (1x1 convolutions as Dense)
  layers.i.1.layers.k.{0,2}.dpb.{0,1,3,4,6,7,9} -> ...attn.pos.{pos_proj, pos1.norm, pos1.fc, pos2..., pos3.fc}
  layers.i.1.layers.k.{1,3}.{0,1,4}           -> ...{norm2, mlp.fc1, mlp.fc2}
  to_logits.1                                 -> head

The original release (cheerss/CrossFormer v1, ``style="original"``) -> ours:
  patch_embed.projs.j, patch_embed.norm       -> stages_0.embed.conv_j, stages_0.embed.norm
  layers.i.blocks.j.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2} -> stages_i.blocks_j.(same)
  layers.i.blocks.j.attn.pos.pos_proj         -> ...attn.pos.pos_proj
  layers.i.blocks.j.attn.pos.posN.{0,2}       -> ...attn.pos.posN.{norm, fc}
  layers.i.downsample.{norm, reductions.j}    -> stages_{i+1}.embed.{norm, conv_j}
  norm, head                                  -> norm, head
  dropped by name (non-learned buffers, recomputed): attn.biases, attn.relative_position_index
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...conversion_utils import StateDictReader, linear, read_state_dict, to_numpy
from .configuration_crossformer import CrossFormerConfig, per_stage, stage_windows

# Persistent buffers of every v1 block: the offsets table and the relative index, both recomputed.
ORIGINAL_BUFFERS = ("attn.biases", "attn.relative_position_index")


# -- vit-pytorch ----------------------------------------------------------------------------------------


def config_from_vit_pytorch(model: Any) -> CrossFormerConfig:
    """Read a ``CrossFormerConfig`` off a live ``vit_pytorch.crossformer.CrossFormer`` (duck-typed, no torch).

    The module does not fix an image size; the config gets the default 224 (pass a config to
    ``from_vit_pytorch`` for another size).
    """
    dims, depths, local, global_, kernels, strides = [], [], [], [], [], []
    attn_dropout = ff_dropout = 0.0
    for cross_embed, transformer in model.layers:
        convs = list(cross_embed.convs)
        dims.append(sum(c.out_channels for c in convs))
        kernels.append([c.kernel_size[0] for c in convs])
        strides.append(convs[0].stride[0])
        layers = list(transformer.layers)
        depths.append(len(layers))
        short_attn, short_ff, long_attn, _ = layers[0]
        local.append(short_attn.window_size)
        global_.append(long_attn.window_size)
        attn_dropout, ff_dropout = float(short_attn.dropout.p), float(short_ff[3].p)
        dim_head = round(short_attn.scale**-2)
    head = model.to_logits[1]
    return CrossFormerConfig(
        dim=dims,
        depth=depths,
        global_window_size=global_,
        local_window_size=local,
        cross_embed_kernel_sizes=kernels,
        cross_embed_strides=strides,
        num_classes=head.out_features,
        attn_dropout=attn_dropout,
        ff_dropout=ff_dropout,
        channels=model.layers[0][0].convs[0].in_channels,
        dim_head=dim_head,
    )


def _channel_norm(sd: StateDictReader, prefix: str) -> dict[str, np.ndarray]:
    """vit-pytorch's channel LayerNorm: ``g``, ``b`` of shape (1, C, 1, 1)."""
    return {"scale": sd.pop(f"{prefix}.g").reshape(-1), "bias": sd.pop(f"{prefix}.b").reshape(-1)}


def _pointwise(sd: StateDictReader, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    """A 1x1 Conv2d ``(O, I, 1, 1)`` as a Dense kernel ``(I, O)``."""
    weight = sd.pop(f"{prefix}.weight")
    out = {"kernel": linear(weight.reshape(weight.shape[0], weight.shape[1]))}
    if bias:
        out["bias"] = sd.pop(f"{prefix}.bias")
    return out


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: CrossFormerConfig) -> dict:
    """vit-pytorch ``CrossFormer`` state dict (numpy) -> the params of ``hf_vit_flax.CrossFormer`` (unchecked)."""
    if config.style != "vit_pytorch":
        raise ValueError(
            f"this config has style={config.style!r}; vit-pytorch weights need style='vit_pytorch' "
            f"(weights of the original release load with hf_vit_flax.from_crossformer_checkpoint)"
        )
    sd = StateDictReader(state_dict)
    params: dict[str, Any] = {}
    depth = per_stage(config.depth, "depth")
    kernels = config.architecture()["cross_embed_kernel_sizes"]
    for i in range(len(depth)):
        stage: dict[str, Any] = {
            "embed": {f"conv_{j}": sd.conv(f"layers.{i}.0.convs.{j}") for j in range(len(kernels[i]))}
        }
        for k in range(depth[i]):
            for half, (attn_idx, ff_idx) in enumerate(((0, 1), (2, 3))):
                a, f = f"layers.{i}.1.layers.{k}.{attn_idx}", f"layers.{i}.1.layers.{k}.{ff_idx}"
                stage[f"blocks_{2 * k + half}"] = {
                    "norm1": _channel_norm(sd, f"{a}.norm"),
                    "attn": {
                        "qkv": _pointwise(sd, f"{a}.to_qkv", bias=False),
                        "proj": _pointwise(sd, f"{a}.to_out"),
                        "pos": {
                            "pos_proj": sd.linear(f"{a}.dpb.0"),
                            **{
                                f"pos{n}": {
                                    "norm": sd.layer_norm(f"{a}.dpb.{3 * n - 2}"),
                                    "fc": sd.linear(f"{a}.dpb.{3 * n}"),
                                }
                                for n in (1, 2, 3)
                            },
                        },
                    },
                    "norm2": _channel_norm(sd, f"{f}.0"),
                    "mlp": {"fc1": _pointwise(sd, f"{f}.1"), "fc2": _pointwise(sd, f"{f}.4")},
                }
        params[f"stages_{i}"] = stage
    head = sd.linear("to_logits.1")
    if config.num_labels > 0:
        params["head"] = head
    sd.finish("vit-pytorch CrossFormer")
    return params


# -- the original release -------------------------------------------------------------------------------


def _original_table(config: CrossFormerConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """Every learned tensor of the original layout: (checkpoint prefix, our module path, kind)."""
    arch = config.architecture()
    qkv_bias = True if config.qkv_bias is None else bool(config.qkv_bias)
    table: list[tuple[str, tuple[str, ...], str]] = []
    for i in range(len(arch["depth"])):
        embed = ("stages_" + str(i), "embed")
        src = "patch_embed.projs" if i == 0 else f"layers.{i - 1}.downsample.reductions"
        for j in range(len(arch["cross_embed_kernel_sizes"][i])):
            table.append((f"{src}.{j}", (*embed, f"conv_{j}"), "conv"))
        table.append(("patch_embed.norm" if i == 0 else f"layers.{i - 1}.downsample.norm", (*embed, "norm"), "norm"))
        for j in range(len(stage_windows("original", arch["depth"][i], 1, 1))):
            src, dst = f"layers.{i}.blocks.{j}", (f"stages_{i}", f"blocks_{j}")
            table += [
                (f"{src}.norm1", (*dst, "norm1"), "norm"),
                (f"{src}.attn.qkv", (*dst, "attn", "qkv"), "linear" if qkv_bias else "linear_no_bias"),
                (f"{src}.attn.proj", (*dst, "attn", "proj"), "linear"),
                (f"{src}.attn.pos.pos_proj", (*dst, "attn", "pos", "pos_proj"), "linear"),
                (f"{src}.norm2", (*dst, "norm2"), "norm"),
                (f"{src}.mlp.fc1", (*dst, "mlp", "fc1"), "linear"),
                (f"{src}.mlp.fc2", (*dst, "mlp", "fc2"), "linear"),
            ]
            for n in (1, 2, 3):
                table.append((f"{src}.attn.pos.pos{n}.0", (*dst, "attn", "pos", f"pos{n}", "norm"), "norm"))
                table.append((f"{src}.attn.pos.pos{n}.2", (*dst, "attn", "pos", f"pos{n}", "fc"), "linear"))
    table.append(("norm", ("norm",), "norm"))
    if config.num_labels > 0:
        table.append(("head", ("head",), "linear"))
    return table


_TENSORS = {
    "conv": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "linear_no_bias": ("weight",),
    "norm": ("weight", "bias"),
}


def convert_original(state_dict: Mapping[str, np.ndarray], config: CrossFormerConfig) -> dict:
    """State dict of the original release (numpy) -> the params of ``hf_vit_flax.CrossFormer`` (unchecked).

    The non-learned buffers ``attn.biases`` and ``attn.relative_position_index`` are dropped by name;
    a missing key or any other key left over is an error that names them.
    """
    if config.style != "original":
        raise ValueError(
            f"weights of the original CrossFormer need a config with style='original', got {config.style!r}"
        )
    table = _original_table(config)
    needed = {f"{src}.{t}" for src, _, kind in table for t in _TENSORS[kind]}
    sd = StateDictReader(state_dict, ignore=ORIGINAL_BUFFERS)
    present = set(sd.remaining)
    missing, unexpected = sorted(needed - present), sorted(present - needed)
    if config.num_labels <= 0:  # a classifier checkpoint loaded as a backbone: the head is not used
        unexpected = [k for k in unexpected if k not in ("head.weight", "head.bias")]
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not match this CrossFormer config (depths {list(per_stage(config.depth, 'depth'))}, "
            f"dims {list(per_stage(config.dim, 'dim'))}): missing keys {_abbrev(missing)}; unexpected keys "
            f"{_abbrev(unexpected)}. Pass the config the checkpoint was trained with (e.g. its preset)."
        )
    params: dict[str, Any] = {}
    for src, dst, kind in table:
        if kind == "conv":
            value = sd.conv(src)
        elif kind == "norm":
            value = sd.layer_norm(src)
        else:
            value = sd.linear(src, bias=kind == "linear")
        node = params
        for name in dst[:-1]:
            node = node.setdefault(name, {})
        node[dst[-1]] = value
    return params


def _abbrev(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


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
        config = CrossFormerConfig.from_original(config)
    elif not isinstance(config, CrossFormerConfig):
        raise TypeError(f"config must be a CrossFormerConfig, a preset name or constructor kwargs, got {config!r}")
    params = convert_original(load_state_dict(path_or_state_dict), config)
    model_class = FlaxCrossFormerForImageClassification if config.num_labels > 0 else FlaxCrossFormerModel
    return model_class.from_params(config, params)
