"""Configuration of the ViT family (Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929).

One config expresses both lucidrains' vit-pytorch ``ViT`` (the defaults) and timm's ``VisionTransformer``
(ViT, DeiT, DeiT III, CLIP-style and register-token variants) through documented options.
"""

from __future__ import annotations

from typing import Any

from ...configuration_utils import (
    TRANSFORMER_ATTRIBUTE_MAP,
    VisionTransformerConfig,
    block_params,
    boolean,
    dense_params,
    is_positive_number,
    non_negative_int,
    norm_params,
    optional,
    positive_int,
    positive_size,
    rate,
    to_pair,
)


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
        pool: ``'cls'`` (a class token is prepended and read out), ``'mean'`` (no class token;
            the mean of the tokens) or ``'map'`` (multihead attention pooling of the patch tokens by
            a learned latent query, timm's ``AttentionPoolLatent``, as in SigLIP and big_vision).
        channels: input channels.
        dropout: dropout in attention probabilities, projections and feed-forward layers.
        emb_dropout: dropout after adding the position embedding.
        layer_norm_eps: LayerNorm epsilon (vit-pytorch uses PyTorch's default, 1e-5; timm's ViT/DeiT 1e-6,
            its CLIP-style models 1e-5).

    Options of timm's ``VisionTransformer`` (the defaults keep vit-pytorch's model):
        patch_embedding: ``'norm_linear'`` (vit-pytorch: patch LayerNorm -> Linear -> LayerNorm) or
            ``'conv'`` (timm / the paper: a Conv2d with kernel = stride = patch size, no padding; like
            timm it ignores the last pixels of an image size the patch size does not divide).
        patch_bias: whether the ``'conv'`` patch embedding has a bias (timm drops it with ``pre_norm``).
        qkv_bias: a bias in the fused query/key/value projection (timm's default; vit-pytorch has none).
        class_token: prepend a class token; ``None`` means "when ``pool == 'cls'``" (vit-pytorch).
        reg_tokens: number of register tokens after the class token ("Vision Transformers Need
            Registers", arXiv 2309.16588).
        distilled: DeiT's distillation token after the class token and a second head ``head_dist``
            (arXiv 2012.12877); the logits are the mean of both heads (timm's inference behaviour).
        no_embed_class: the position embedding covers only the patches; the prefix tokens (class,
            register, distillation) get none (DeiT III, big_vision).
        pre_norm: a LayerNorm ``norm_pre`` after the position embedding (CLIP).
        final_norm: whether there is a final LayerNorm at all.
        fc_norm: the final LayerNorm is applied after pooling (``fc_norm``) instead of to the tokens
            (timm's default with ``global_pool='avg'``).
        layer_scale_init: LayerScale ``init_values`` (DeiT III, arXiv 2204.07118); ``None`` disables it.
        mlp_activation: ``'gelu'`` (exact), ``'gelu_tanh'`` or ``'quick_gelu'`` (OpenAI CLIP).
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this rate.
        head_dropout: dropout before the classification head(s).
        pooler: a Linear -> tanh layer on the class token, ``pooled = tanh(dense(cls))``: transformers'
            ``ViTPooler`` (the ``pooler_output`` of its ``ViTModel``), which is the original ViT's pre-logits
            "representation layer" (timm's old ``representation_size``, big_vision's ``pre_logits``). The
            head, when there is one, reads these pooled features; needs ``pool='cls'`` and no distillation.

    ``pool='mean'`` averages the patch tokens, leaving out the prefix tokens (timm's ``'avg'``; with
    no prefix tokens this is vit-pytorch's mean over all tokens).
    """

    model_type = "vit_flax"
    family_name = "ViT"
    attribute_map = {**VisionTransformerConfig.attribute_map, **TRANSFORMER_ATTRIBUTE_MAP}
    # pool, patch_embedding, mlp_activation and layer_scale_init: check_vit_options (shared with the module).
    field_checks = {
        **VisionTransformerConfig.field_checks,
        "patch_size": positive_size,
        **dict.fromkeys(("dim", "depth", "heads", "mlp_dim", "dim_head"), positive_int),
        **dict.fromkeys(("dropout", "emb_dropout", "drop_path_rate", "head_dropout"), rate),
        "reg_tokens": non_negative_int,
        "class_token": optional(boolean),
        **dict.fromkeys(
            ("patch_bias", "qkv_bias", "distilled", "no_embed_class", "pre_norm", "final_norm", "fc_norm", "pooler"),
            boolean,
        ),
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
        patch_embedding: str = "norm_linear",
        patch_bias: bool = True,
        qkv_bias: bool = False,
        class_token: bool | None = None,
        reg_tokens: int = 0,
        distilled: bool = False,
        no_embed_class: bool = False,
        pre_norm: bool = False,
        final_norm: bool = True,
        fc_norm: bool = False,
        layer_scale_init: float | None = None,
        mlp_activation: str = "gelu",
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        pooler: bool = False,
        **kwargs,
    ):
        self.set_options(locals())
        super().__init__(num_classes=num_classes, **kwargs)

    def check_architecture(self) -> None:
        check_vit_options(self)
        (height, width), (patch_h, patch_w) = to_pair(self.image_size), to_pair(self.patch_size)
        if patch_h > height or patch_w > width:
            raise ValueError(
                f"patch size {patch_h}x{patch_w} is larger than the image size {height}x{width}: the model would "
                f"see no patch of the image; choose a patch size no larger than the image"
            )
        if self.patch_embedding == "norm_linear" and (height % patch_h or width % patch_w):
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch size {patch_h}x{patch_w}: "
                f"choose a patch size that divides the image size"
            )

    @property
    def has_class_token(self) -> bool:
        return self.pool == "cls" if self.class_token is None else bool(self.class_token)

    def num_layers(self) -> int:
        return self.depth

    def estimate_num_parameters(self) -> int:
        (height, width), (patch_h, patch_w) = to_pair(self.image_size), to_pair(self.patch_size)
        patches, patch_dim, dim = (height // patch_h) * (width // patch_w), patch_h * patch_w * self.channels, self.dim
        if self.patch_embedding == "conv":
            embed = dense_params(patch_dim, dim, self.patch_bias)
        else:
            embed = norm_params(patch_dim) + dense_params(patch_dim, dim) + norm_params(dim)
        prefix = int(self.has_class_token) + self.reg_tokens + int(self.distilled)
        tokens = (prefix + patches + (0 if self.no_embed_class else prefix)) * dim
        project_out = self.patch_embedding != "norm_linear" or not (self.heads == 1 and self.dim_head == dim)
        blocks = self.depth * block_params(
            dim,
            self.heads,
            self.dim_head,
            self.mlp_dim,
            qkv_bias=self.qkv_bias,
            project_out=project_out,
            layer_scale=self.layer_scale_init is not None,
        )
        norms = norm_params(dim) * (int(self.pre_norm) + int(self.final_norm))
        mlp = dense_params(dim, self.mlp_dim) + dense_params(self.mlp_dim, dim)
        pool = 0
        if self.pool == "map":  # latent query, q / kv / proj, then LayerNorm -> MLP
            pool = dim + 4 * dense_params(dim, dim) + norm_params(dim) + mlp
        if self.pooler:
            pool += dense_params(dim, dim)
        heads = (1 + int(self.distilled)) * dense_params(dim, self.num_labels) if self.num_labels > 0 else 0
        return embed + tokens + blocks + norms + pool + heads


PATCH_EMBEDDINGS = ("norm_linear", "conv")
MLP_ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")  # the keys of layers.ACTIVATIONS (no jax import here)


def check_vit_options(options: Any) -> None:
    """Combinations the model cannot express, read off a ``ViTConfig`` or a ``ViT`` (the same field names)."""
    pool, patch_embedding, class_token = options.pool, options.patch_embedding, options.class_token
    reg_tokens, distilled = options.reg_tokens, options.distilled
    mlp_activation, layer_scale_init = options.mlp_activation, options.layer_scale_init
    if pool not in ("cls", "mean", "map"):
        raise ValueError(
            f"pool must be 'cls' (class token), 'mean' (mean pooling) or 'map' (attention pooling), got {pool!r}"
        )
    if patch_embedding not in PATCH_EMBEDDINGS:
        raise ValueError(f"patch_embedding must be one of {PATCH_EMBEDDINGS}, got {patch_embedding!r}")
    if mlp_activation not in MLP_ACTIVATIONS:
        raise ValueError(f"mlp_activation must be one of {MLP_ACTIVATIONS}, got {mlp_activation!r}")
    if reg_tokens < 0:
        raise ValueError(f"reg_tokens must be >= 0, got {reg_tokens}")
    has_class_token = pool == "cls" if class_token is None else bool(class_token)
    if pool == "cls" and not has_class_token:
        raise ValueError("pool='cls' reads the class token: set class_token=True or pool='mean'")
    if distilled and (pool != "cls" or not has_class_token or reg_tokens):
        raise ValueError(
            "distilled=True (DeiT) reads the class and distillation tokens: it needs pool='cls', a class token "
            "and no register tokens"
        )
    if getattr(options, "pooler", False) and (pool != "cls" or not has_class_token or distilled):
        raise ValueError(
            "pooler=True (transformers' ViTPooler) reads the class token: it needs pool='cls', a class token and "
            "no distillation head"
        )
    if layer_scale_init is not None and not is_positive_number(layer_scale_init):
        raise ValueError(f"layer_scale_init must be a positive float or None (no LayerScale), got {layer_scale_init}")
