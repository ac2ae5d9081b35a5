"""Configuration of the CrossViT family ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image
Classification", Chen et al., arXiv 2103.14899). Imports no jax.

Two reference implementations are expressed by one set of hyper-parameters and a ``style`` switch:
``'vit_pytorch'`` (lucidrains' ``vit_pytorch.cross_vit.CrossViT``) and ``'timm'`` (``timm.models.crossvit``).
"""

from __future__ import annotations

from typing import Any

from ...configuration_utils import (
    VisionTransformerConfig,
    as_json_size,
    block_params,
    boolean,
    check_positive,
    check_rate,
    dense_params,
    non_negative_int,
    norm_params,
    optional,
    positive_float,
    positive_int,
    positive_size,
    rate,
    to_pair,
)

STYLES = ("vit_pytorch", "timm")
GLOBAL_POOLS = ("token", "avg")
# timm's 'dagger' multi-convolution patch embedding exists for these patch sizes only.
MULTI_CONV_PATCH_SIZES = (12, 16)


def check_crossvit_arguments(
    *,
    image_size,
    sm_image_size,
    lg_image_size,
    sm_dim: int,
    lg_dim: int,
    sm_patch_size: int,
    lg_patch_size: int,
    sm_enc_depth: int,
    lg_enc_depth: int,
    sm_enc_heads: int,
    lg_enc_heads: int,
    sm_enc_mlp_dim: int,
    lg_enc_mlp_dim: int,
    sm_enc_dim_head: int,
    lg_enc_dim_head: int,
    cross_attn_depth: int,
    cross_attn_heads: int | None,
    cross_attn_dim_head: int | None,
    depth: int,
    dropout: float,
    emb_dropout: float,
    channels: int,
    style: str,
    multi_conv: bool,
    global_pool: str,
    drop_path_rate: float,
    **_: Any,
) -> None:
    """Raise ValueError, naming the problem and the fix, for hyper-parameters CrossViT cannot take.

    Shared by :class:`CrossViTConfig` and the linen module ``hf_vit_flax.CrossViT``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES} (the reference implementation to follow), got {style!r}")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(
            f"global_pool must be 'token' (class tokens) or 'avg' (mean of patch tokens), got {global_pool!r}"
        )
    check_positive(
        sm_dim=sm_dim,
        lg_dim=lg_dim,
        sm_patch_size=sm_patch_size,
        lg_patch_size=lg_patch_size,
        sm_enc_heads=sm_enc_heads,
        lg_enc_heads=lg_enc_heads,
        sm_enc_mlp_dim=sm_enc_mlp_dim,
        lg_enc_mlp_dim=lg_enc_mlp_dim,
        sm_enc_dim_head=sm_enc_dim_head,
        lg_enc_dim_head=lg_enc_dim_head,
        depth=depth,
        channels=channels,
    )
    check_rate(dropout=dropout, emb_dropout=emb_dropout, drop_path_rate=drop_path_rate)
    # vit-pytorch allows empty encoders and no cross attention; timm always has at least one of each.
    least = 1 if style == "timm" else 0
    for name, value in (
        ("sm_enc_depth", sm_enc_depth),
        ("lg_enc_depth", lg_enc_depth),
        ("cross_attn_depth", cross_attn_depth),
    ):
        if int(value) < least:
            raise ValueError(f"{name} must be an integer >= {least} with style={style!r}, got {value}")
    if style == "vit_pytorch":
        if cross_attn_heads is None or cross_attn_dim_head is None:
            raise ValueError("style='vit_pytorch' needs cross_attn_heads and cross_attn_dim_head (e.g. 8 and 64)")
        check_positive(cross_attn_heads=cross_attn_heads, cross_attn_dim_head=cross_attn_dim_head)
        if multi_conv:
            raise ValueError("multi_conv (timm's 'dagger' patch embedding) needs style='timm'")
    else:
        # timm's attention splits the width into heads: dim_head * heads must be the width.
        for branch, dim, heads, dim_head in (
            ("sm", sm_dim, sm_enc_heads, sm_enc_dim_head),
            ("lg", lg_dim, lg_enc_heads, lg_enc_dim_head),
        ):
            if heads * dim_head != dim:
                raise ValueError(
                    f"style='timm' splits the width into heads: {branch}_enc_heads * {branch}_enc_dim_head "
                    f"({heads} * {dim_head}) must equal {branch}_dim ({dim}); set {branch}_enc_dim_head={dim // heads}"
                    if dim % heads == 0
                    else f"style='timm' needs {branch}_dim ({dim}) divisible by {branch}_enc_heads ({heads})"
                )
        if multi_conv:
            for branch, patch in (("sm", sm_patch_size), ("lg", lg_patch_size)):
                if patch not in MULTI_CONV_PATCH_SIZES:
                    raise ValueError(
                        f"multi_conv (timm's 'dagger' patch embedding) exists for patch sizes "
                        f"{MULTI_CONV_PATCH_SIZES} only, got {branch}_patch_size={patch}"
                    )
    check_positive(image_size=min(to_pair(image_size)))
    for branch, size, patch in (("sm", sm_image_size, sm_patch_size), ("lg", lg_image_size, lg_patch_size)):
        height, width = to_pair(size if size is not None else image_size)
        check_positive(**{f"{branch}_image_size": min(height, width)})
        if height % patch or width % patch:
            what = f"{branch}_image_size" if size is not None else "image_size"
            raise ValueError(
                f"the {branch} branch takes {height}x{width} images ({what}), which is not divisible by "
                f"{branch}_patch_size {patch}: choose sizes that are multiples of both patch sizes"
            )


class CrossViTConfig(VisionTransformerConfig):
    """Configuration of :class:`hf_vit_flax.CrossViT` and its Hugging Face wrappers.

    Takes vit-pytorch's keyword names (``sm_*``: the small-patch branch, ``lg_*``: the large-patch
    branch); ``num_channels`` = ``channels``, ``num_labels`` = ``num_classes`` and
    ``num_hidden_layers`` = ``depth`` (the number of multi-scale blocks) are aliases. The defaults are
    vit-pytorch's, at 240x240 (a size both default patch sizes divide).

    Args:
        image_size: int or (height, width): the size of the input images.
        num_classes: size of each branch's classification head.
        sm_dim, lg_dim: widths of the two branches.
        sm_patch_size, lg_patch_size: patch sizes (square) of the two branches.
        sm_enc_depth, sm_enc_heads, sm_enc_mlp_dim, sm_enc_dim_head: per multi-scale block, the small
            branch's number of transformer blocks, heads, feed-forward width and head width
            (``lg_enc_*`` for the large branch).
        cross_attn_depth: cross-attention layers per multi-scale block.
        cross_attn_heads, cross_attn_dim_head: heads and head width of the cross attention
            (``style='vit_pytorch'``; timm's cross attention uses the heads of the branch whose width it
            runs in, so these are ``None`` there and ignored).
        depth: number of multi-scale blocks.
        dropout: dropout in attention probabilities, projections and feed-forward layers.
        emb_dropout: dropout after adding the position embeddings.
        channels: input channels.
        style: ``'vit_pytorch'`` or ``'timm'``, the reference implementation the model follows.
        sm_image_size, lg_image_size: per-branch input sizes (timm's ``img_size * img_scale``); a branch
            whose size differs from ``image_size`` gets the image resized inside the model (PyTorch's
            bicubic, or a centre crop with ``crop_scale``). ``None``: ``image_size``.
        multi_conv: timm's 'dagger' patch embedding (three convolutions; patch sizes 12 and 16).
        qkv_bias: biases in the query/key/value projections (timm's default: True).
        crop_scale: timm's option to centre-crop instead of resizing a branch's input when it is smaller.
        global_pool: ``'token'`` (class tokens) or ``'avg'`` (mean of the patch tokens) for the heads.
        layer_norm_eps: LayerNorm epsilon (vit-pytorch: PyTorch's 1e-5; timm: 1e-6).
        drop_path_rate: stochastic depth (``style='timm'``, with timm's schedule).
    """

    model_type = "crossvit_flax"
    family_name = "CrossViT"
    attribute_map = {**VisionTransformerConfig.attribute_map, "num_hidden_layers": "depth"}
    # style, global_pool and the rules between fields: check_crossvit_arguments (shared with the module).
    field_checks = {
        "image_size": positive_size,
        **dict.fromkeys(("sm_image_size", "lg_image_size"), optional(positive_size)),
        **dict.fromkeys(
            (
                "sm_dim",
                "lg_dim",
                "sm_patch_size",
                "lg_patch_size",
                "sm_enc_heads",
                "lg_enc_heads",
                "sm_enc_mlp_dim",
                "lg_enc_mlp_dim",
                "sm_enc_dim_head",
                "lg_enc_dim_head",
                "depth",
                "channels",
            ),
            positive_int,
        ),
        **dict.fromkeys(("sm_enc_depth", "lg_enc_depth", "cross_attn_depth"), non_negative_int),
        **dict.fromkeys(("cross_attn_heads", "cross_attn_dim_head"), optional(positive_int)),
        **dict.fromkeys(("dropout", "emb_dropout", "drop_path_rate"), rate),
        "layer_norm_eps": positive_float,
        **dict.fromkeys(("multi_conv", "qkv_bias", "crop_scale"), boolean),
    }

    def __init__(
        self,
        image_size: int | tuple[int, int] = 240,
        num_classes: int | None = None,
        sm_dim: int = 192,
        lg_dim: int = 384,
        sm_patch_size: int = 12,
        sm_enc_depth: int = 1,
        sm_enc_heads: int = 8,
        sm_enc_mlp_dim: int = 2048,
        sm_enc_dim_head: int = 64,
        lg_patch_size: int = 16,
        lg_enc_depth: int = 4,
        lg_enc_heads: int = 8,
        lg_enc_mlp_dim: int = 2048,
        lg_enc_dim_head: int = 64,
        cross_attn_depth: int = 2,
        cross_attn_heads: int | None = 8,
        cross_attn_dim_head: int | None = 64,
        depth: int = 3,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        channels: int = 3,
        style: str = "vit_pytorch",
        sm_image_size: int | tuple[int, int] | None = None,
        lg_image_size: int | tuple[int, int] | None = None,
        multi_conv: bool = False,
        qkv_bias: bool = False,
        crop_scale: bool = False,
        global_pool: str = "token",
        layer_norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        **kwargs,
    ):
        self.image_size = as_json_size(image_size)
        self.sm_dim = sm_dim
        self.lg_dim = lg_dim
        self.sm_patch_size = sm_patch_size
        self.sm_enc_depth = sm_enc_depth
        self.sm_enc_heads = sm_enc_heads
        self.sm_enc_mlp_dim = sm_enc_mlp_dim
        self.sm_enc_dim_head = sm_enc_dim_head
        self.lg_patch_size = lg_patch_size
        self.lg_enc_depth = lg_enc_depth
        self.lg_enc_heads = lg_enc_heads
        self.lg_enc_mlp_dim = lg_enc_mlp_dim
        self.lg_enc_dim_head = lg_enc_dim_head
        self.cross_attn_depth = cross_attn_depth
        self.cross_attn_heads = cross_attn_heads
        self.cross_attn_dim_head = cross_attn_dim_head
        self.depth = depth
        self.dropout = dropout
        self.emb_dropout = emb_dropout
        self.channels = channels
        self.style = style
        self.sm_image_size = as_json_size(sm_image_size) if sm_image_size is not None else None
        self.lg_image_size = as_json_size(lg_image_size) if lg_image_size is not None else None
        self.multi_conv = multi_conv
        self.qkv_bias = qkv_bias
        self.crop_scale = crop_scale
        self.global_pool = global_pool
        self.layer_norm_eps = layer_norm_eps
        self.drop_path_rate = drop_path_rate
        super().__init__(num_classes=num_classes, **kwargs)

    def check_architecture(self) -> None:
        check_crossvit_arguments(**self.to_module_kwargs())

    def num_layers(self) -> int:
        return self.depth * (self.sm_enc_depth + self.lg_enc_depth + 2 * self.cross_attn_depth)

    def estimate_num_parameters(self) -> int:
        timm, qkv_bias = self.style == "timm", self.qkv_bias
        branches = [
            (
                self.sm_dim,
                self.sm_patch_size,
                self.sm_image_size,
                self.sm_enc_depth,
                self.sm_enc_heads,
                self.sm_enc_dim_head,
                self.sm_enc_mlp_dim,
            ),
            (
                self.lg_dim,
                self.lg_patch_size,
                self.lg_image_size,
                self.lg_enc_depth,
                self.lg_enc_heads,
                self.lg_enc_dim_head,
                self.lg_enc_mlp_dim,
            ),
        ]

        def cross_attention(dim: int, heads: int, dim_head: int) -> int:
            """A class token attends in width ``dim``: LayerNorm, q and kv, output projection."""
            inner = heads * dim_head
            return norm_params(dim) + dense_params(dim, 3 * inner, qkv_bias) + dense_params(inner, dim)

        total = 0
        for branch, other_branch in zip(branches, branches[::-1], strict=True):
            dim, patch, size, depth, heads, dim_head, mlp_dim = branch
            other, other_heads, other_dim_head = other_branch[0], other_branch[4], other_branch[5]
            height, width = to_pair(size if size is not None else self.image_size)
            patch_dim = patch * patch * self.channels
            if timm and self.multi_conv:  # timm's 'dagger' stem: 7x7 to dim/4, 3x3 to dim/2, 3x3 to dim
                embed = dense_params(49 * self.channels, dim // 4) + dense_params(9 * (dim // 4), dim // 2)
                embed += dense_params(9 * (dim // 2), dim)
            elif timm:
                embed = dense_params(patch_dim, dim)
            else:
                embed = norm_params(patch_dim) + dense_params(patch_dim, dim) + norm_params(dim)
            tokens = (2 + (height // patch) * (width // patch)) * dim  # class token and position embeddings
            layer = depth * block_params(dim, heads, dim_head, mlp_dim, qkv_bias=qkv_bias)
            # The class token goes to the other branch's width and back around the cross attention.
            if timm:  # LayerNorm -> GELU -> Linear each way; the attention has the other branch's heads
                layer += norm_params(dim) + dense_params(dim, other) + norm_params(other) + dense_params(other, dim)
                layer += self.cross_attn_depth * cross_attention(other, other_heads, other_dim_head)
                rest = norm_params(dim) + (dense_params(dim, self.num_labels) if self.num_labels > 0 else 0)
            else:  # each encoder's final LayerNorm; per cross layer, Linear in and out when the widths differ
                projections = dense_params(dim, other) + dense_params(other, dim) if dim != other else 0
                attention = cross_attention(other, self.cross_attn_heads, self.cross_attn_dim_head)
                layer += norm_params(dim) + self.cross_attn_depth * (projections + attention)
                rest = norm_params(dim) + dense_params(dim, self.num_labels) if self.num_labels > 0 else 0
            total += embed + tokens + self.depth * layer + rest
        return total

    def to_module_kwargs(self) -> dict[str, Any]:
        def size(value):
            return to_pair(value) if value is not None else None

        return dict(
            image_size=to_pair(self.image_size),
            num_classes=self.num_labels,
            sm_dim=self.sm_dim,
            lg_dim=self.lg_dim,
            sm_patch_size=self.sm_patch_size,
            sm_enc_depth=self.sm_enc_depth,
            sm_enc_heads=self.sm_enc_heads,
            sm_enc_mlp_dim=self.sm_enc_mlp_dim,
            sm_enc_dim_head=self.sm_enc_dim_head,
            lg_patch_size=self.lg_patch_size,
            lg_enc_depth=self.lg_enc_depth,
            lg_enc_heads=self.lg_enc_heads,
            lg_enc_mlp_dim=self.lg_enc_mlp_dim,
            lg_enc_dim_head=self.lg_enc_dim_head,
            cross_attn_depth=self.cross_attn_depth,
            cross_attn_heads=self.cross_attn_heads,
            cross_attn_dim_head=self.cross_attn_dim_head,
            depth=self.depth,
            dropout=self.dropout,
            emb_dropout=self.emb_dropout,
            channels=self.channels,
            style=self.style,
            sm_image_size=size(self.sm_image_size),
            lg_image_size=size(self.lg_image_size),
            multi_conv=self.multi_conv,
            qkv_bias=self.qkv_bias,
            crop_scale=self.crop_scale,
            global_pool=self.global_pool,
            layer_norm_eps=self.layer_norm_eps,
            drop_path_rate=self.drop_path_rate,
        )
