"""Configuration of the CaiT family ("Going deeper with Image Transformers", Touvron et al., arXiv 2103.17239)."""

from __future__ import annotations

import functools
from typing import Any

from ...configuration_utils import (
    TRANSFORMER_ATTRIBUTE_MAP,
    VisionTransformerConfig,
    as_json_size,
    block_params,
    boolean,
    check_positive,
    dense_params,
    is_positive_number,
    norm_params,
    optional,
    positive_float,
    positive_int,
    positive_size,
    rate,
    to_pair,
)

STYLES = ("vit_pytorch", "timm")


class CaiTConfig(VisionTransformerConfig):
    """Configuration of :class:`hf_vit_flax.CaiT` and its Hugging Face wrappers.

    Takes vit-pytorch's keyword names; transformers' standard names are aliases
    (``hidden_size`` = ``dim``, ``num_hidden_layers`` = ``depth``, ``num_attention_heads`` = ``heads``,
    ``intermediate_size`` = ``mlp_dim``, ``num_channels`` = ``channels``, ``num_labels`` = ``num_classes``).
    The defaults are the seed README's CaiT (256x256, patches of 32, dim 1024, 12 + 2 layers, 16 heads).

    Args:
        image_size: int or (height, width).
        patch_size: int or (height, width); must divide ``image_size``.
        num_classes: size of the classification head.
        dim, depth, cls_depth, heads, dim_head, mlp_dim: width, number of self-attention layers over
            the patches, number of class-attention layers, attention heads, width of one head, hidden
            width of the feed-forward layers.
        dropout: dropout in the feed-forward layers and after the attention projection (and, unless
            ``attn_dropout`` is given, on the attention probabilities).
        emb_dropout: dropout after adding the position embedding.
        layer_dropout: probability of skipping a whole layer of a stack while training (vit-pytorch).
        channels: input channels.
        layer_norm_eps: LayerNorm epsilon (vit-pytorch: PyTorch's default 1e-5; timm: 1e-6).
        style: ``"vit_pytorch"`` (lucidrains' ``vit_pytorch.cait.CaiT``) or ``"timm"`` (timm's
            ``Cait``, the paper's released models); see :class:`hf_vit_flax.CaiT` for what differs.
        qkv_bias: biases in the query/key/value projections (False in vit-pytorch, True in timm).
        layer_scale_init: initial LayerScale value; ``None`` uses vit-pytorch's rule from each layer's
            1-based index within its stack (<= 18: 0.1, 19-24: 1e-5, > 24: 1e-6).
        cls_mlp_dim: hidden width of the class-attention layers' feed-forward (default ``mlp_dim``).
        attn_dropout: dropout on the attention probabilities (default ``dropout``).
        drop_path_rate: stochastic depth of every self-attention layer (timm's constant rate).
    """

    model_type = "cait_flax"
    family_name = "CaiT"
    attribute_map = {**VisionTransformerConfig.attribute_map, **TRANSFORMER_ATTRIBUTE_MAP}
    # style and layer_scale_init: validate_cait (shared with the module).
    field_checks = {
        **dict.fromkeys(("image_size", "patch_size"), positive_size),
        **dict.fromkeys(("dim", "depth", "cls_depth", "heads", "mlp_dim", "dim_head", "channels"), positive_int),
        "cls_mlp_dim": optional(positive_int),
        **dict.fromkeys(("dropout", "emb_dropout", "layer_dropout", "drop_path_rate"), rate),
        "attn_dropout": optional(rate),
        "layer_norm_eps": positive_float,
        "qkv_bias": boolean,
    }

    def __init__(
        self,
        image_size: int | tuple[int, int] = 256,
        patch_size: int | tuple[int, int] = 32,
        num_classes: int | None = None,
        dim: int = 1024,
        depth: int = 12,
        cls_depth: int = 2,
        heads: int = 16,
        mlp_dim: int = 2048,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        channels: int = 3,
        layer_norm_eps: float = 1e-5,
        style: str = "vit_pytorch",
        qkv_bias: bool = False,
        layer_scale_init: float | None = None,
        cls_mlp_dim: int | None = None,
        attn_dropout: float | None = None,
        drop_path_rate: float = 0.0,
        **kwargs,
    ):
        self.image_size = as_json_size(image_size)
        self.patch_size = as_json_size(patch_size)
        self.dim = dim
        self.depth = depth
        self.cls_depth = cls_depth
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.dim_head = dim_head
        self.dropout = dropout
        self.emb_dropout = emb_dropout
        self.layer_dropout = layer_dropout
        self.channels = channels
        self.layer_norm_eps = layer_norm_eps
        self.style = style
        self.qkv_bias = qkv_bias
        self.layer_scale_init = layer_scale_init
        self.cls_mlp_dim = cls_mlp_dim
        self.attn_dropout = attn_dropout
        self.drop_path_rate = drop_path_rate
        super().__init__(num_classes=num_classes, **kwargs)

    def check_architecture(self) -> None:
        validate_cait(
            image_size=self.image_size,
            patch_size=self.patch_size,
            dim=self.dim,
            depth=self.depth,
            cls_depth=self.cls_depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            dim_head=self.dim_head,
            channels=self.channels,
            style=self.style,
            cls_mlp_dim=self.cls_mlp_dim,
            layer_scale_init=self.layer_scale_init,
            layer_norm_eps=self.layer_norm_eps,
        )

    def num_layers(self) -> int:
        return self.depth + self.cls_depth

    def estimate_num_parameters(self) -> int:
        (height, width), (patch_h, patch_w) = to_pair(self.image_size), to_pair(self.patch_size)
        patches, patch_dim, dim = (height // patch_h) * (width // patch_w), patch_h * patch_w * self.channels, self.dim
        timm = self.style == "timm"
        if timm:
            embed = dense_params(patch_dim, dim)
        else:
            embed = norm_params(patch_dim) + dense_params(patch_dim, dim) + norm_params(dim)
        # Talking heads: two (heads x heads) mixings per layer (timm's with a bias), in the class-attention
        # layers too in vit-pytorch's CaiT.
        talking_heads = 2 * self.heads * self.heads + (2 * self.heads if timm else 0)
        block = functools.partial(
            block_params, dim, self.heads, self.dim_head, qkv_bias=self.qkv_bias, layer_scale=True
        )
        patch_layers = self.depth * (block(self.mlp_dim) + talking_heads)
        cls_layers = self.cls_depth * (block(self.cls_mlp_dim or self.mlp_dim) + (0 if timm else talking_heads))
        head = dense_params(dim, self.num_labels) if self.num_labels > 0 else 0
        return embed + (patches + 1) * dim + patch_layers + cls_layers + norm_params(dim) + head

    def to_module_kwargs(self) -> dict[str, Any]:
        return dict(
            image_size=to_pair(self.image_size),
            patch_size=to_pair(self.patch_size),
            num_classes=self.num_labels,
            dim=self.dim,
            depth=self.depth,
            cls_depth=self.cls_depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            dim_head=self.dim_head,
            dropout=self.dropout,
            emb_dropout=self.emb_dropout,
            layer_dropout=self.layer_dropout,
            channels=self.channels,
            layer_norm_eps=self.layer_norm_eps,
            style=self.style,
            qkv_bias=self.qkv_bias,
            layer_scale_init=self.layer_scale_init,
            cls_mlp_dim=self.cls_mlp_dim,
            attn_dropout=self.attn_dropout,
            drop_path_rate=self.drop_path_rate,
        )


def validate_cait(
    *,
    image_size,
    patch_size,
    dim: int,
    depth: int,
    cls_depth: int,
    heads: int,
    mlp_dim: int,
    dim_head: int,
    channels: int,
    style: str,
    cls_mlp_dim: int | None,
    layer_scale_init: float | None,
    layer_norm_eps: float,
) -> None:
    """The checks shared by :class:`CaiTConfig` and the linen module (a ValueError naming the fix)."""
    check_positive(
        dim=dim, depth=depth, cls_depth=cls_depth, heads=heads, mlp_dim=mlp_dim, dim_head=dim_head, channels=channels
    )
    if cls_mlp_dim is not None:
        check_positive(cls_mlp_dim=cls_mlp_dim)
    if style not in STYLES:
        raise ValueError(
            f"style must be 'vit_pytorch' (lucidrains' vit_pytorch.cait.CaiT) or 'timm' (timm's Cait), got {style!r}"
        )
    if layer_scale_init is not None and not is_positive_number(layer_scale_init):
        raise ValueError(
            f"layer_scale_init must be positive (or None for vit-pytorch's rule), got {layer_scale_init!r}"
        )
    if not is_positive_number(layer_norm_eps):
        raise ValueError(f"layer_norm_eps must be positive, got {layer_norm_eps!r}")
    (height, width), (patch_h, patch_w) = to_pair(image_size), to_pair(patch_size)
    check_positive(image_height=height, image_width=width, patch_height=patch_h, patch_width=patch_w)
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size {patch_h}x{patch_w}: "
            f"choose a patch size that divides the image size"
        )
