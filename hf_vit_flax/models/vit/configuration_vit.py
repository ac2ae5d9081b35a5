"""Configuration of the ViT family (Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929)."""

from __future__ import annotations

from typing import Any

from ...configuration_utils import VisionTransformerConfig, as_json_size, check_positive, check_rate, to_pair


class ViTConfig(VisionTransformerConfig):
    """Configuration of :class:`hf_vit_flax.ViT` and its Hugging Face wrappers.

    Takes vit-pytorch's keyword names; transformers' standard names are aliases
    (``hidden_size`` = ``dim``, ``num_hidden_layers`` = ``depth``, ``num_attention_heads`` = ``heads``,
    ``intermediate_size`` = ``mlp_dim``, ``num_channels`` = ``channels``, ``num_labels`` = ``num_classes``).
    The defaults are ViT-B/16 at 224x224.

    Args:
        image_size: int or (height, width).
        patch_size: int or (height, width); must divide ``image_size``.
        num_classes: size of the classification head.
        dim, depth, heads, dim_head, mlp_dim: width, number of blocks, attention heads, width of
            one head, hidden width of the feed-forward layers.
        pool: ``'cls'`` (a class token is prepended and read out) or ``'mean'`` (no class token;
            the mean of the tokens).
        channels: input channels.
        dropout: dropout in attention probabilities, projections and feed-forward layers.
        emb_dropout: dropout after adding the position embedding.
        layer_norm_eps: LayerNorm epsilon (vit-pytorch uses PyTorch's default, 1e-5).
    """

    model_type = "vit_flax"
    family_name = "ViT"
    attribute_map = {
        **VisionTransformerConfig.attribute_map,
        "hidden_size": "dim",
        "num_hidden_layers": "depth",
        "num_attention_heads": "heads",
        "intermediate_size": "mlp_dim",
    }

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        num_classes: int | None = None,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        self.image_size = as_json_size(image_size)
        self.patch_size = as_json_size(patch_size)
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.pool = pool
        self.channels = channels
        self.dim_head = dim_head
        self.dropout = dropout
        self.emb_dropout = emb_dropout
        self.layer_norm_eps = layer_norm_eps
        super().__init__(num_classes=num_classes, **kwargs)

    def validate(self) -> None:
        check_positive(dim=self.dim, depth=self.depth, heads=self.heads, mlp_dim=self.mlp_dim,
                       dim_head=self.dim_head, channels=self.channels)
        check_rate(dropout=self.dropout, emb_dropout=self.emb_dropout)
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' (class token) or 'mean' (mean pooling), got {self.pool!r}")
        (height, width), (patch_h, patch_w) = to_pair(self.image_size), to_pair(self.patch_size)
        if height % patch_h or width % patch_w:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch size {patch_h}x{patch_w}: "
                f"choose a patch size that divides the image size"
            )

    def to_module_kwargs(self) -> dict[str, Any]:
        return dict(
            image_size=to_pair(self.image_size),
            patch_size=to_pair(self.patch_size),
            num_classes=self.num_labels,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            pool=self.pool,
            channels=self.channels,
            dim_head=self.dim_head,
            dropout=self.dropout,
            emb_dropout=self.emb_dropout,
            layer_norm_eps=self.layer_norm_eps,
        )
