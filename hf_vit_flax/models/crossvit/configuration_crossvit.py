"""Configuration of the CrossViT family ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image
Classification", Chen et al., arXiv 2103.14899). Imports no jax.

One set of hyper-parameters and named options expresses lucidrains' ``vit_pytorch.cross_vit.CrossViT`` (the
defaults) and timm's ``timm.models.crossvit.CrossVit`` (the paper authors' code). ``style`` names a preset of
those options (:data:`PRESETS`), expanded once, at construction, by :func:`expand_style`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...configuration_utils import (
    VisionTransformerConfig,
    as_json_size,
    block_params,
    boolean,
    dense_params,
    non_negative_int,
    norm_params,
    one_of,
    optional,
    positive_int,
    positive_size,
    presets,
    rate,
    to_pair,
)

STYLES = ("vit_pytorch", "timm")
PATCH_EMBEDDINGS = ("norm_linear", "conv")
TOKEN_INITS = ("normal", "trunc_normal")
FUSIONS = ("project_in_out", "token_projection")
HEAD_COMBINES = ("sum", "mean")
GLOBAL_POOLS = ("token", "avg")
# timm's 'dagger' multi-convolution patch embedding exists for these patch sizes only.
MULTI_CONV_PATCH_SIZES = (12, 16)

# What each reference implementation is, in named options (``style=`` picks one).
PRESETS: dict[str, dict[str, Any]] = presets(
    STYLES,
    patch_embedding=("norm_linear", "conv"),
    token_init=("normal", "trunc_normal"),
    encoder_norm=(True, False),
    fusion=("project_in_out", "token_projection"),
    final_norm=(False, True),
    head_norm=(True, False),
    head_combine=("sum", "mean"),
)
# The cross attention's own heads (vit-pytorch's defaults); 'token_projection' uses each branch's heads instead.
CROSS_ATTN_DEFAULTS = {"project_in_out": (8, 64), "token_projection": (None, None)}


def expand_style(options: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the named options that ``options`` leaves unset (``None``), from the preset ``style``.

    Without a style the unset options take vit-pytorch's values. An option given next to a style must
    agree with it: a preset names a reference implementation, so ``style='timm', fusion='project_in_out'``
    is refused (leave ``style`` out to combine options freely). ``cross_attn_heads`` / ``cross_attn_dim_head``
    default to 8 / 64 with ``fusion='project_in_out'`` and stay ``None`` with ``'token_projection'``.
    Called once by :class:`CrossViTConfig` and by the module ``hf_vit_flax.CrossViT`` at construction.
    """
    style = options.get("style")
    if style is not None and style not in PRESETS:
        raise ValueError(f"style must be one of {STYLES} (a preset of the named options) or None, got {style!r}")
    filled = {}
    for name, value in PRESETS[style or "vit_pytorch"].items():
        if options.get(name) is None:
            filled[name] = value
    check_preset({**options, **filled})
    fusion = filled.get("fusion", options.get("fusion"))
    if fusion in CROSS_ATTN_DEFAULTS:  # else the field check names the unknown fusion
        for name, default in zip(("cross_attn_heads", "cross_attn_dim_head"), CROSS_ATTN_DEFAULTS[fusion], strict=True):
            if options.get(name) is None:
                filled[name] = default
    return filled


def check_preset(options: Mapping[str, Any]) -> None:
    """A style names a reference implementation: the named options must be its (see :func:`expand_style`)."""
    style = options.get("style")
    for name, value in PRESETS.get(style, {}).items():
        if options.get(name) != value:
            raise ValueError(
                f"style={style!r} is the preset {name}={value!r}, but {name}={options.get(name)!r} was given: "
                f"leave style out to combine the named options freely"
            )


def check_crossvit_options(options: Any) -> None:
    """Raise ValueError, naming the problem and the fix, for combinations CrossViT cannot take.

    Reads a :class:`CrossViTConfig` or a ``hf_vit_flax.CrossViT`` (the same attribute names); each field's own
    type and range are ``CrossViTConfig.field_checks``.
    """
    o = options
    check_preset({name: getattr(o, name) for name in ("style", *PRESETS["timm"])})
    if o.multi_conv and o.patch_embedding != "conv":
        raise ValueError(
            f"multi_conv (timm's 'dagger' patch embedding) is a kind of patch_embedding='conv', "
            f"got patch_embedding={o.patch_embedding!r}"
        )
    if o.multi_conv:
        for branch, patch in (("sm", o.sm_patch_size), ("lg", o.lg_patch_size)):
            if patch not in MULTI_CONV_PATCH_SIZES:
                raise ValueError(
                    f"multi_conv (timm's 'dagger' patch embedding) exists for patch sizes "
                    f"{MULTI_CONV_PATCH_SIZES} only, got {branch}_patch_size={patch}"
                )
    if o.fusion == "project_in_out":
        if o.cross_attn_heads is None or o.cross_attn_dim_head is None:
            raise ValueError("fusion='project_in_out' needs cross_attn_heads and cross_attn_dim_head (e.g. 8 and 64)")
    elif o.fusion == "token_projection":
        if o.cross_attn_heads is not None or o.cross_attn_dim_head is not None:
            raise ValueError(
                f"fusion='token_projection' attends with the heads of the branch whose width it runs in: "
                f"cross_attn_heads / cross_attn_dim_head must be None, got {o.cross_attn_heads} / "
                f"{o.cross_attn_dim_head} (those are for fusion='project_in_out')"
            )
        if o.cross_attn_depth < 1:
            raise ValueError("fusion='token_projection' needs cross_attn_depth >= 1 (its cross-attention blocks)")
        # As in the paper (and timm), the cross attention splits a branch's width into its heads.
        for branch, dim, heads, dim_head in (
            ("sm", o.sm_dim, o.sm_enc_heads, o.sm_enc_dim_head),
            ("lg", o.lg_dim, o.lg_enc_heads, o.lg_enc_dim_head),
        ):
            if heads * dim_head != dim:
                raise ValueError(
                    f"fusion='token_projection' splits the width into heads: {branch}_enc_heads * "
                    f"{branch}_enc_dim_head ({heads} * {dim_head}) must equal {branch}_dim ({dim}); set "
                    f"{branch}_enc_dim_head={dim // heads}"
                    if dim % heads == 0
                    else f"fusion='token_projection' needs {branch}_dim ({dim}) divisible by {branch}_enc_heads ({heads})"
                )
    if o.drop_path_rate > 0 and (o.fusion != "token_projection" or o.encoder_norm):
        raise ValueError(
            f"drop_path_rate follows timm's stochastic-depth schedule over its encoder and fusion blocks: it needs "
            f"fusion='token_projection' and encoder_norm=False, got fusion={o.fusion!r}, encoder_norm={o.encoder_norm}"
        )
    for branch, size, patch in (("sm", o.sm_image_size, o.sm_patch_size), ("lg", o.lg_image_size, o.lg_patch_size)):
        height, width = to_pair(size if size is not None else o.image_size)
        if height % patch or width % patch:
            what = f"{branch}_image_size" if size is not None else "image_size"
            raise ValueError(
                f"the {branch} branch takes {height}x{width} images ({what}), which is not divisible by "
                f"{branch}_patch_size {patch}: choose sizes that are multiples of both patch sizes"
            )


def upgrade_legacy_config(config_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """A config.json written before the named options (``style`` and no ``fusion``), read as it computed then.

    The ``style`` switch ignored ``cross_attn_heads`` / ``cross_attn_dim_head`` under ``'timm'`` and
    ``drop_path_rate`` under ``'vit_pytorch'``; they are dropped here, which the named options would refuse.
    """
    if not isinstance(config_dict, Mapping) or "style" not in config_dict or "fusion" in config_dict:
        return config_dict
    ignored = {
        "timm": dict(cross_attn_heads=None, cross_attn_dim_head=None),
        "vit_pytorch": dict(drop_path_rate=0.0),
    }.get(config_dict["style"], {})
    return {**config_dict, **{k: v for k, v in ignored.items() if k in config_dict}}


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
        cross_attn_heads, cross_attn_dim_head: heads and head width of the cross attention of
            ``fusion='project_in_out'`` (default 8 and 64); ``None`` with ``fusion='token_projection'``,
            which attends with the heads of the branch whose width it runs in.
        depth: number of multi-scale blocks.
        dropout: dropout in attention probabilities, projections and feed-forward layers.
        emb_dropout: dropout after adding the position embeddings.
        channels: input channels.
        style: ``'vit_pytorch'`` or ``'timm'``: a preset of the named options below (:data:`PRESETS`), which
            fills those left unset; ``None`` (the default): vit-pytorch's values, each option free.
        sm_image_size, lg_image_size: per-branch input sizes (timm's ``img_size * img_scale``); a branch
            whose size differs from ``image_size`` gets the image resized inside the model (PyTorch's
            bicubic, or a centre crop with ``crop_scale``). ``None``: ``image_size``.
        multi_conv: timm's 'dagger' patch embedding (three convolutions; patch sizes 12 and 16), a kind of
            ``patch_embedding='conv'``.
        qkv_bias: biases in the query/key/value projections (timm's default: True).
        crop_scale: timm's option to centre-crop instead of resizing a branch's input when it is smaller.
        global_pool: ``'token'`` (class tokens) or ``'avg'`` (mean of the patch tokens) for the heads.
        layer_norm_eps: LayerNorm epsilon (vit-pytorch: PyTorch's 1e-5; timm: 1e-6).
        drop_path_rate: stochastic depth with timm's schedule (``fusion='token_projection'``,
            ``encoder_norm=False``).

    Named options (``None``: from ``style``; vit-pytorch's value / timm's value):
        patch_embedding: ``'norm_linear'`` (patch LayerNorm -> Linear -> LayerNorm) / ``'conv'`` (a Conv2d
            with kernel = stride = patch size).
        token_init: initialisation of the class tokens and position embeddings: ``'normal'`` (N(0, 1),
            ``torch.randn``) / ``'trunc_normal'`` (truncated N(0, 0.02^2)).
        encoder_norm: a LayerNorm at the end of each branch's encoder in every multi-scale block
            (vit-pytorch's ``Transformer``) / none.
        fusion: how a branch's class token takes in the other branch. ``'project_in_out'``: each of the
            ``cross_attn_depth`` layers projects it with Linear layers into the other width (when the widths
            differ), attends to [itself, the other branch's patch tokens] with ``cross_attn_heads``, projects
            back and adds it (vit-pytorch's ``ProjectInOut(Attention)``) / ``'token_projection'``: it is
            projected once (LayerNorm -> GELU -> Linear) into the other width, ``cross_attn_depth``
            cross-attention blocks with residuals run there (the first over the normed [token, other
            branch's patch tokens], the later ones over the token), and it is projected back in place of the
            class token (the paper's Eq. 8-9, timm's ``projs`` / ``fusion`` / ``revert_projs``).
        final_norm: a LayerNorm per branch after the last multi-scale block / timm's ``norm``.
        head_norm: each branch's head is LayerNorm -> Linear (vit-pytorch's ``mlp_head``) / a Linear.
        head_combine: the logits are the ``'sum'`` / the ``'mean'`` of the two heads'.
    """

    model_type = "crossvit_flax"
    family_name = "CrossViT"
    attribute_map = {**VisionTransformerConfig.attribute_map, "num_hidden_layers": "depth"}
    # The rules between fields: check_crossvit_options (shared with the module).
    field_checks = {
        **VisionTransformerConfig.field_checks,
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
            ),
            positive_int,
        ),
        **dict.fromkeys(("sm_enc_depth", "lg_enc_depth", "cross_attn_depth"), non_negative_int),
        **dict.fromkeys(("cross_attn_heads", "cross_attn_dim_head"), optional(positive_int)),
        **dict.fromkeys(("dropout", "emb_dropout", "drop_path_rate"), rate),
        **dict.fromkeys(("multi_conv", "qkv_bias", "crop_scale", "encoder_norm", "final_norm", "head_norm"), boolean),
        "style": optional(one_of(*STYLES)),
        "global_pool": one_of(*GLOBAL_POOLS),
        "patch_embedding": one_of(*PATCH_EMBEDDINGS),
        "token_init": one_of(*TOKEN_INITS),
        "fusion": one_of(*FUSIONS),
        "head_combine": one_of(*HEAD_COMBINES),
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
        cross_attn_heads: int | None = None,
        cross_attn_dim_head: int | None = None,
        depth: int = 3,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        channels: int = 3,
        style: str | None = None,
        sm_image_size: int | tuple[int, int] | None = None,
        lg_image_size: int | tuple[int, int] | None = None,
        multi_conv: bool = False,
        qkv_bias: bool = False,
        crop_scale: bool = False,
        global_pool: str = "token",
        layer_norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        patch_embedding: str | None = None,
        token_init: str | None = None,
        encoder_norm: bool | None = None,
        fusion: str | None = None,
        final_norm: bool | None = None,
        head_norm: bool | None = None,
        head_combine: str | None = None,
        **kwargs,
    ):
        options = locals()
        self.set_options({**options, **expand_style(options)})
        super().__init__(num_classes=num_classes, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        return super().from_dict(upgrade_legacy_config(config_dict), **kwargs)

    def set_options(self, options: Mapping[str, Any]) -> None:
        super().set_options(options)
        for name in ("sm_image_size", "lg_image_size"):  # sizes as JSON values, as image_size
            if name in options:
                setattr(self, name, as_json_size(options[name]))

    def check_architecture(self) -> None:
        check_crossvit_options(self)

    def num_layers(self) -> int:
        return self.depth * (self.sm_enc_depth + self.lg_enc_depth + 2 * self.cross_attn_depth)

    def estimate_num_parameters(self) -> int:
        def cross_attention(dim: int, heads: int, dim_head: int) -> int:
            """A class token attends in width ``dim``: LayerNorm, q and kv, output projection."""
            inner = heads * dim_head
            return norm_params(dim) + dense_params(dim, 3 * inner, self.qkv_bias) + dense_params(inner, dim)

        total = 0
        for b, o in (("sm", "lg"), ("lg", "sm")):
            dim, other, patch = getattr(self, f"{b}_dim"), getattr(self, f"{o}_dim"), getattr(self, f"{b}_patch_size")
            heads, dim_head = getattr(self, f"{b}_enc_heads"), getattr(self, f"{b}_enc_dim_head")
            size = getattr(self, f"{b}_image_size")
            height, width = to_pair(size if size is not None else self.image_size)
            patch_dim = patch * patch * self.channels
            if self.multi_conv:  # timm's 'dagger' stem: 7x7 to dim/4, 3x3 to dim/2, 3x3 to dim
                embed = dense_params(49 * self.channels, dim // 4) + dense_params(9 * (dim // 4), dim // 2)
                embed += dense_params(9 * (dim // 2), dim)
            elif self.patch_embedding == "conv":
                embed = dense_params(patch_dim, dim)
            else:
                embed = norm_params(patch_dim) + dense_params(patch_dim, dim) + norm_params(dim)
            tokens = (2 + (height // patch) * (width // patch)) * dim  # class token and position embeddings
            mlp_dim = getattr(self, f"{b}_enc_mlp_dim")
            layer = getattr(self, f"{b}_enc_depth") * block_params(
                dim, heads, dim_head, mlp_dim, qkv_bias=self.qkv_bias
            )
            layer += norm_params(dim) if self.encoder_norm else 0
            if self.fusion == "token_projection":  # LayerNorm -> GELU -> Linear each way, the other branch's heads
                layer += norm_params(dim) + dense_params(dim, other) + norm_params(other) + dense_params(other, dim)
                other_heads = getattr(self, f"{o}_enc_heads"), getattr(self, f"{o}_enc_dim_head")
                layer += self.cross_attn_depth * cross_attention(other, *other_heads)
            else:  # per cross layer, Linear in and out when the widths differ
                projections = dense_params(dim, other) + dense_params(other, dim) if dim != other else 0
                attention = cross_attention(other, self.cross_attn_heads, self.cross_attn_dim_head)
                layer += self.cross_attn_depth * (projections + attention)
            rest = norm_params(dim) if self.final_norm else 0
            if self.num_labels > 0:
                rest += dense_params(dim, self.num_labels) + (norm_params(dim) if self.head_norm else 0)
            total += embed + tokens + self.depth * layer + rest
        return total
