"""Configuration of the CaiT family ("Going deeper with Image Transformers", Touvron et al., arXiv 2103.17239)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ...configuration_utils import (
    TRANSFORMER_ATTRIBUTE_MAP,
    VisionTransformerConfig,
    block_params,
    boolean,
    dense_params,
    is_positive_number,
    norm_params,
    one_of,
    optional,
    positive_int,
    positive_size,
    presets,
    rate,
    to_pair,
)

# The two PyTorch CaiTs, as the options that tell them apart: ``style=`` names one of these presets, lucidrains'
# vit_pytorch.cait.CaiT (the seed README's model) or timm's timm.models.cait.Cait (the paper's released models).
STYLES: dict[str, dict[str, Any]] = presets(
    ("vit_pytorch", "timm"),
    patch_embedding=("norm_linear", "conv"),
    talking_heads_bias=(False, True),
    attn_dropout_before_mixing=(True, False),
    cls_talking_heads=(True, False),
    cls_norm_patches=(False, True),
    cls_dropout=(True, False),
    weight_init=("normal", "trunc_normal"),
)
PATCH_EMBEDDINGS = ("norm_linear", "conv")
WEIGHT_INITS = ("normal", "trunc_normal")


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
        style: a preset of the options below that tell the two PyTorch CaiTs apart: ``"vit_pytorch"``
            (lucidrains' ``vit_pytorch.cait.CaiT``) or ``"timm"`` (timm's ``Cait``, the paper's released
            models). Options left unset take the preset's values (without ``style``: vit-pytorch's); a
            given option that contradicts a given ``style`` is an error. Not stored: ``config.style`` names
            the preset the options are (``None`` when they are no preset's).
        qkv_bias: biases in the query/key/value projections (False in vit-pytorch, True in timm).
        layer_scale_init: initial LayerScale value; ``None`` uses vit-pytorch's rule from each layer's
            1-based index within its stack (<= 18: 0.1, 19-24: 1e-5, > 24: 1e-6).
        cls_mlp_dim: hidden width of the class-attention layers' feed-forward (default ``mlp_dim``).
        attn_dropout: dropout on the attention probabilities (default ``dropout``).
        drop_path_rate: stochastic depth of every self-attention layer (timm's constant rate).
        head_dropout: dropout on the class token before the head (timm's ``drop_rate``).

    The options that tell the references apart (see ``STYLES``):
        patch_embedding: ``"norm_linear"`` (vit-pytorch: patch LayerNorm -> Linear -> LayerNorm) or
            ``"conv"`` (timm: a Conv2d with kernel = stride = patch size, with bias).
        talking_heads_bias: the talking-heads mixings have biases (timm's ``proj_l`` / ``proj_w`` Linear
            layers; vit-pytorch's ``mix_heads_*`` matrices have none).
        attn_dropout_before_mixing: attention dropout acts before the post-softmax head mixing
            (vit-pytorch) or after it (timm).
        cls_talking_heads: the class-attention layers mix heads too (vit-pytorch reuses its attention
            there; timm's ``ClassAttn`` does not).
        cls_norm_patches: a class-attention layer's first LayerNorm normalises the patch tokens it attends
            to as well (timm: the norm of [class token, patches]); otherwise only the class token, and the
            patch tokens enter un-normalised (vit-pytorch).
        cls_dropout: the class-attention layers use ``dropout`` and ``attn_dropout`` (vit-pytorch); timm
            builds them without dropout.
        weight_init: how the position embedding, the class token and the talking-heads matrices start:
            ``"normal"`` (standard normal, vit-pytorch's ``torch.randn``) or ``"trunc_normal"``
            (truncated normal, std 0.02, timm's ``trunc_normal_``).
    """

    model_type = "cait_flax"
    family_name = "CaiT"
    attribute_map = {**VisionTransformerConfig.attribute_map, **TRANSFORMER_ATTRIBUTE_MAP}
    # layer_scale_init and the image / patch sizes together: check_cait_options (shared with the module).
    field_checks = {
        **VisionTransformerConfig.field_checks,
        "patch_size": positive_size,
        **dict.fromkeys(("dim", "depth", "cls_depth", "heads", "mlp_dim", "dim_head"), positive_int),
        "cls_mlp_dim": optional(positive_int),
        **dict.fromkeys(("dropout", "emb_dropout", "layer_dropout", "drop_path_rate", "head_dropout"), rate),
        "attn_dropout": optional(rate),
        "patch_embedding": one_of(*PATCH_EMBEDDINGS),
        "weight_init": one_of(*WEIGHT_INITS),
        **dict.fromkeys(
            (
                "qkv_bias",
                "talking_heads_bias",
                "attn_dropout_before_mixing",
                "cls_talking_heads",
                "cls_norm_patches",
                "cls_dropout",
            ),
            boolean,
        ),
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
        style: str | None = None,
        qkv_bias: bool = False,
        layer_scale_init: float | None = None,
        cls_mlp_dim: int | None = None,
        attn_dropout: float | None = None,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        patch_embedding: str | None = None,
        talking_heads_bias: bool | None = None,
        attn_dropout_before_mixing: bool | None = None,
        cls_talking_heads: bool | None = None,
        cls_norm_patches: bool | None = None,
        cls_dropout: bool | None = None,
        weight_init: str | None = None,
        **kwargs,
    ):
        self.set_options(apply_style(locals()))
        super().__init__(num_classes=num_classes, **kwargs)

    @property
    def style(self) -> str | None:
        """The preset (``"vit_pytorch"`` or ``"timm"``) whose options these are, else ``None``."""
        return style_of(self)

    @style.setter
    def style(self, style: str) -> None:
        # Assigning a preset (e.g. from_pretrained(..., style="timm")) sets its options.
        for name, value in apply_style({"style": style}).items():
            setattr(self, name, value)

    def check_architecture(self) -> None:
        check_cait_options(self)

    def num_layers(self) -> int:
        return self.depth + self.cls_depth

    def estimate_num_parameters(self) -> int:
        (height, width), (patch_h, patch_w) = to_pair(self.image_size), to_pair(self.patch_size)
        patches, patch_dim, dim = (height // patch_h) * (width // patch_w), patch_h * patch_w * self.channels, self.dim
        if self.patch_embedding == "conv":
            embed = dense_params(patch_dim, dim)
        else:
            embed = norm_params(patch_dim) + dense_params(patch_dim, dim) + norm_params(dim)
        # Talking heads: two (heads x heads) mixings per layer, with or without biases.
        talking_heads = 2 * dense_params(self.heads, self.heads, self.talking_heads_bias)
        block = functools.partial(
            block_params, dim, self.heads, self.dim_head, qkv_bias=self.qkv_bias, layer_scale=True
        )
        patch_layers = self.depth * (block(self.mlp_dim) + talking_heads)
        cls_layers = self.cls_depth * (
            block(self.cls_mlp_dim or self.mlp_dim) + (talking_heads if self.cls_talking_heads else 0)
        )
        head = dense_params(dim, self.num_labels) if self.num_labels > 0 else 0
        return embed + (patches + 1) * dim + patch_layers + cls_layers + norm_params(dim) + head


def apply_style(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (a constructor's arguments) with ``style`` expanded into the options it names, once.

    Each option of the preset that is ``None`` (unset) takes the preset's value (no ``style``: vit-pytorch's);
    a given option that contradicts a given ``style`` raises ValueError. ``style`` itself is left out.
    """
    options = dict(options)
    style = options.pop("style", None)
    if style is not None and style not in STYLES:
        raise ValueError(
            f"style must be 'vit_pytorch' (lucidrains' vit_pytorch.cait.CaiT) or 'timm' (timm's Cait), got {style!r}"
        )
    preset = STYLES[style or "vit_pytorch"]
    given = {name: options[name] for name in preset if options.get(name) is not None}
    if style is not None:
        conflicts = {name: value for name, value in given.items() if value != preset[name]}
        if conflicts:
            other = style_of({**preset, **given})
            raise ValueError(
                f"style={style!r} sets {format_options({name: preset[name] for name in conflicts})}, but "
                f"{format_options(conflicts)} {'were' if len(conflicts) > 1 else 'was'} given"
                + (f" (the options of style={other!r})" if other else "")
                + ": give a style or options that differ from it, not both"
            )
    return {**options, **preset, **given}


def style_of(options: Any) -> str | None:
    """The name of the preset whose options ``options`` (a mapping, a config or a module) has, else ``None``."""

    def get(name):
        return options.get(name) if isinstance(options, Mapping) else getattr(options, name, None)

    return next((style for style, preset in STYLES.items() if all(get(k) == v for k, v in preset.items())), None)


def format_options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in options.items())


def check_cait_options(options: Any) -> None:
    """The rules between fields, read off a ``CaiTConfig`` or a ``CaiT`` (the same field names); a ValueError
    naming the fix. (Each field on its own: ``CaiTConfig.field_checks``, run by both as well.)"""
    layer_scale_init = options.layer_scale_init
    if layer_scale_init is not None and not is_positive_number(layer_scale_init):
        raise ValueError(
            f"layer_scale_init must be positive (or None for vit-pytorch's rule), got {layer_scale_init!r}"
        )
    (height, width), (patch_h, patch_w) = to_pair(options.image_size), to_pair(options.patch_size)
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size {patch_h}x{patch_w}: "
            f"choose a patch size that divides the image size"
        )
