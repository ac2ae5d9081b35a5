"""Weights of vit-pytorch's ``ViT`` and timm's ``VisionTransformer`` / ``VisionTransformerDistilled``
-> ``FlaxViTForImageClassification`` (pure numpy; no torch import).

vit-pytorch layout -> ours:
  to_patch_embedding.{1,2,3}                -> patch_embed.{patch_norm, proj, norm}
  cls_token (n_cls, dim), pos_embedding     -> cls_token, pos_embedding (same shapes)
  transformer.layers.i.0.{norm,to_qkv,to_out.0} -> transformer.blocks_i.{norm1, attn.qkv, attn.proj}
  transformer.layers.i.1.net.{0,1,4}        -> transformer.blocks_i.{norm2, mlp.fc1, mlp.fc2}
  transformer.norm, mlp_head                -> transformer.norm, head

timm layout -> ours (``config_from_timm`` reads the options off a live model, ``convert_timm`` maps weights):
  patch_embed.proj (Conv2d)                 -> patch_embed.proj (Conv, kernel (kh, kw, in, out))
  cls_token, reg_token, dist_token (1, n, d) -> cls_token, reg_token, dist_token (n, d)
  pos_embed (1, n, d)                       -> pos_embedding (n, d), resampled to the config's grid
  norm_pre, norm, fc_norm, head, head_dist  -> norm_pre, transformer.norm, fc_norm, head, head_dist
  attn_pool.{latent, q, kv, proj, norm, mlp.fc1, mlp.fc2} -> attn_pool.(same names)
  blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
                                            -> transformer.blocks_i.(same names)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import weight_tables as wt
from ...conversion_utils import image_size_from_patches, resample_abs_pos_embed, same_named
from ...layers import (
    TIMM_BLOCK,
    VIT_PYTORCH_BLOCK,
    attention_pool_table,
    conv_patch_embedding_table,
    pair,
    patch_embedding_table,
    transformer_table,
)
from .configuration_vit import ViTConfig


def config_from_vit_pytorch(model: Any, image_size=None) -> ViTConfig:
    """Read a ``ViTConfig`` off a live ``vit_pytorch.vit.ViT`` (duck-typed: torch is never imported here);
    ``image_size`` for a non-square one, whose size the module cannot tell."""
    to_patch = model.to_patch_embedding
    patch_h, patch_w = model.patch_size
    patch_dim = to_patch[1].normalized_shape[0]
    num_tokens, dim = model.pos_embedding.shape
    num_cls = model.cls_token.shape[0]
    image_size = image_size_from_patches(num_tokens - num_cls, (patch_h, patch_w), "vit-pytorch ViT", image_size)
    layers = model.transformer.layers
    attention, feed_forward = layers[0][0], layers[0][1]
    return ViTConfig(
        image_size=image_size,
        patch_size=(patch_h, patch_w) if patch_h != patch_w else patch_h,
        num_classes=model.mlp_head.out_features if model.mlp_head is not None else 0,
        dim=dim,
        depth=len(layers),
        heads=attention.heads,
        mlp_dim=feed_forward.net[1].out_features,
        pool=model.pool,
        channels=patch_dim // (patch_h * patch_w),
        dim_head=round(attention.scale**-2),
        dropout=float(attention.dropout.p),
        emb_dropout=float(model.dropout.p),
    )


def vit_pytorch_table(config: ViTConfig) -> wt.Table:
    """vit-pytorch ``ViT`` <-> ``hf_vit_flax.ViT``: its key map, in both directions."""
    # vit-pytorch drops the output projection when one head spans the whole width.
    project_out = not (config.heads == 1 and config.dim_head == config.dim)
    return [
        *patch_embedding_table("to_patch_embedding", "patch_embed"),
        *(wt.param("cls_token", "cls_token") if config.pool == "cls" else []),
        *wt.param("pos_embedding", "pos_embedding"),
        *transformer_table(
            "transformer", "transformer", config.depth, VIT_PYTORCH_BLOCK, qkv_bias=False, project_out=project_out
        ),
        *(wt.linear("mlp_head", "head") if config.num_labels > 0 else []),
    ]


def convert_vit_pytorch(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
    """vit-pytorch ``ViT`` state dict (numpy) -> the params of ``hf_vit_flax.ViT`` (unchecked tree)."""
    # With pool='mean', vit-pytorch keeps an empty (0, dim) class token that nothing reads.
    unused = ("cls_token",) if config.pool != "cls" else ()
    return wt.to_flax(state_dict, vit_pytorch_table(config), what="vit-pytorch ViT", ignore=unused)


def export_vit_pytorch(params: Mapping, config: ViTConfig) -> dict[str, np.ndarray]:
    """``hf_vit_flax.ViT`` params -> a state dict that vit-pytorch's ``ViT`` loads with ``strict=True``."""
    state_dict = wt.to_torch(params, vit_pytorch_table(config), what="ViT -> vit-pytorch")
    if config.pool != "cls":
        state_dict["cls_token"] = np.zeros((0, config.dim), np.float32)
    return state_dict


def vit_pytorch_kwargs(config: ViTConfig) -> dict[str, Any]:
    """The constructor arguments of vit-pytorch's ``ViT`` for this config (the inverse of
    ``config_from_vit_pytorch``), or ``NotImplementedError`` naming the timm options vit-pytorch lacks."""
    defaults = ViTConfig()
    timm_options = (
        "patch_embedding",
        "qkv_bias",
        "reg_tokens",
        "distilled",
        "no_embed_class",
        "pre_norm",
        "fc_norm",
        "layer_scale_init",
        "mlp_activation",
        "drop_path_rate",
        "head_dropout",
        "layer_norm_eps",
        "final_norm",
    )
    changed = [
        f"{name}={getattr(config, name)!r}" for name in timm_options if getattr(config, name) != getattr(defaults, name)
    ]
    if config.class_token is not None and config.class_token != (config.pool == "cls"):
        changed.append(f"class_token={config.class_token}")
    if config.pool not in ("cls", "mean"):
        changed.append(f"pool={config.pool!r}")
    if changed:
        raise NotImplementedError("vit-pytorch's ViT does not express " + ", ".join(changed))
    names = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "channels", "dim_head")
    return dict(num_classes=config.num_labels, **same_named(config, *names, "dropout", "emb_dropout"))


# -- timm ---------------------------------------------------------------------------------------------

# timm activation modules -> ``ViTConfig.mlp_activation``.
_TIMM_ACTIVATIONS = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}


def _is_identity(module: Any) -> bool:
    return module is None or type(module).__name__ == "Identity"


def _dropout_rate(module: Any) -> float:
    return 0.0 if _is_identity(module) else float(module.p)


def _layer_norm_eps(module: Any, where: str, missing: list[str]) -> float | None:
    """eps of a LayerNorm with scale and bias; anything else is recorded as a missing feature."""
    name = type(module).__name__
    if name != "LayerNorm":
        missing.append(f"{name} normalisation in {where} (only LayerNorm is expressed)")
        return None
    if getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
        missing.append(f"a LayerNorm without scale or bias in {where}")
        return None
    return float(module.eps)


def _activation(act: Any, missing: list[str]) -> str | None:
    name = type(act).__name__
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if name in _TIMM_ACTIVATIONS:
        return _TIMM_ACTIVATIONS[name]
    missing.append(f"MLP activation {name} (expressed: {', '.join(sorted(_TIMM_ACTIVATIONS))})")
    return None


class _TimmOptions:
    """Reads ``ViTConfig`` options off a live timm model, collecting every feature ``ViT`` does not express."""

    def __init__(self, model: Any):
        self.model = model
        self.missing: list[str] = []
        self.eps: set[float] = set()

    def norm(self, module: Any, where: str) -> bool:
        """True for a LayerNorm (its eps recorded), False for Identity; anything else is recorded as missing."""
        if _is_identity(module):
            return False
        value = _layer_norm_eps(module, where, self.missing)
        if value is not None:
            self.eps.add(value)
        return True

    def check(self) -> None:
        if self.missing:
            raise NotImplementedError(_missing_message(self.model, self.missing))


def config_from_timm(model: Any) -> ViTConfig:
    """Read a ``ViTConfig`` off a live timm ``VisionTransformer`` / ``VisionTransformerDistilled``.

    Duck-typed (torch is never imported here). Anything timm can build that ``ViT`` does not
    express (another block, attention or MLP type, a non-LayerNorm norm, attention pooling, a
    dynamic image size, patch dropout, qk-norm ...) raises ``NotImplementedError`` naming every such
    feature, rather than yielding a model that computes something else.
    """
    cls = type(model).__name__
    if cls not in ("VisionTransformer", "VisionTransformerDistilled"):
        raise NotImplementedError(
            f"timm {cls} is not expressed by the ViT family (only VisionTransformer and VisionTransformerDistilled)"
        )
    reader = _TimmOptions(model)
    options = {**_timm_embedding(reader), **_timm_pooling(reader), **_timm_blocks(reader)}
    reader.check()
    if len(reader.eps) > 1:
        reader.missing.append(f"LayerNorms with different eps {sorted(reader.eps)}")
        reader.check()
    return ViTConfig(**options, layer_norm_eps=reader.eps.pop() if reader.eps else 1e-6)


def _size(value: tuple[int, int]):
    return value[0] if value[0] == value[1] else value


def _timm_embedding(reader: _TimmOptions) -> dict[str, Any]:
    """Patch embedding, prefix tokens, position embedding and ``norm_pre``."""
    model, missing = reader.model, reader.missing
    embed = model.patch_embed
    if getattr(model, "dynamic_img_size", False):
        missing.append("a dynamic image size (dynamic_img_size=True)")
    if type(embed).__name__ != "PatchEmbed":
        missing.append(f"patch embedding {type(embed).__name__} (only the plain conv PatchEmbed is expressed)")
        reader.check()
    if getattr(embed, "dynamic_img_pad", False):
        missing.append("dynamic image padding (dynamic_img_pad=True)")
    if not _is_identity(getattr(embed, "norm", None)):
        missing.append("a normalisation layer inside the patch embedding (embed_norm_layer)")
    if not getattr(embed, "flatten", True):
        missing.append("a patch embedding that does not flatten its output")
    proj = embed.proj
    patch_size = tuple(int(p) for p in embed.patch_size)
    if (
        tuple(proj.kernel_size) != patch_size
        or tuple(proj.stride) != patch_size
        or tuple(proj.padding) != (0, 0)
        or tuple(proj.dilation) != (1, 1)
        or proj.groups != 1
    ):
        missing.append("a patch-embedding convolution other than kernel = stride = patch size without padding")
    if getattr(model, "pos_embed", None) is None:
        missing.append("no absolute position embedding (pos_embed='none')")
    if not _is_identity(getattr(model, "patch_drop", None)):
        missing.append("patch dropout (patch_drop_rate > 0)")
    distilled = type(model).__name__ == "VisionTransformerDistilled"
    reg_tokens = int(getattr(model, "num_reg_tokens", 0) or 0)
    if distilled and reg_tokens:
        missing.append("register tokens together with a distillation token")
    return dict(
        image_size=_size(tuple(int(s) for s in embed.img_size)),
        patch_size=_size(patch_size),
        channels=int(proj.in_channels),
        dim=int(model.embed_dim),
        patch_embedding="conv",
        patch_bias=proj.bias is not None,
        class_token=getattr(model, "cls_token", None) is not None,
        reg_tokens=reg_tokens,
        distilled=distilled,
        no_embed_class=bool(getattr(model, "no_embed_class", False)),
        emb_dropout=_dropout_rate(getattr(model, "pos_drop", None)),
        pre_norm=reader.norm(getattr(model, "norm_pre", None), "norm_pre"),
    )


def _timm_pooling(reader: _TimmOptions) -> dict[str, Any]:
    """Pooling, the final norm (on the tokens or after pooling) and the head."""
    model, missing = reader.model, reader.missing
    global_pool = model.global_pool
    if global_pool == "map":
        _check_attention_pool(model, missing, reader.norm)
    elif getattr(model, "attn_pool", None) is not None:
        missing.append(f"attention pooling {type(model.attn_pool).__name__} (global_pool={global_pool!r})")
    elif global_pool not in ("token", "avg"):
        missing.append(f"global_pool={global_pool!r} (expressed: 'token', 'avg' and 'map')")
    if getattr(model, "pool_include_prefix", False):
        missing.append("pooling that includes the prefix tokens (pool_include_prefix=True)")
    has_norm = reader.norm(model.norm, "norm")
    has_fc_norm = reader.norm(model.fc_norm, "fc_norm")
    return dict(
        pool={"token": "cls", "avg": "mean"}.get(global_pool, global_pool),
        final_norm=has_norm or has_fc_norm,
        fc_norm=has_fc_norm,
        num_classes=int(model.head.out_features) if not _is_identity(model.head) else 0,
        head_dropout=_dropout_rate(getattr(model, "head_drop", None)),
    )


def _timm_block(reader: _TimmOptions, block: Any, where: str) -> tuple | None:
    """One block's shape (compared across blocks), or ``None`` when its type is not expressed at all."""
    missing = reader.missing
    if type(block).__name__ != "Block":
        missing.append(f"block type {type(block).__name__} (only the pre-norm Block is expressed)")
        return None
    attn, mlp = block.attn, block.mlp
    if type(attn).__name__ != "Attention":
        missing.append(f"attention type {type(attn).__name__}")
        return None
    if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
        missing.append("qk_norm (a norm on queries and keys)")
    if not _is_identity(getattr(attn, "norm", None)):
        missing.append("scale_attn_norm (a norm before the attention projection)")
    if getattr(attn, "gate", None) is not None:
        missing.append("gated attention")
    if attn.proj.bias is None:
        missing.append("proj_bias=False")
    if type(mlp).__name__ != "Mlp" or type(mlp.fc1).__name__ != "Linear":
        missing.append(f"MLP type {type(mlp).__name__} (only the two-layer Mlp is expressed)")
        return None
    if not _is_identity(getattr(mlp, "norm", None)):
        missing.append("scale_mlp_norm (a norm inside the MLP)")
    if mlp.fc1.bias is None or mlp.fc2.bias is None:
        missing.append("an MLP without biases")
    reader.norm(block.norm1, f"{where}.norm1")
    reader.norm(block.norm2, f"{where}.norm2")
    if _is_identity(block.ls1) != _is_identity(block.ls2):
        missing.append("LayerScale on only one branch of a block")
    layer_scale = None if _is_identity(block.ls1) else float(block.ls1.init_values)
    dropouts = (attn.attn_drop, attn.proj_drop, mlp.drop1, mlp.drop2)
    return (
        int(attn.num_heads),
        int(attn.head_dim),
        int(attn.qkv.out_features),
        attn.qkv.bias is not None,
        int(mlp.fc1.out_features),
        _activation(mlp.act, missing),
        layer_scale,
        frozenset(_dropout_rate(d) for d in dropouts),
    )


def _timm_blocks(reader: _TimmOptions) -> dict[str, Any]:
    """The blocks, which must all be alike, and their stochastic-depth schedule."""
    blocks = list(reader.model.blocks)
    found: set[tuple] = set()
    for i, block in enumerate(blocks):
        shape = _timm_block(reader, block, f"blocks.{i}")
        if shape is None:
            break
        found.add(shape)
    if len(found) > 1:
        reader.missing.append("blocks that differ from each other")
    reader.check()
    if not found:
        raise NotImplementedError(_missing_message(reader.model, ["a model without blocks"]))
    heads, head_dim, qkv_out, qkv_bias, mlp_dim, activation, layer_scale, dropouts = found.pop()
    if len(dropouts) > 1:
        reader.missing.append(f"different dropout rates in attention and MLP {sorted(dropouts)}")
    if qkv_out != 3 * heads * head_dim:
        reader.missing.append(f"a qkv projection of width {qkv_out}")
    drop_path = [0.0 if _is_identity(b.drop_path1) else float(b.drop_path1.drop_prob) for b in blocks]
    # timm computes the schedule in float32 (torch.linspace): 0.10000000149 is the 0.1 it was given.
    drop_path_rate = float(str(np.float32(drop_path[-1])))
    expected = [drop_path_rate * i / max(len(blocks) - 1, 1) for i in range(len(blocks))]
    if any(abs(a - b) > 1e-6 for a, b in zip(drop_path, expected, strict=True)):
        reader.missing.append("a stochastic-depth schedule that is not linear")
    reader.check()
    return dict(
        depth=len(blocks),
        heads=heads,
        dim_head=head_dim,
        mlp_dim=mlp_dim,
        qkv_bias=bool(qkv_bias),
        mlp_activation=activation or "gelu",
        layer_scale_init=layer_scale,
        dropout=next(iter(dropouts)),
        drop_path_rate=drop_path_rate,
    )


def _check_attention_pool(model: Any, missing: list[str], norm) -> None:
    """timm's ``AttentionPoolLatent`` as ``VisionTransformer`` builds it for ``global_pool='map'``, nothing else."""
    pool = model.attn_pool
    if type(pool).__name__ != "AttentionPoolLatent":
        missing.append(f"attention pooling {type(pool).__name__}")
        return
    block = model.blocks[0]
    dim = int(model.embed_dim)
    if (
        getattr(pool, "latent_len", 1) != 1
        or getattr(pool, "pos_embed", None) is not None
        or type(pool.q).__name__ != "Linear"
        or pool.q.bias is None
        or pool.kv.bias is None
        or not (_is_identity(pool.q_norm) and _is_identity(pool.k_norm))
        or getattr(pool, "pool", "token") != "token"
        or getattr(pool, "mlp", None) is None
        or int(pool.out_features) != dim
        or int(pool.latent_dim) != dim
        or int(pool.num_heads) != int(getattr(block.attn, "num_heads", -1))
        or int(pool.mlp.fc1.out_features) != int(getattr(getattr(block, "mlp", None), "fc1", pool.mlp.fc1).out_features)
        or type(pool.mlp.act).__name__ != type(getattr(getattr(block, "mlp", None), "act", pool.mlp.act)).__name__
    ):
        missing.append("an attention-pooling head other than timm's default for global_pool='map'")
    if not norm(pool.norm, "attn_pool.norm"):
        missing.append("an attention-pooling head without its LayerNorm")


def _missing_message(model: Any, missing: list[str]) -> str:
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    unique = list(dict.fromkeys(missing))
    return f"timm {arch} uses what hf_vit_flax's ViT does not express: " + "; ".join(unique)


def timm_table(config: ViTConfig) -> wt.Table:
    """timm ``VisionTransformer`` / ``VisionTransformerDistilled`` <-> ``hf_vit_flax.ViT``: its key map."""
    if config.patch_embedding != "conv":
        raise ValueError("a timm checkpoint needs ViTConfig(patch_embedding='conv', ...) (timm's conv PatchEmbed)")
    tokens = {"cls_token": config.has_class_token, "reg_token": config.reg_tokens > 0, "dist_token": config.distilled}
    fc_norm = config.final_norm and config.fc_norm
    return [
        *conv_patch_embedding_table("patch_embed", "patch_embed", bias=config.patch_bias),
        *(wt.Entry(name, name, wt.TOKEN) for name, present in tokens.items() if present),
        wt.Entry("pos_embed", "pos_embedding", wt.TOKEN),
        *(wt.norm("norm_pre", "norm_pre") if config.pre_norm else []),
        *transformer_table(
            "",
            "transformer",
            config.depth,
            TIMM_BLOCK,
            torch_blocks="blocks",
            final_norm="norm" if config.final_norm and not config.fc_norm else None,
            qkv_bias=config.qkv_bias,
            layer_scale=config.layer_scale_init is not None,
        ),
        *(attention_pool_table("attn_pool", "attn_pool") if config.pool == "map" else []),
        *(wt.norm("fc_norm", "fc_norm") if fc_norm else []),
        *(wt.linear("head", "head") if config.num_labels > 0 else []),
        *(wt.linear("head_dist", "head_dist") if config.num_labels > 0 and config.distilled else []),
    ]


def convert_timm(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
    """timm ``VisionTransformer`` / ``VisionTransformerDistilled`` state dict (numpy) -> ``ViT`` params.

    The position embedding is resampled (bicubic, antialiased, prefix tokens kept, as timm's
    ``checkpoint_filter_fn``) when the checkpoint's grid differs from the config's image size.
    The result is checked strictly by ``FlaxViTForImageClassification.from_params``.
    """
    params = wt.to_flax(state_dict, timm_table(config), what="timm VisionTransformer")
    params["pos_embedding"] = _fit_pos_embed(params["pos_embedding"], config)
    return params


def export_timm(params: Mapping, config: ViTConfig) -> dict[str, np.ndarray]:
    """``hf_vit_flax.ViT`` params -> a state dict that timm's ``VisionTransformer`` loads with ``strict=True``."""
    return wt.to_torch(params, timm_table(config), what="ViT -> timm")


def _fit_pos_embed(pos_embedding: np.ndarray, config: ViTConfig) -> np.ndarray:
    """Position embeddings ``(n, dim)`` resampled to the config's patch grid when their grid differs."""
    num_prefix = int(config.has_class_token) + int(config.reg_tokens) + int(config.distilled)
    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    grid = (height // patch_h, width // patch_w)
    in_pos = 0 if config.no_embed_class else num_prefix
    positions = pos_embedding.shape[0]
    if positions == grid[0] * grid[1] + in_pos:
        return pos_embedding
    side = math.isqrt(max(positions - in_pos, 0))
    if side * side != positions - in_pos:
        raise ValueError(
            f"pos_embed has {positions} positions, which is no square grid after {in_pos} prefix "
            f"tokens (the config expects {grid[0]}x{grid[1]} + {in_pos}): the checkpoint does not match the "
            f"configuration (another architecture, or class/register/distillation tokens, or no_embed_class)"
        )
    return resample_abs_pos_embed(pos_embedding, grid, num_prefix_tokens=in_pos)


# -- the options timm and transformers take as they are, under their own names ---------------------------

# One row per option: (our name, timm's VisionTransformer argument, transformers' ViTConfig field), None where
# that reference has no such argument. What they compute from several options is set where they are built.
RENAMED_OPTIONS = (
    ("channels", "in_chans", "num_channels"),
    ("dim", "embed_dim", "hidden_size"),
    ("depth", "depth", "num_hidden_layers"),
    ("heads", "num_heads", "num_attention_heads"),
    ("mlp_dim", None, "intermediate_size"),
    ("qkv_bias", "qkv_bias", "qkv_bias"),
    ("layer_norm_eps", None, "layer_norm_eps"),
    ("layer_scale_init", "init_values", None),
    ("has_class_token", "class_token", None),
    ("no_embed_class", "no_embed_class", None),
    ("reg_tokens", "reg_tokens", None),
    ("pre_norm", "pre_norm", None),
    ("final_norm", "final_norm", None),
    ("mlp_activation", "act_layer", None),
    ("head_dropout", "drop_rate", None),
    ("emb_dropout", "pos_drop_rate", None),
    ("dropout", "proj_drop_rate", "hidden_dropout_prob"),
    ("dropout", "attn_drop_rate", "attention_probs_dropout_prob"),
    ("drop_path_rate", "drop_path_rate", None),
)


def renamed_options(config: ViTConfig, reference: str) -> dict[str, Any]:
    """``config``'s options under the names of ``reference`` (``"timm"`` or ``"transformers"``): :data:`RENAMED_OPTIONS`."""
    column = 1 + ("timm", "transformers").index(reference)
    return {row[column]: getattr(config, row[0]) for row in RENAMED_OPTIONS if row[column] is not None}


# -- back to timm: the architecture and arguments that rebuild a ViT there -----------------------------

# timm builds its ViTs with LayerNorm eps 1e-6, and its CLIP towers with 1e-5; the arguments below
# override everything else of the named architecture.
_TIMM_BASE = {1e-6: "vit_base_patch16_224", 1e-5: "vit_base_patch16_clip_224"}


def timm_architecture(config: ViTConfig) -> tuple[str, dict[str, Any]]:
    """The timm architecture and ``model_args`` that build this ViT in timm (as its Hub ``config.json``
    records them), or ``NotImplementedError`` naming what timm's ``VisionTransformer`` cannot express."""
    missing = []
    if config.patch_embedding != "conv":
        missing.append("vit-pytorch's patch LayerNorm -> Linear -> LayerNorm embedding (timm has a conv)")
    if config.heads * config.dim_head != config.dim:
        missing.append(f"heads * dim_head = {config.heads * config.dim_head} != dim = {config.dim}")
    if config.patch_bias == config.pre_norm:
        missing.append("a patch-embedding bias together with norm_pre, or neither (timm has exactly one)")
    eps = min(_TIMM_BASE, key=lambda e: abs(e - config.layer_norm_eps))
    if not math.isclose(eps, config.layer_norm_eps, rel_tol=1e-6):
        missing.append(f"layer_norm_eps={config.layer_norm_eps} (timm's ViTs use 1e-6, its CLIP towers 1e-5)")
    if config.distilled and eps != 1e-6:
        missing.append("a distilled ViT with layer_norm_eps other than 1e-6")
    mlp_ratio = config.mlp_dim / config.dim
    if int(config.dim * mlp_ratio) != config.mlp_dim:
        missing.append(f"mlp_dim={config.mlp_dim}, which is no ratio of dim={config.dim} timm rounds back to")
    if missing:
        raise NotImplementedError("this ViT cannot be written as a timm model: " + "; ".join(missing))
    architecture = "deit_base_distilled_patch16_224" if config.distilled else _TIMM_BASE[eps]
    image_size, patch_size = pair(config.image_size), pair(config.patch_size)
    args = dict(
        img_size=list(image_size),
        patch_size=list(patch_size),
        num_classes=config.num_labels,
        global_pool={"cls": "token", "mean": "avg"}.get(config.pool, config.pool),
        mlp_ratio=mlp_ratio,
        fc_norm=config.final_norm and config.fc_norm,
        **renamed_options(config, "timm"),
    )
    return architecture, args
