"""Configuration of the CrossFormer family ("CrossFormer: A Versatile Vision Transformer Hinging on
Cross-scale Attention", Wang et al., arXiv 2108.00154). Imports no jax.

The model's differences between the two references are named options (``qkv_bias``, ``final_norm``,
``position_bias_per_head`` ...). ``style`` is a preset, a name for a set of those options and for how the
other arguments read, expanded once by :func:`expand_options`:

* ``style="vit_pytorch"`` (default): lucidrains' vit-pytorch ``vit_pytorch.crossformer.CrossFormer``, the
  seed API. ``depth`` counts its (short, long) attention pairs, two blocks each.
* ``style="original"``: the authors' release (cheerss/CrossFormer, v1), whose checkpoints
  CrossFormer-T/S/B/L are published. ``depth`` counts blocks (even: short, odd: long distance).
* ``style=None``: no preset; every option is given, ``depth`` counts blocks.

The stage and window arithmetic lives in ``geometry.py``; the original release's constructor arguments
are read in ``convert_crossformer.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...configuration_utils import (
    VisionTransformerConfig,
    block_params,
    boolean,
    check_positive,
    dense_params,
    norm_params,
    optional,
    positive_float,
    positive_int,
    presets,
    rate,
    to_pair,
)
from ...variants import read_variant, variant_names
from .geometry import Geometry, cross_embed_dims, kernel_sizes_per_stage, per_stage


@dataclass(frozen=True)
class Preset:
    """What a ``style`` name stands for: how its arguments read and the options it fills in (an option
    given explicitly wins)."""

    blocks_per_depth: int  # vit-pytorch's depth counts (short, long) pairs: two blocks each
    options: Mapping[str, Any] = field(default_factory=dict)
    # The release's drop_rate (our ff_dropout) also drops after the first embedding and each attention.
    ff_dropout_everywhere: bool = False
    # The release splits the channels in the order its kernels are given; ours sorts them (as vit-pytorch).
    ascending_kernels: bool = False


# The options each preset fills in: vit-pytorch's value / the original release's.
PRESET_VALUES = presets(
    ("vit_pytorch", "original"),
    qkv_bias=(False, True),
    position_bias_reduction=(4, 16),
    position_bias_per_head=(False, True),
    position_bias_wide_table=(True, False),
    stem_norm=(False, True),
    merge_norm=(False, True),
    final_norm=(False, True),
    whole_map_group=(False, True),
)
PRESETS = {
    "vit_pytorch": Preset(blocks_per_depth=2, options=PRESET_VALUES["vit_pytorch"]),
    "original": Preset(
        blocks_per_depth=1, options=PRESET_VALUES["original"], ff_dropout_everywhere=True, ascending_kernels=True
    ),
}
STYLES = tuple(PRESETS)
# The options a preset fills in when they are None; with style=None each must be given.
PRESET_OPTIONS = (*PRESETS["original"].options, "proj_dropout", "embed_dropout")
PER_STAGE_FIELDS = ("dim", "local_window_size", "global_window_size", "cross_embed_strides")


def stage_values(check):
    """A field check for a per-stage field: ``check`` on the int, or on each of the 4 values (``name[i]``)."""

    def check_stages(name: str, value) -> None:
        if not isinstance(value, (list, tuple)):
            check(name, value)
            return
        for i, v in enumerate(per_stage(value, name)):
            check(f"{name}[{i}]", v)

    return check_stages


class CrossFormerConfig(VisionTransformerConfig):
    """Configuration of :class:`hf_vit_flax.CrossFormer` and its Hugging Face wrappers.

    Takes vit-pytorch's keyword names; transformers' standard names are aliases (``hidden_sizes`` =
    ``dim``, ``depths`` = ``depth``, ``num_heads`` = ``heads``, ``num_channels`` = ``channels``,
    ``attention_probs_dropout_prob`` = ``attn_dropout``, ``hidden_dropout_prob`` = ``ff_dropout``,
    ``num_labels`` = ``num_classes``). The defaults are vit-pytorch's. Per-stage values are an int
    (the same for the 4 stages) or a sequence of 4. The config holds the values as given (as its
    config.json does); :func:`expand_options` gives the options the module is built with.

    Args:
        image_size: int or (height, width) the HF wrappers take. Each stage's map must be tiled by its
            windows: at the defaults, multiples of 224 (the error says which sizes work).
        dim: channels of each stage.
        depth: per stage, in the preset's words: (short, long) attention pairs (``"vit_pytorch"``) or
            blocks, alternating short and long distance (``"original"``, the release's ``depths``, and
            ``style=None``).
        global_window_size: per stage, the side of a long-distance group in tokens (the tokens are
            sampled with interval ``map side / window``).
        local_window_size: per stage, the side of a short-distance (contiguous) window.
        cross_embed_kernel_sizes: per stage, the kernels of the cross-scale embedding (each kernel
            gets half the channels of the previous one, smallest first, the last two equal).
        cross_embed_strides: per stage, the stride of those convolutions.
        num_classes: size of the classification head.
        attn_dropout: dropout on attention probabilities.
        ff_dropout: dropout in the feed-forward layers.
        channels: input channels.
        style: the preset, ``"vit_pytorch"``, ``"original"`` or None (see the module docstring).
        heads: per stage; None: ``dim // dim_head`` heads of width ``dim_head`` (vit-pytorch). Given:
            heads of width ``dim // heads`` (the release's ``num_heads``; ``dim_head`` is then not used,
            except with ``style=None``, where both are given and used as they are).
        dim_head: head width when ``heads`` is None (vit-pytorch: 32).
        mlp_ratio: feed-forward hidden width / dim (4 in both).
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
        layer_norm_eps: LayerNorm epsilon (1e-5 in both).

    Options (None: the preset's; vit-pytorch's value / the original's):
        qkv_bias: a bias in the qkv projection (False / True).
        position_bias_reduction: the dynamic position bias MLP is ``dim // position_bias_reduction``
            wide (4 / 16).
        position_bias_per_head: one bias per head, or one shared by the heads (False / True).
        position_bias_wide_table: evaluate the position-bias MLP on the offsets ``-w..w`` and read that
            ``(2w+1)^2`` table with the ``(2w-1)``-stride relative index, as vit-pytorch does, instead of on
            the ``(2w-1)^2`` offsets of a window (True / False).
        stem_norm: a LayerNorm after the first stage's embedding convolutions (False / True).
        merge_norm: a LayerNorm before the embedding convolutions of stages 2-4, the patch merging
            (False / True).
        final_norm: a LayerNorm over the last stage's tokens, before the mean (False / True).
        whole_map_group: a map no larger than a block's group (``min(H, W) <= window``) is attended as
            one short-distance group of the whole map (False / True).
        proj_dropout: dropout after each attention's output projection (0 / ``ff_dropout``).
        embed_dropout: dropout after the first stage's embedding (0 / ``ff_dropout``).
    """

    model_type = "crossformer_flax"
    family_name = "CrossFormer"
    # style, cross_embed_kernel_sizes and the rules between fields: expand_options and Geometry.check_image_size.
    field_checks = {
        **VisionTransformerConfig.field_checks,
        **dict.fromkeys(("dim", "depth", *PER_STAGE_FIELDS, "dim_head"), stage_values(positive_int)),
        "heads": optional(stage_values(positive_int)),
        **dict.fromkeys(("attn_dropout", "ff_dropout", "drop_path_rate"), rate),
        "mlp_ratio": positive_float,
        **dict.fromkeys(
            (
                "qkv_bias",
                "position_bias_per_head",
                "position_bias_wide_table",
                "stem_norm",
                "merge_norm",
                "final_norm",
                "whole_map_group",
            ),
            optional(boolean),
        ),
        "position_bias_reduction": optional(positive_int),
        **dict.fromkeys(("proj_dropout", "embed_dropout"), optional(rate)),
    }
    attribute_map = {
        **VisionTransformerConfig.attribute_map,
        "hidden_sizes": "dim",
        "depths": "depth",
        "num_heads": "heads",
        "attention_probs_dropout_prob": "attn_dropout",
        "hidden_dropout_prob": "ff_dropout",
    }

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        dim: int | Sequence[int] = (64, 128, 256, 512),
        depth: int | Sequence[int] = (2, 2, 8, 2),
        global_window_size: int | Sequence[int] = (8, 4, 2, 1),
        local_window_size: int | Sequence[int] = 7,
        cross_embed_kernel_sizes: Sequence[Sequence[int]] = ((4, 8, 16, 32), (2, 4), (2, 4), (2, 4)),
        cross_embed_strides: int | Sequence[int] = (4, 2, 2, 2),
        num_classes: int | None = None,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        channels: int = 3,
        style: str | None = "vit_pytorch",
        heads: int | Sequence[int] | None = None,
        dim_head: int | Sequence[int] = 32,
        mlp_ratio: float = 4.0,
        qkv_bias: bool | None = None,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        position_bias_reduction: int | None = None,
        position_bias_per_head: bool | None = None,
        position_bias_wide_table: bool | None = None,
        stem_norm: bool | None = None,
        merge_norm: bool | None = None,
        final_norm: bool | None = None,
        whole_map_group: bool | None = None,
        proj_dropout: float | None = None,
        embed_dropout: float | None = None,
        **kwargs,
    ):
        self.set_options(json_lists(locals()))
        super().__init__(num_classes=num_classes, **kwargs)

    def check_architecture(self) -> None:
        Geometry.of(expand_options(self)).check_image_size(to_pair(self.image_size))

    def num_layers(self) -> int:
        return sum(expand_options(self)["depth"])

    def estimate_num_parameters(self) -> int:
        o = expand_options(self)
        total, dim_in = 0, self.channels
        for stage, (dim, kernels) in enumerate(zip(o["dim"], o["cross_embed_kernel_sizes"], strict=True)):
            # One convolution per kernel size; a LayerNorm after the first stage's, before the others'.
            outs = cross_embed_dims(dim, len(kernels))
            embed = sum(dense_params(k * k * dim_in, out) for k, out in zip(sorted(kernels), outs, strict=True))
            if o["stem_norm"] if stage == 0 else o["merge_norm"]:
                embed += norm_params(dim if stage == 0 else dim_in)
            heads, dim_head = o["heads"][stage], o["dim_head"][stage]
            # The dynamic position bias: Linear(2, width), three [LayerNorm, ReLU, Linear].
            width = dim // o["position_bias_reduction"]
            bias_out = heads if o["position_bias_per_head"] else 1
            position_bias = dense_params(2, width) + 2 * (norm_params(width) + dense_params(width, width))
            position_bias += norm_params(width) + dense_params(width, bias_out)
            mlp_dim = int(dim * self.mlp_ratio)
            block = block_params(dim, heads, dim_head, mlp_dim, qkv_bias=o["qkv_bias"]) + position_bias
            total += embed + o["depth"][stage] * block
            dim_in = dim
        total += norm_params(o["dim"][-1]) if o["final_norm"] else 0
        return total + (dense_params(o["dim"][-1], self.num_labels) if self.num_labels > 0 else 0)

    @classmethod
    def from_original(cls, kwargs: Mapping[str, Any], **overrides) -> CrossFormerConfig:
        """The config of the original release's ``CrossFormer(**kwargs)``: see
        :func:`hf_vit_flax.models.crossformer.convert_crossformer.config_from_original`."""
        from .convert_crossformer import config_from_original

        return config_from_original(kwargs, **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> CrossFormerConfig:
        """A named config from ``configs/`` (``"crossformer-t"``, ``-s``, ``-b``, ``-l``: the released models)."""
        available = variant_names("crossformer-")
        if name not in available:
            raise ValueError(f"unknown CrossFormer preset {name!r}; available: {available}")
        data = read_variant(name)
        data.pop("architectures", None)
        data.update(overrides)
        return cls.from_dict(data)


def expand_options(options: Any) -> dict[str, Any]:
    """The options a ``CrossFormer`` is built with, read off a config or a module (the same field names).

    The preset named by ``style`` is expanded here, once: ``depth`` becomes blocks, ``heads`` and
    ``dim_head`` explicit per stage, each option left None the preset's value; ``style`` is then None.
    Per-stage values become tuples of 4. Returns only the fields it sets (the others are used as given).
    ValueError, naming the problem and the fix, for options the model cannot take.
    """
    style = options.style
    if style is not None and style not in PRESETS:
        raise ValueError(
            f"style must be one of {STYLES} (vit-pytorch's CrossFormer or the original release) or None "
            f"(no preset: every option given), got {style!r}"
        )
    preset = PRESETS.get(style)
    out: dict[str, Any] = {name: per_stage(getattr(options, name), name) for name in PER_STAGE_FIELDS}
    out["cross_embed_kernel_sizes"] = kernel_sizes_per_stage(options.cross_embed_kernel_sizes)
    depth = per_stage(options.depth, "depth")
    out["depth"] = tuple(d * preset.blocks_per_depth for d in depth) if preset else depth
    out["heads"], out["dim_head"] = _heads(options, out["dim"], preset)
    for name in PRESET_OPTIONS:
        value = getattr(options, name)
        if value is None and preset is None:
            raise ValueError(
                f"{name} is None: without a preset (style=None) every option is given; set {name} or a style "
                f"({', '.join(STYLES)})"
            )
        if value is None and name in ("proj_dropout", "embed_dropout"):
            value = options.ff_dropout if preset.ff_dropout_everywhere else 0.0
        out[name] = preset.options[name] if value is None else value
    out["style"] = None
    _check(out, options, preset)
    return out


def _heads(options: Any, dims: tuple[int, ...], preset: Preset | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per stage, the number of heads and their width."""
    heads, dim_head = options.heads, options.dim_head
    if preset is None:
        if heads is None or dim_head is None:
            raise ValueError("without a preset (style=None) heads and dim_head are both given, per stage or one int")
        return per_stage(heads, "heads"), per_stage(dim_head, "dim_head")
    if heads is None:  # vit-pytorch: heads of width dim_head
        widths = per_stage(dim_head, "dim_head")
        check_positive(**{f"dim_head[{i}]": w for i, w in enumerate(widths)})
        for stage, (d, w) in enumerate(zip(dims, widths, strict=True)):
            if d < w:
                raise ValueError(
                    f"stage {stage + 1}: dim {d} is smaller than dim_head {w}, which gives "
                    f"dim // dim_head = 0 heads; use a larger dim or a smaller dim_head"
                )
        return tuple(d // w for d, w in zip(dims, widths, strict=True)), widths
    heads = per_stage(heads, "heads")  # the release: num_heads heads splitting dim
    for stage, (d, h) in enumerate(zip(dims, heads, strict=True)):
        check_positive(**{f"heads[{stage}]": h})
        if d % h:
            raise ValueError(f"stage {stage + 1}: dim {d} is not divisible by heads {h}")
    return heads, tuple(d // h for d, h in zip(dims, heads, strict=True))


def _check(out: dict[str, Any], options: Any, preset: Preset | None) -> None:
    """The rules between the expanded options."""
    dims = out["dim"]
    check_positive(channels=options.channels, **{f"dim[{i}]": d for i, d in enumerate(dims)})
    for name in ("depth", "heads", "dim_head", "global_window_size", "local_window_size", "cross_embed_strides"):
        check_positive(**{f"{name}[{i}]": v for i, v in enumerate(out[name])})
    for stage, (kernels, stride) in enumerate(
        zip(out["cross_embed_kernel_sizes"], out["cross_embed_strides"], strict=True)
    ):
        if min(kernels) < stride:
            raise ValueError(
                f"stage {stage + 1}: kernel {min(kernels)} is smaller than the stride {stride} "
                f"(the padding (kernel - stride) // 2 would be negative)"
            )
        if preset is not None and preset.ascending_kernels and list(kernels) != sorted(kernels):
            raise ValueError(
                f"stage {stage + 1}: the original release takes its kernels in ascending order "
                f"(its channel split follows the order), got {list(kernels)}"
            )
        if min(cross_embed_dims(dims[stage], len(kernels))) <= 0:
            raise ValueError(f"stage {stage + 1}: dim {dims[stage]} is too small to split over {len(kernels)} kernels")
    mlp_ratio, layer_norm_eps = options.mlp_ratio, options.layer_norm_eps
    if float(mlp_ratio) <= 0 or float(layer_norm_eps) <= 0:
        raise ValueError(f"mlp_ratio and layer_norm_eps must be positive, got {mlp_ratio}, {layer_norm_eps}")
    for stage, d in enumerate(dims):
        if int(d * mlp_ratio) < 1:
            raise ValueError(
                f"stage {stage + 1}: mlp_ratio {mlp_ratio} gives dim {d} a feed-forward width of 0; use a larger mlp_ratio"
            )
        if d // out["position_bias_reduction"] < 1:
            raise ValueError(
                f"stage {stage + 1}: dim {d} // position_bias_reduction {out['position_bias_reduction']} gives the "
                f"position-bias MLP a width of 0; use a smaller position_bias_reduction"
            )


def json_lists(options: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples (nested ones included) as lists, which is what a config.json holds."""

    def as_json(value):
        return [as_json(v) for v in value] if isinstance(value, (list, tuple)) else value

    return {name: as_json(value) for name, value in options.items()}
