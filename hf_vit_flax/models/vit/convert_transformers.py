"""transformers' own ViT / DeiT checkpoints <-> ``hf_vit_flax.ViT`` (pure numpy; no torch or transformers import).

transformers' classes and the ViT options that compute the same function:

  ViTForImageClassification                 conv embedding, class token, qkv bias, head on the class token
  ViTModel (with its pooler)                headless; ``pooler=True``: pooler_output = tanh(dense(class token))
  DeiTForImageClassificationWithTeacher     ``distilled=True``: heads ``head`` / ``head_dist``, logits their mean
  DeiTForImageClassification, DeiTModel     ``reg_tokens=1``: DeiT's distillation token sits right after the
                                            class token, with a position embedding, and no head reads it:
                                            exactly a register token with ``no_embed_class=False``

Key map (the names of the checkpoints on the Hub, which both transformers lines read and write;
transformers 5's modules carry other names, renamed here first):

  {base}.embeddings.patch_embeddings.projection -> patch_embed.proj (Conv)
  {base}.embeddings.{cls_token, distillation_token, position_embeddings} (1, n, d)
                                            -> cls_token, dist_token or reg_token, pos_embedding (n, d)
  {base}.encoder.layer.i.{layernorm_before, attention.attention.{query,key,value}, attention.output.dense,
      layernorm_after, intermediate.dense, output.dense}
                                            -> transformer.blocks_i.{norm1, attn.qkv (fused), attn.proj,
                                               norm2, mlp.fc1, mlp.fc2}
  {base}.layernorm, {base}.pooler.dense     -> transformer.norm, pooler
  classifier | cls_classifier, distillation_classifier -> head | head, head_dist

``{base}`` is ``vit.`` / ``deit.`` in a checkpoint with a head and empty in a base model's. The
separate query / key / value projections become our fused ``qkv`` in a step before the table
(:func:`fuse_qkv`) and are split again after it (:func:`split_qkv`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import weight_tables as wt
from ...layers import TRANSFORMERS_BLOCK, transformer_table
from .configuration_vit import ViTConfig
from .convert_vit import renamed_options

MODEL_TYPES = ("vit", "deit")

# transformers ``hidden_act`` <-> ``ViTConfig.mlp_activation``. "gelu_new" and "gelu_fast" are the tanh
# approximation written out; "gelu_pytorch_tanh" is PyTorch's own.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}
EXPORTED_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}

# transformers 5's module names -> the checkpoint names (the inverse of its "ViTModel" conversion mapping).
_MODULAR_NAMES = [
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"\.attention\.([qkv])_proj\.", lambda m: f".attention.attention.{dict(q='query', k='key', v='value')[m[1]]}."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
_HEADS = ("classifier.", "cls_classifier.", "distillation_classifier.")
_QKV = re.compile(r"^(.*\.attention\.attention)\.(query|key|value)\.(weight|bias)$")


# -- layout steps around the table ------------------------------------------------------------------


def checkpoint_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A state dict with the checkpoint names, whether it comes from a file or from a live transformers 5 module."""
    if not any(re.search(r"(^|\.)layers\.\d+\.", key) for key in state_dict):
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in _MODULAR_NAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def fuse_qkv(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' ``query`` / ``key`` / ``value`` Linear layers -> one ``qkv`` Linear (rows q, then k, then v).

    Our attention splits its fused projection as ``(3, heads, head_dim)``, transformers' each projection
    as ``(heads, head_dim)``: stacking the three weights row-wise is the whole conversion.
    """
    out, parts = {}, {}
    for key, value in state_dict.items():
        match = _QKV.match(key)
        if match is None:
            out[key] = value
        else:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
    for (prefix, kind), found in parts.items():
        if len(found) != 3:
            names = ", ".join(f"{prefix}.{p}.{kind}" for p in ("query", "key", "value") if p not in found)
            raise wt.WeightMismatchError(f"the checkpoint has no {names}")
        out[f"{prefix}.qkv.{kind}"] = np.concatenate([found["query"], found["key"], found["value"]], axis=0)
    return out


def split_qkv(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`fuse_qkv`."""
    out = {}
    for key, value in state_dict.items():
        match = re.match(r"^(.*\.attention\.attention)\.qkv\.(weight|bias)$", key)
        if match is None:
            out[key] = value
            continue
        for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0), strict=True):
            out[f"{match[1]}.{name}.{match[2]}"] = np.ascontiguousarray(part)
    return out


# -- what a checkpoint holds ------------------------------------------------------------------------


def _base(model_type: str, state_dict: Mapping[str, Any]) -> str:
    """The base model's prefix in a checkpoint (``vit`` / ``deit``), or "" for a base model's own checkpoint."""
    return model_type if any(k.startswith(f"{model_type}.") for k in state_dict) else ""


def _strip_base(model_type: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    base = _base(model_type, state_dict)
    return {k.removeprefix(f"{base}.") if base else k: v for k, v in state_dict.items()}


def config_from_transformers(hf_config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> ViTConfig:
    """The ``ViTConfig`` of a transformers ViT / DeiT checkpoint: its ``config.json`` (a dict) and its tensors.

    The head (none, ``classifier``, or DeiT's two teacher heads), the pooler and the distillation token are
    read off the tensor names, the rest off the config. Whatever ViT does not express raises
    ``NotImplementedError`` naming every such feature. ``hidden_dropout_prob`` becomes ``dropout`` and
    ``emb_dropout`` (training only; ViT's MLP also drops after its activation, as timm's does).
    """
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise NotImplementedError(f"transformers model_type {model_type!r} is not a ViT or DeiT checkpoint")
    keys = _strip_base(model_type, checkpoint_names(state_dict))
    missing = []
    if "embeddings.mask_token" in keys:
        missing.append("a mask token (use_mask_token=True, for masked image modeling)")
    if any(k.startswith("decoder.") for k in keys):
        missing.append("the masked-image-modeling decoder (ViTForMaskedImageModeling)")
    activation = ACTIVATIONS.get(hf_config.get("hidden_act", "gelu"))
    if activation is None:
        missing.append(f"hidden_act={hf_config['hidden_act']!r} (expressed: {', '.join(ACTIVATIONS)})")
    dim, heads = int(hf_config.get("hidden_size", 768)), int(hf_config.get("num_attention_heads", 12))
    if not hf_config.get("head_dim") and dim % heads:
        missing.append(f"hidden_size {dim} not divisible by num_attention_heads {heads}")
    dim_head = int(hf_config.get("head_dim") or dim // heads)
    pooler = "pooler.dense.weight" in keys
    if pooler and hf_config.get("pooler_act", "tanh") != "tanh":
        missing.append(f"pooler_act={hf_config['pooler_act']!r} (only tanh is expressed)")
    if pooler and hf_config.get("pooler_output_size") not in (None, dim):
        missing.append(f"a pooler of width {hf_config['pooler_output_size']} (pooler_output_size != hidden_size)")
    hidden_dropout = float(hf_config.get("hidden_dropout_prob", 0.0))
    if float(hf_config.get("attention_probs_dropout_prob", 0.0)) != hidden_dropout:
        missing.append(
            "different dropout rates for attention probabilities and hidden states (ViT has one rate; dropout acts "
            "only in training, so setting both to one value in config.json changes no output)"
        )
    if missing:
        raise NotImplementedError(
            f"this transformers {model_type} checkpoint uses what hf_vit_flax's ViT does not express: "
            + "; ".join(missing)
        )
    teacher = "cls_classifier.weight" in keys
    head = keys.get("cls_classifier.weight", keys.get("classifier.weight"))
    distillation_token = model_type == "deit" or "embeddings.distillation_token" in keys
    return ViTConfig(
        image_size=_size(hf_config.get("image_size", 224)),
        patch_size=_size(hf_config.get("patch_size", 16)),
        num_classes=int(np.shape(head)[0]) if head is not None else 0,
        dim=dim,
        depth=int(hf_config.get("num_hidden_layers", 12)),
        heads=heads,
        dim_head=dim_head,
        mlp_dim=int(hf_config.get("intermediate_size", 3072)),
        channels=int(hf_config.get("num_channels", 3)),
        dropout=hidden_dropout,
        emb_dropout=hidden_dropout,
        layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-12)),
        patch_embedding="conv",
        qkv_bias=bool(hf_config.get("qkv_bias", True)),
        class_token=True,
        reg_tokens=int(distillation_token and not teacher),
        distilled=teacher,
        mlp_activation=activation,
        pooler=pooler,
    )


def _size(value: Any) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return value[0] if value[0] == value[1] else (int(value[0]), int(value[1]))
    return int(value)


# -- the table ----------------------------------------------------------------------------------------


def transformers_model_type(config: ViTConfig) -> str:
    """``"deit"`` for a model with DeiT's distillation token (``distilled`` or one register token), else ``"vit"``."""
    return "deit" if config.distilled or config.reg_tokens == 1 else "vit"


def transformers_architecture(config: ViTConfig) -> str:
    """The transformers class that holds a model of ``config`` (see the module docstring)."""
    model_type = transformers_model_type(config)
    if config.num_labels <= 0:
        return "DeiTModel" if model_type == "deit" else "ViTModel"
    if config.distilled:
        return "DeiTForImageClassificationWithTeacher"
    return "DeiTForImageClassification" if model_type == "deit" else "ViTForImageClassification"


def transformers_table(config: ViTConfig) -> wt.Table:
    """transformers ``ViT*`` / ``DeiT*`` (checkpoint names, fused qkv) <-> ``hf_vit_flax.ViT``: its key map."""
    check_transformers_expressible(config)
    base = transformers_model_type(config) if config.num_labels > 0 else ""
    p = lambda name: wt.join(base, name, ".")  # noqa: E731
    distillation_token = "dist_token" if config.distilled else "reg_token" if config.reg_tokens else None
    heads = []
    if config.num_labels > 0 and config.distilled:
        heads = [*wt.linear("cls_classifier", "head"), *wt.linear("distillation_classifier", "head_dist")]
    elif config.num_labels > 0:
        heads = wt.linear("classifier", "head")
    return [
        *wt.conv(p("embeddings.patch_embeddings.projection"), "patch_embed/proj"),
        wt.Entry(p("embeddings.cls_token"), "cls_token", wt.TOKEN),
        *([wt.Entry(p("embeddings.distillation_token"), distillation_token, wt.TOKEN)] if distillation_token else []),
        wt.Entry(p("embeddings.position_embeddings"), "pos_embedding", wt.TOKEN),
        *transformer_table(
            p("encoder"),
            "transformer",
            config.depth,
            TRANSFORMERS_BLOCK,
            torch_blocks="layer",
            final_norm=None,
            qkv_bias=config.qkv_bias,
        ),
        *wt.norm(p("layernorm"), "transformer/norm"),
        *(wt.linear(p("pooler.dense"), "pooler") if config.pooler else []),
        *heads,
    ]


def check_transformers_expressible(config: ViTConfig) -> None:
    """Raise ``NotImplementedError`` naming every option of ``config`` that transformers' ViT / DeiT classes lack."""
    missing = []
    if config.patch_embedding != "conv":
        missing.append("vit-pytorch's patch embedding (patch_embedding='norm_linear'; transformers has the conv one)")
    elif not config.patch_bias:
        missing.append("a patch embedding without bias (patch_bias=False)")
    if config.pool != "cls" or not config.has_class_token:
        missing.append(f"pool={config.pool!r} (transformers reads the class token)")
    if config.reg_tokens > 1 or (config.reg_tokens and config.distilled):
        missing.append(f"{config.reg_tokens} register tokens (DeiT's distillation token is the only one expressed)")
    if config.no_embed_class:
        missing.append("position embeddings for the patches only (no_embed_class=True)")
    if config.pre_norm:
        missing.append("a norm before the blocks (pre_norm=True)")
    if not config.final_norm or config.fc_norm:
        missing.append("a final norm after pooling (fc_norm=True)" if config.fc_norm else "no final norm")
    if config.layer_scale_init is not None:
        missing.append("LayerScale (layer_scale_init)")
    if config.heads * config.dim_head != config.dim:
        missing.append(f"heads * dim_head = {config.heads * config.dim_head} != dim = {config.dim}")
    if config.mlp_activation not in EXPORTED_ACTIVATIONS:
        missing.append(f"mlp_activation={config.mlp_activation!r}")
    if config.pooler and config.num_labels > 0:
        missing.append("a classification head that reads the pooler (transformers' heads read the class token)")
    if missing:
        raise NotImplementedError(
            "transformers' ViT and DeiT classes cannot express this ViT: " + "; ".join(dict.fromkeys(missing))
        )


# -- both directions -------------------------------------------------------------------------------------


def convert_transformers(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
    """A transformers ViT / DeiT state dict (numpy, checkpoint or transformers 5 module names) -> ``ViT`` params.

    As transformers itself does when a checkpoint is loaded into a class without them, a classifier is
    dropped for a headless ``config`` and a pooler for one with ``pooler=False``; anything else the
    table does not name raises ``ValueError``.
    """
    model_type = transformers_model_type(config)
    base = model_type if config.num_labels > 0 else ""  # the base model's prefix, as in transformers_table
    state = {
        key if not base or key.startswith(_HEADS) else f"{base}.{key}": value
        for key, value in _strip_base(model_type, checkpoint_names(state_dict)).items()
    }
    unused = [k for k in state if config.num_labels <= 0 and k.startswith(_HEADS)]
    unused += [k for k in state if not config.pooler and k.startswith(wt.join(base, "pooler.", "."))]
    what = f"transformers {transformers_architecture(config)}"
    return wt.to_flax(fuse_qkv(state), transformers_table(config), what=what, ignore=unused)


def export_transformers(params: Mapping, config: ViTConfig) -> dict[str, np.ndarray]:
    """``hf_vit_flax.ViT`` params -> the state dict of :func:`transformers_architecture` (checkpoint names)."""
    return split_qkv(wt.to_torch(params, transformers_table(config), what="ViT -> transformers"))


def config_to_transformers(config: ViTConfig) -> dict[str, Any]:
    """The ``config.json`` of :func:`transformers_architecture` for ``config`` (model_type, architectures ...).

    Dropout rates carry over as ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` (``dropout``);
    they and the rates transformers' ViT has no place for (``emb_dropout``, ``drop_path_rate``,
    ``head_dropout``) act only in training.
    """
    check_transformers_expressible(config)
    out: dict[str, Any] = dict(
        model_type=transformers_model_type(config),
        architectures=[transformers_architecture(config)],
        hidden_act=EXPORTED_ACTIVATIONS[config.mlp_activation],
        image_size=config.image_size,
        patch_size=config.patch_size,
        **renamed_options(config, "transformers"),
    )
    if config.num_labels > 0:
        out["id2label"] = {int(k): v for k, v in config.id2label.items()}
        out["label2id"] = {v: int(k) for k, v in config.id2label.items()}
    return out
