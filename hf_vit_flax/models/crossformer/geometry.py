"""CrossFormer's geometry: the stages, their feature-map sizes, and the windows each block groups tokens by.

Plain arithmetic (no jax): the config checks an ``image_size`` with it, the linen module builds its blocks
and checks its input with it, and the converters count blocks with it. ``depth`` here always counts
blocks (a block: one attention, short or long distance, and its feed-forward layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...configuration_utils import positive_int

NUM_STAGES = 4


def per_stage(value: Any, name: str) -> tuple:
    """``7 -> (7, 7, 7, 7)``; a sequence must have one entry per stage (vit-pytorch's ``cast_tuple(val, 4)``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f"{name} needs one value per stage ({NUM_STAGES}), got {list(value)!r}")
        return tuple(value)
    return (value,) * NUM_STAGES


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


def group_of(kind: str, window: int, height: int, width: int, whole_map_group: bool) -> tuple[str, int]:
    """How a block groups a ``height x width`` map: ``('short' | 'long', window)``.

    With ``whole_map_group`` (the original release) a map no larger than the group (``min(H, W) <= window``)
    is attended as one short-distance group of side ``min(H, W)``; otherwise the block's own grouping.
    """
    if whole_map_group and min(height, width) <= window:
        return "short", min(height, width)
    return kind, window


@dataclass(frozen=True)
class Geometry:
    """The stages of a CrossFormer as far as image sizes are concerned (every field per stage).

    Blocks alternate short-distance attention (contiguous ``local_window_size`` windows) and long-distance
    attention (``global_window_size`` groups of tokens sampled at an interval), starting short.
    ``whole_map_group``: see :func:`group_of`.
    """

    depth: tuple[int, ...]
    local_window_size: tuple[int, ...]
    global_window_size: tuple[int, ...]
    cross_embed_kernel_sizes: tuple[tuple[int, ...], ...]
    cross_embed_strides: tuple[int, ...]
    whole_map_group: bool = False

    @classmethod
    def of(cls, options: Any) -> Geometry:
        """The geometry of a module's (or expanded options') fields of the same names."""
        get = options.get if isinstance(options, dict) else lambda name: getattr(options, name)
        return cls(
            depth=per_stage(get("depth"), "depth"),
            local_window_size=per_stage(get("local_window_size"), "local_window_size"),
            global_window_size=per_stage(get("global_window_size"), "global_window_size"),
            cross_embed_kernel_sizes=kernel_sizes_per_stage(get("cross_embed_kernel_sizes")),
            cross_embed_strides=per_stage(get("cross_embed_strides"), "cross_embed_strides"),
            whole_map_group=bool(get("whole_map_group")),
        )

    def stage_windows(self, stage: int, blocks: int | None = None) -> list[tuple[str, int]]:
        """The attention of each block of ``stage`` (of its first ``blocks``): ``('short' | 'long', window)``."""
        local, global_ = self.local_window_size[stage], self.global_window_size[stage]
        count = self.depth[stage] if blocks is None else min(blocks, self.depth[stage])
        return [("short", local) if j % 2 == 0 else ("long", global_) for j in range(count)]

    def distinct_windows(self, stage: int) -> list[tuple[str, int]]:
        """The kinds of attention a stage uses (at most two: its first blocks'), whatever its depth."""
        return self.stage_windows(stage, blocks=2)

    def stage_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The feature-map size after each stage's cross-scale embedding; ValueError when the convolutions disagree."""
        height, width = image_size
        sizes = []
        for stage, (kernels, stride) in enumerate(
            zip(self.cross_embed_kernel_sizes, self.cross_embed_strides, strict=True)
        ):
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

    def image_size_problem(self, image_size: tuple[int, int]) -> str | None:
        """Why this CrossFormer cannot take images of ``image_size`` (None when it can)."""
        try:
            sizes = self.stage_sizes(image_size)
        except ValueError as err:
            return str(err)
        for stage, (height, width) in enumerate(sizes):
            for kind, window in self.distinct_windows(stage):
                kind, window = group_of(kind, window, height, width, self.whole_map_group)
                if height % window or width % window:
                    which = "local (short-distance)" if kind == "short" else "global (long-distance)"
                    return (
                        f"the stage-{stage + 1} feature map would be {height}x{width}, which the {which} "
                        f"window {window} does not divide"
                    )
        return None

    def size_multiple(self) -> int:
        """The image side whose multiples every stage can tile: lcm over stages of (stride product x windows)."""
        multiple, stride_product = 1, 1
        for stage in range(NUM_STAGES):
            stride_product *= self.cross_embed_strides[stage]
            windows = {w for _, w in self.distinct_windows(stage)}
            multiple = math.lcm(multiple, stride_product * math.lcm(*windows))
        return multiple

    def check_image_size(self, image_size: Sequence[int]) -> None:
        """ValueError naming the problem and the image sizes that work."""
        image_size = (int(image_size[0]), int(image_size[1]))
        problem = self.image_size_problem(image_size)
        if problem is None:
            return
        multiple = self.size_multiple()
        if self.image_size_problem((multiple, multiple)) is None:
            hint = (
                f"Image sides that are multiples of {multiple} work ({multiple}, {2 * multiple}, {3 * multiple}, "
                f"...): the stride product up to each stage times the windows of that stage."
            )
        else:
            working = [s for s in range(1, 8 * multiple + 1) if self.image_size_problem((s, s)) is None][:5]
            hint = f"Image sides that work: {working}." if working else "No square image size up to 8x that works."
        raise ValueError(f"CrossFormer cannot take {image_size[0]}x{image_size[1]} images: {problem}. {hint}")
