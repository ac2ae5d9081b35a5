"""Configuration of the CrossFormer family ("CrossFormer: A Versatile Vision Transformer Hinging on
Cross-scale Attention", Wang et al., arXiv 2108.00154). Imports no jax.

One family, two styles of the same architecture:

* ``style="vit_pytorch"`` (default): lucidrains' vit-pytorch ``vit_pytorch.crossformer.CrossFormer``,
  the seed API. ``depth`` counts (short, long) attention pairs.
* ``style="original"``: the authors' release (cheerss/CrossFormer, v1), whose checkpoints
  CrossFormer-T/S/B/L are published. ``depth`` counts blocks (even: short, odd: long distance).

The image-size rule both share (what sizes the windows can tile) lives here, as plain arithmetic,
so that the config can validate ``image_size`` and the linen module can say which sizes work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...configuration_utils import (
    VisionTransformerConfig,
    as_json_size,
    block_params,
    boolean,
    check_positive,
    dense_params,
    norm_params,
    optional,
    positive_float,
    positive_int,
    positive_size,
    rate,
    to_pair,
)
from ...variants import read_variant, variant_names

NUM_STAGES = 4
STYLES = ("vit_pytorch", "original")
# ImageNet normalisation (timm's IMAGENET_DEFAULT_MEAN / STD), used to train the released models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- per-stage values -------------------------------------------------------------------------------


def per_stage(value: Any, name: str) -> tuple:
    """``7 -> (7, 7, 7, 7)``; a sequence must have one entry per stage (vit-pytorch's ``cast_tuple(val, 4)``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f"{name} needs one value per stage ({NUM_STAGES}), got {list(value)!r}")
        return tuple(value)
    return (value,) * NUM_STAGES


def stage_values(check):
    """A field check for a per-stage field: ``check`` on the int, or on each of the 4 values (``name[i]``)."""

    def check_stages(name: str, value) -> None:
        if not isinstance(value, (list, tuple)):
            check(name, value)
            return
        for i, v in enumerate(per_stage(value, name)):
            check(f"{name}[{i}]", v)

    return check_stages


def kernel_sizes_per_stage(value: Any) -> tuple[tuple[int, ...], ...]:
    """``cross_embed_kernel_sizes``: one non-empty sequence of kernel sizes per stage."""
    stages = per_stage(value, "cross_embed_kernel_sizes")
    out = []
    for stage in stages:
        if not isinstance(stage, (list, tuple)) or not stage:
            raise ValueError(
                f"cross_embed_kernel_sizes needs one sequence of kernel sizes per stage, e.g. "
                f"((4, 8, 16, 32), (2, 4), (2, 4), (2, 4)), got {value!r}"
            )
        for j, kernel in enumerate(stage):
            positive_int(f"cross_embed_kernel_sizes[{len(out)}][{j}]", kernel)
        out.append(tuple(stage))
    return tuple(out)


def cross_embed_dims(dim_out: int, num_scales: int) -> list[int]:
    """Output channels of each kernel of a cross-scale embedding, smallest kernel first.

    vit-pytorch: ``dim_out / 2, / 4, ...`` and the remainder for the largest kernel; the original
    (``embed_dim // 2, // 4, // 8, // 8``) is the same whenever its split adds up to ``dim_out``.
    """
    dims = [int(dim_out / (2**i)) for i in range(1, num_scales)]
    return [*dims, dim_out - sum(dims)]


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a PyTorch Conv2d with CrossFormer's symmetric padding ``(kernel - stride) // 2``."""
    padding = (kernel - stride) // 2
    return (size + 2 * padding - kernel) // stride + 1


def stage_blocks(style: str, depth: int) -> int:
    """The number of blocks of a stage: ``depth`` (short, long) pairs in vit-pytorch, ``depth`` blocks in the original."""
    return 2 * depth if style == "vit_pytorch" else depth


def stage_windows(style: str, depth: int, local_window: int, global_window: int) -> list[tuple[str, int]]:
    """The attention of each block of a stage: ``('short' | 'long', window)``, in order."""
    return [
        ("short", local_window) if j % 2 == 0 else ("long", global_window) for j in range(stage_blocks(style, depth))
    ]


def distinct_windows(style: str, depth: int, local_window: int, global_window: int) -> list[tuple[str, int]]:
    """The kinds of attention a stage uses (at most two: its first blocks'), whatever its depth."""
    return stage_windows(style, min(depth, 2), local_window, global_window)[:2]


def block_grouping(style: str, kind: str, window: int, height: int, width: int) -> tuple[str, int]:
    """How a block groups a ``height x width`` map: ``('short' | 'long', window)``.

    The original release attends over the whole map, as one short-distance group of side
    ``min(height, width)``, once the map is no larger than the group size (``min(H, W) <= G``).
    vit-pytorch always uses the configured windows.
    """
    if style == "original" and min(height, width) <= window:
        return "short", min(height, width)
    return kind, window


def stage_sizes(image_size: tuple[int, int], kernel_sizes: Sequence[Sequence[int]], strides: Sequence[int]):
    """The feature-map size after each stage's cross-scale embedding; ValueError when the convolutions disagree."""
    height, width = image_size
    sizes = []
    for stage, (kernels, stride) in enumerate(zip(kernel_sizes, strides, strict=True)):
        outs = {(conv_output_size(height, k, stride), conv_output_size(width, k, stride)) for k in kernels}
        if len(outs) != 1:
            raise ValueError(
                f"the stage-{stage + 1} embedding convolutions (kernels {tuple(kernels)}, stride {stride}) give "
                f"maps of different sizes {sorted(outs)} on a {height}x{width} input"
            )
        height, width = outs.pop()
        if height <= 0 or width <= 0:
            raise ValueError(f"the image is too small: the stage-{stage + 1} feature map would be {height}x{width}")
        sizes.append((height, width))
    return sizes


def image_size_problem(
    image_size: tuple[int, int],
    *,
    style: str,
    depth,
    local_window_size,
    global_window_size,
    cross_embed_kernel_sizes,
    cross_embed_strides,
) -> str | None:
    """Why a CrossFormer cannot take images of ``image_size`` (None when it can)."""
    try:
        sizes = stage_sizes(image_size, cross_embed_kernel_sizes, cross_embed_strides)
    except ValueError as err:
        return str(err)
    for stage, (height, width) in enumerate(sizes):
        for kind, window in distinct_windows(style, depth[stage], local_window_size[stage], global_window_size[stage]):
            kind, window = block_grouping(style, kind, window, height, width)
            if height % window or width % window:
                which = "local (short-distance)" if kind == "short" else "global (long-distance)"
                return (
                    f"the stage-{stage + 1} feature map would be {height}x{width}, which the {which} "
                    f"window {window} does not divide"
                )
    return None


def size_multiple(*, style: str, depth, local_window_size, global_window_size, cross_embed_strides) -> int:
    """The image side whose multiples every stage can tile: lcm over stages of (stride product x windows)."""
    multiple, stride_product = 1, 1
    for stage in range(NUM_STAGES):
        stride_product *= cross_embed_strides[stage]
        windows = {
            w for _, w in distinct_windows(style, depth[stage], local_window_size[stage], global_window_size[stage])
        }
        multiple = math.lcm(multiple, stride_product * math.lcm(*windows))
    return multiple


def check_image_size(image_size: tuple[int, int], **arch) -> None:
    """ValueError naming the problem and the sizes that work; ``arch`` are the per-stage architecture values."""
    problem = image_size_problem(image_size, **arch)
    if problem is None:
        return
    multiple = size_multiple(**{k: v for k, v in arch.items() if k != "cross_embed_kernel_sizes"})
    if image_size_problem((multiple, multiple), **arch) is None:
        hint = (
            f"Image sides that are multiples of {multiple} work ({multiple}, {2 * multiple}, {3 * multiple}, ...): "
            f"the stride product up to each stage times the windows of that stage."
        )
    else:
        working = [s for s in range(1, 8 * multiple + 1) if image_size_problem((s, s), **arch) is None][:5]
        hint = f"Image sides that work: {working}." if working else "No square image size up to 8x that works."
    raise ValueError(f"CrossFormer cannot take {image_size[0]}x{image_size[1]} images: {problem}. {hint}")


class CrossFormerConfig(VisionTransformerConfig):
    """Configuration of :class:`hf_vit_flax.CrossFormer` and its Hugging Face wrappers.

    Takes vit-pytorch's keyword names; transformers' standard names are aliases (``hidden_sizes`` =
    ``dim``, ``depths`` = ``depth``, ``num_heads`` = ``heads``, ``num_channels`` = ``channels``,
    ``attention_probs_dropout_prob`` = ``attn_dropout``, ``hidden_dropout_prob`` = ``ff_dropout``,
    ``num_labels`` = ``num_classes``). The defaults are vit-pytorch's. Per-stage values are an int
    (the same for the 4 stages) or a sequence of 4.

    Args:
        image_size: int or (height, width) the HF wrappers take. Each stage's map must be tiled by its
            windows: at the defaults, multiples of 224 (the error says which sizes work).
        dim: channels of each stage.
        depth: per stage, the number of (short, long) attention pairs (``style="vit_pytorch"``) or
            of blocks, alternating short and long distance (``style="original"``, the release's ``depths``).
        global_window_size: per stage, the side of a long-distance group in tokens (the tokens are
            sampled with interval ``map side / window``).
        local_window_size: per stage, the side of a short-distance (contiguous) window.
        cross_embed_kernel_sizes: per stage, the kernels of the cross-scale embedding (sorted
            ascending; each kernel gets half the channels of the previous one, the last two equal).
        cross_embed_strides: per stage, the stride of those convolutions.
        num_classes: size of the classification head.
        attn_dropout: dropout on attention probabilities.
        ff_dropout: dropout in the feed-forward layers (the original also uses it after the
            embedding and the attention projection: its ``drop_rate``).
        channels: input channels.
        style: ``"vit_pytorch"`` (no qkv bias, one position bias shared by the heads, no final
            norm) or ``"original"`` (the v1 release: qkv bias, a per-head dynamic position bias MLP
            of width ``dim // 16``, LayerNorm after the first embedding and before each patch
            merging, a whole-map group once a map is no larger than the group size, final
            LayerNorm before the token mean, stochastic depth).
        heads: per stage; None: ``dim // dim_head`` heads of width ``dim_head`` (vit-pytorch).
            Given: heads of width ``dim // heads`` (the release's ``num_heads``).
        dim_head: head width when ``heads`` is None (vit-pytorch: 32).
        mlp_ratio: feed-forward hidden width / dim (4 in both).
        qkv_bias: bias of the qkv projection; None: the style's (False vit_pytorch, True original).
        drop_path_rate: stochastic depth, linear over all blocks (original style only).
        layer_norm_eps: LayerNorm epsilon (1e-5 in both).
    """

    model_type = "crossformer_flax"
    family_name = "CrossFormer"
    # style, cross_embed_kernel_sizes and the rules between fields: validate_architecture and check_image_size.
    field_checks = {
        "image_size": positive_size,
        **dict.fromkeys(
            ("dim", "depth", "global_window_size", "local_window_size", "cross_embed_strides"),
            stage_values(positive_int),
        ),
        "heads": optional(stage_values(positive_int)),
        **dict.fromkeys(("dim_head", "channels"), positive_int),
        **dict.fromkeys(("attn_dropout", "ff_dropout", "drop_path_rate"), rate),
        **dict.fromkeys(("mlp_ratio", "layer_norm_eps"), positive_float),
        "qkv_bias": optional(boolean),
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
        style: str = "vit_pytorch",
        heads: int | Sequence[int] | None = None,
        dim_head: int = 32,
        mlp_ratio: float = 4.0,
        qkv_bias: bool | None = None,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        self.image_size = as_json_size(image_size)
        self.dim = _json(dim)
        self.depth = _json(depth)
        self.global_window_size = _json(global_window_size)
        self.local_window_size = _json(local_window_size)
        self.cross_embed_kernel_sizes = _json(cross_embed_kernel_sizes)
        self.cross_embed_strides = _json(cross_embed_strides)
        self.attn_dropout = attn_dropout
        self.ff_dropout = ff_dropout
        self.channels = channels
        self.style = style
        self.heads = _json(heads)
        self.dim_head = dim_head
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        super().__init__(num_classes=num_classes, **kwargs)

    # -- the architecture as the module takes it --------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        """Per-stage tuples (validated shapes) of the values the image-size rule depends on."""
        return dict(
            style=self.style,
            depth=per_stage(self.depth, "depth"),
            local_window_size=per_stage(self.local_window_size, "local_window_size"),
            global_window_size=per_stage(self.global_window_size, "global_window_size"),
            cross_embed_kernel_sizes=kernel_sizes_per_stage(self.cross_embed_kernel_sizes),
            cross_embed_strides=per_stage(self.cross_embed_strides, "cross_embed_strides"),
        )

    def check_architecture(self) -> None:
        validate_architecture(
            style=self.style,
            dim=self.dim,
            depth=self.depth,
            global_window_size=self.global_window_size,
            local_window_size=self.local_window_size,
            cross_embed_kernel_sizes=self.cross_embed_kernel_sizes,
            cross_embed_strides=self.cross_embed_strides,
            channels=self.channels,
            heads=self.heads,
            dim_head=self.dim_head,
            mlp_ratio=self.mlp_ratio,
            layer_norm_eps=self.layer_norm_eps,
        )
        check_image_size(to_pair(self.image_size), **self.architecture())

    def num_layers(self) -> int:
        return sum(stage_blocks(self.style, depth) for depth in per_stage(self.depth, "depth"))

    def estimate_num_parameters(self) -> int:
        arch, dims, original = self.architecture(), per_stage(self.dim, "dim"), self.style == "original"
        qkv_bias = original if self.qkv_bias is None else self.qkv_bias
        total, dim_in = 0, self.channels
        for stage, (dim, kernels) in enumerate(zip(dims, arch["cross_embed_kernel_sizes"], strict=True)):
            # One convolution per kernel size; the original normalises after the first, before the others.
            outs = cross_embed_dims(dim, len(kernels))
            embed = sum(dense_params(k * k * dim_in, out) for k, out in zip(sorted(kernels), outs, strict=True))
            embed += norm_params(dim if stage == 0 else dim_in) if original else 0
            if self.heads is None:
                heads, dim_head = dim // self.dim_head, self.dim_head
            else:
                heads = per_stage(self.heads, "heads")[stage]
                dim_head = dim // heads
            # The dynamic position bias: Linear(2, width), three [LayerNorm, ReLU, Linear].
            width, bias_out = (dim // 16, heads) if original else (dim // 4, 1)
            position_bias = dense_params(2, width) + 2 * (norm_params(width) + dense_params(width, width))
            position_bias += norm_params(width) + dense_params(width, bias_out)
            block = block_params(dim, heads, dim_head, int(dim * self.mlp_ratio), qkv_bias=qkv_bias) + position_bias
            total += embed + stage_blocks(self.style, arch["depth"][stage]) * block
            dim_in = dim
        total += norm_params(dims[-1]) if original else 0
        return total + (dense_params(dims[-1], self.num_labels) if self.num_labels > 0 else 0)

    def to_module_kwargs(self) -> dict[str, Any]:
        arch = self.architecture()
        return dict(
            dim=per_stage(self.dim, "dim"),
            depth=arch["depth"],
            global_window_size=arch["global_window_size"],
            local_window_size=arch["local_window_size"],
            cross_embed_kernel_sizes=arch["cross_embed_kernel_sizes"],
            cross_embed_strides=arch["cross_embed_strides"],
            num_classes=self.num_labels,
            attn_dropout=self.attn_dropout,
            ff_dropout=self.ff_dropout,
            channels=self.channels,
            style=self.style,
            heads=per_stage(self.heads, "heads") if self.heads is not None else None,
            dim_head=self.dim_head,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            drop_path_rate=self.drop_path_rate,
            layer_norm_eps=self.layer_norm_eps,
        )

    # -- the original release ---------------------------------------------------------------------
    @classmethod
    def from_original(cls, kwargs: Mapping[str, Any], **overrides) -> CrossFormerConfig:
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
        return cls(**values)

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


def validate_architecture(
    *,
    style,
    dim,
    depth,
    global_window_size,
    local_window_size,
    cross_embed_kernel_sizes,
    cross_embed_strides,
    channels,
    heads,
    dim_head,
    mlp_ratio,
    layer_norm_eps,
) -> None:
    """ValueError, naming the problem and the fix, for hyper-parameters the model cannot take (shared
    by the config and the linen module)."""
    if style not in STYLES:
        raise ValueError(
            f"style must be one of {STYLES} (vit-pytorch's CrossFormer or the original release), got {style!r}"
        )
    dims = per_stage(dim, "dim")
    check_positive(channels=channels, dim_head=dim_head, **{f"dim[{i}]": d for i, d in enumerate(dims)})
    for name, value in (
        ("depth", depth),
        ("global_window_size", global_window_size),
        ("local_window_size", local_window_size),
        ("cross_embed_strides", cross_embed_strides),
    ):
        check_positive(**{f"{name}[{i}]": v for i, v in enumerate(per_stage(value, name))})
    strides = per_stage(cross_embed_strides, "cross_embed_strides")
    for stage, (kernels, stride) in enumerate(
        zip(kernel_sizes_per_stage(cross_embed_kernel_sizes), strides, strict=True)
    ):
        if min(kernels) < stride:
            raise ValueError(
                f"stage {stage + 1}: kernel {min(kernels)} is smaller than the stride {stride} "
                f"(the padding (kernel - stride) // 2 would be negative)"
            )
        if style == "original" and list(kernels) != sorted(kernels):
            raise ValueError(
                f"stage {stage + 1}: the original release takes its kernels in ascending order "
                f"(its channel split follows the order), got {list(kernels)}"
            )
        if min(cross_embed_dims(dims[stage], len(kernels))) <= 0:
            raise ValueError(f"stage {stage + 1}: dim {dims[stage]} is too small to split over {len(kernels)} kernels")
    if heads is None:
        for stage, d in enumerate(dims):
            if d < dim_head:
                raise ValueError(
                    f"stage {stage + 1}: dim {d} is smaller than dim_head {dim_head}, which gives "
                    f"dim // dim_head = 0 heads; use a larger dim or a smaller dim_head"
                )
    else:
        for stage, (d, h) in enumerate(zip(dims, per_stage(heads, "heads"), strict=True)):
            check_positive(**{f"heads[{stage}]": h})
            if d % h:
                raise ValueError(f"stage {stage + 1}: dim {d} is not divisible by heads {h}")
    if float(mlp_ratio) <= 0 or float(layer_norm_eps) <= 0:
        raise ValueError(f"mlp_ratio and layer_norm_eps must be positive, got {mlp_ratio}, {layer_norm_eps}")
    for stage, d in enumerate(dims):
        if int(d * mlp_ratio) < 1:
            raise ValueError(
                f"stage {stage + 1}: mlp_ratio {mlp_ratio} gives dim {d} a feed-forward width of 0; use a larger mlp_ratio"
            )


def _json(value):
    """Tuples (nested ones included) as lists, which is what a config.json holds."""
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value
