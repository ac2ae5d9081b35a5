"""transformers' own checkpoints (``google/vit-*``, ``facebook/deit-*``, ``facebook/dino-vit*``) -> the Flax
classes, and the Flax classes -> a folder transformers' PyTorch classes load.

A family's row in ``families.FAMILIES`` names the transformers ``model_type`` s it converts and its
converter's four functions (config and weights, both ways); this module reads and writes the files and
dispatches, so it never imports a family's module, nor torch (except for a ``pytorch_model.bin``) or
transformers' modeling code.

Files read: ``config.json`` (transformers' format), ``preprocessor_config.json`` (when present) and the
weights: ``model.safetensors`` (numpy, no torch), ``pytorch_model.bin`` (torch, ``weights_only=True``),
``flax_model.msgpack`` (transformers' Flax layout: ``kernel`` / ``scale`` / ``embedding``), or the index
of a sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from .checkpoint import read_json
from .configuration_utils import VisionTransformerConfig
from .conversion_utils import read_state_dict, to_numpy
from .families import FAMILIES, Family, family_of_config
from .hub import looks_like_path
from .modeling_utils import FlaxVisionPreTrainedModel
from .timm_weights import (
    CITATIONS,
    apply_overrides,
    check_num_classes_override,
    fetch_first,
    fetch_json,
    file_sha256,
    is_torch_module,
    model_from_weights,
)

__all__ = ["from_transformers", "save_transformers", "transformers_family"]

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
)

# What transformers checkpoints of neighbouring model types use that no family expresses.
_OTHER_MODEL_TYPES = {
    "dinov2": "LayerScale, position embeddings interpolated to every input size, a mask token",
    "dinov2_with_registers": "LayerScale, register tokens without position embeddings, a mask token",
    "vit_mae": "random patch masking and the MAE decoder",
    "vit_hybrid": "a convolutional (BiT) stem",
    "vit_msn": "ViTMSN's own classes",
    "beit": "relative position biases and LayerScale",
    "data2vec-vision": "relative position biases and LayerScale",
}


def transformers_family(hf_config: Mapping[str, Any]) -> Family:
    """The family that converts a transformers checkpoint of ``hf_config["model_type"]``."""
    model_type = hf_config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.transformers_model_types:
            return family
    converted = sorted(t for f in FAMILIES.values() for t in f.transformers_model_types)
    features = _other_features(hf_config)
    raise NotImplementedError(
        f"transformers model_type {model_type!r} is not expressed by any hf_vit_flax family"
        + (f" (it uses {features})" if features else "")
        + f"; converted transformers model types: {', '.join(converted)}"
    )


def _other_features(hf_config: Mapping[str, Any]) -> str:
    model_type = str(hf_config.get("model_type"))
    features = [_OTHER_MODEL_TYPES[model_type]] if model_type in _OTHER_MODEL_TYPES else []
    if hf_config.get("use_swiglu_ffn"):
        features.insert(0, "a SwiGLU feed-forward (use_swiglu_ffn=True)")
    if hf_config.get("num_register_tokens"):
        features.append(f"{hf_config['num_register_tokens']} register tokens")
    return ", ".join(features)


# -- reading checkpoints ----------------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    hf_config: dict
    state_dict: dict[str, np.ndarray]
    processor: dict | None = None
    origin: str = ""
    repo_id: str | None = None
    weights_file: str | None = None  # a local weights file (its sha256 goes to the model card)


def torch_names_from_flax(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' Flax layout (``.``-joined paths) -> its PyTorch names and layouts, as transformers'
    ``convert_flax_state_dict_to_pt`` does: ``kernel`` -> ``weight`` (a Dense's transposed, a Conv's
    ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``), ``scale`` and ``embedding`` -> ``weight``."""
    out = {}
    for key, value in flat.items():
        value = np.asarray(value)
        path, _, leaf = key.rpartition(".")
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value
            leaf = "weight"
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[f"{path}.{leaf}" if path else leaf] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _is_flax_layout(state_dict: Mapping[str, Any]) -> bool:
    return any(k.endswith((".kernel", ".scale", ".embedding")) for k in state_dict)


def read_flax_msgpack(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The parameters of a transformers ``flax_model.msgpack``, ``.``-joined, as numpy arrays."""
    from flax.serialization import msgpack_restore

    with open(path, "rb") as f:
        try:
            tree = msgpack_restore(f.read())
        except Exception as err:  # msgpack's own errors name no file
            raise ValueError(f"{path} is not a valid flax msgpack file ({type(err).__name__}: {err})") from err
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path} holds no parameter tree")
    tree = tree.get("params", tree) if set(tree) == {"params"} else tree
    return {k: np.asarray(v) for k, v in flatten_dict(dict(tree), sep=".").items()}


def read_weights(path: str, fetch_shard) -> dict[str, np.ndarray]:
    """A transformers weights file as a PyTorch-named state dict; ``fetch_shard(name)`` gives the local
    path of a shard named by an index file (``*.index.json``)."""
    if path.endswith(".index.json"):
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            state.update(read_weights(fetch_shard(shard), fetch_shard))
        if not state:
            raise ValueError(f"the index {path} names no weights")
        return state
    state = read_flax_msgpack(path) if path.endswith(".msgpack") else read_state_dict(path)
    return torch_names_from_flax(state) if _is_flax_layout(state) else state


def _read_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _read_local(path: Path) -> _Checkpoint:
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: a transformers checkpoint folder holds one")
    hf_config = _read_json(folder / CONFIG_NAME)
    transformers_family(hf_config)  # before reading weights that no family converts
    if path.is_dir():
        found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
        if not found:
            names = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"{folder} holds no transformers weights ({', '.join(WEIGHT_FILES)}); found {names}"
            )
        path = found[0]
    processor = _read_json(folder / PROCESSOR_NAME) if (folder / PROCESSOR_NAME).is_file() else None
    state_dict = read_weights(str(path), lambda shard: str(folder / shard))
    return _Checkpoint(hf_config, state_dict, processor, str(path), weights_file=str(path))


def _download(repo_id: str, hub_kwargs: dict) -> _Checkpoint:
    hf_config = fetch_json(repo_id, CONFIG_NAME, hub_kwargs)
    transformers_family(hf_config)  # before downloading weights that no family converts
    try:
        _, processor_path = fetch_first(repo_id, (PROCESSOR_NAME,), hub_kwargs, "image processor")
    except FileNotFoundError:  # a repo without one: the model's default processor
        processor = None
    else:
        processor = _read_json(Path(processor_path))
    _, path = fetch_first(repo_id, WEIGHT_FILES, hub_kwargs)
    state_dict = read_weights(path, lambda shard: fetch_first(repo_id, (shard,), hub_kwargs, "shard")[1])
    return _Checkpoint(hf_config, state_dict, processor, repo_id, repo_id=repo_id)


def _is_transformers_flax_model(source: Any) -> bool:
    return (
        type(source).__module__.startswith("transformers.")
        and hasattr(source, "params")
        and hasattr(source, "config")
        and not hasattr(source, "state_dict")
    )


def _read_source(source: Any, hub_kwargs: dict) -> _Checkpoint:
    if is_torch_module(source) and hasattr(source, "config"):
        name = type(source).__name__
        return _Checkpoint(source.config.to_dict(), to_numpy(source.state_dict()), origin=f"transformers {name}")
    if _is_transformers_flax_model(source):
        import jax

        flat = flatten_dict(jax.device_get(dict(source.params)), sep=".")
        return _Checkpoint(
            source.config.to_dict(), torch_names_from_flax(flat), origin=f"transformers {type(source).__name__}"
        )
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        return _read_local(Path(source))
    if isinstance(source, str):
        if looks_like_path(source):
            raise FileNotFoundError(f"{source} does not exist (no such local file or folder)")
        try:
            return _download(source, hub_kwargs)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (and no local file or folder {source!r} exists)") from err
        except OSError as err:
            raise OSError(f"{err} (and no local file or folder {source!r} exists)") from err
    raise TypeError(
        "from_transformers takes a Hub repo id, a local folder, or a transformers ViT / DeiT model (PyTorch, or "
        f"Flax on transformers 4.x); got {type(source).__name__}"
    )


# -- labels, preprocessing, card ---------------------------------------------------------------------------


def image_processor_from_dict(data: Mapping[str, Any]):
    """A checkpoint's ``preprocessor_config.json`` as this package's image processor (the same class as
    transformers' ``AutoImageProcessor`` gives, in its PIL/numpy form)."""
    from .image_processing import image_processor_class

    data = dict(data)
    legacy = str(data.pop("feature_extractor_type", "") or "").replace("FeatureExtractor", "ImageProcessor")
    name = str(data.get("image_processor_type") or legacy or "ViTImageProcessor")
    data.pop("processor_class", None)
    try:
        cls = image_processor_class(name)
    except ValueError:
        warnings.warn(
            f"the checkpoint's image processor {name} is none this package uses: its settings go to a "
            f"ViTImageProcessor",
            stacklevel=3,
        )
        cls = image_processor_class("ViTImageProcessor")
        data["image_processor_type"] = "ViTImageProcessor"
    return cls.from_dict(data)


def _card_data(checkpoint: _Checkpoint, config: VisionTransformerConfig, model_type: str) -> dict[str, Any]:
    citation = CITATIONS["deit_"] if model_type == "deit" or "deit" in (checkpoint.repo_id or "") else None
    data: dict[str, Any] = {
        "source": checkpoint.repo_id or os.path.basename(checkpoint.origin),
        "tags": ["transformers", model_type],
        "citation": citation or CITATIONS["vit_"],
    }
    if checkpoint.repo_id:
        data["title"] = checkpoint.repo_id.split("/")[-1]
    if checkpoint.weights_file:
        data["source_sha256"] = file_sha256(checkpoint.weights_file)
    return data


# -- the entry point ----------------------------------------------------------------------------------------


def from_transformers(source: Any, **overrides: Any) -> FlaxVisionPreTrainedModel:
    """Convert a transformers ViT / DeiT checkpoint to ``FlaxViTForImageClassification`` (or ``FlaxViTModel``).

    Args:
        source: one of
            (a) a Hub repo id (``"google/vit-base-patch16-224"``), fetched with ``huggingface_hub`` (its
                cache and offline mode are honoured);
            (b) a local folder in transformers' format (``config.json``, weights, optionally
                ``preprocessor_config.json``), or a weights file in such a folder;
            (c) a live transformers model: PyTorch ``ViTModel``, ``ViTForImageClassification``,
                ``DeiTModel``, ``DeiTForImageClassification``, ``DeiTForImageClassificationWithTeacher``,
                or (transformers 4.x) Flax ``FlaxViTModel`` / ``FlaxViTForImageClassification``.
            Weights are read from ``model.safetensors`` without torch, ``pytorch_model.bin`` with torch
            (``weights_only=True``), or ``flax_model.msgpack``.
        overrides: ``num_classes=0`` (drop the classifier, return the backbone), ``pooler=False`` (drop
            ``ViTModel``'s pooler: pooled features are then the class token, as in transformers'
            classification heads); ``revision=``, ``cache_dir=``, ``token=``, ``local_files_only=``
            (Hub); any other keyword is a config attribute (e.g. ``drop_path_rate=0.1``).

    A ``ViTModel`` checkpoint with a pooler gives ``FlaxViTModel`` with ``pooler=True``: its
    ``pooler_output`` is transformers' (``tanh(dense(class token))``). DeiT's distillation token is
    ``distilled=True`` with the teacher heads and one register token otherwise (see
    :mod:`hf_vit_flax.models.vit.convert_transformers`).

    Returns the model with ``config.id2label`` / ``label2id`` from the checkpoint, ``model.image_processor``
    from its ``preprocessor_config.json`` (else a ``ViTImageProcessor`` at the model's size, mean and std
    0.5, as google/vit's) and ``model.card_data``. Raises ``NotImplementedError`` naming what the family
    does not express (DINOv2's SwiGLU, a mask token ...), ``ValueError`` naming the keys for weights that
    do not match their config.
    """
    if "image_size" in overrides:
        raise ValueError(
            "from_transformers keeps the checkpoint's image size (image_size= would resample the position "
            "embeddings, which transformers does at run time with interpolate_pos_encoding)"
        )
    if overrides.get("num_classes") is not None:
        check_num_classes_override(overrides["num_classes"])
    hub_kwargs = {k: overrides.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in overrides}
    checkpoint = _read_source(source, hub_kwargs)
    family = transformers_family(checkpoint.hf_config)
    config = family.config_from_transformers(checkpoint.hf_config, checkpoint.state_dict)
    config = apply_overrides(config, overrides, "from_transformers")
    labels = checkpoint.hf_config.get("id2label") or {}
    if config.num_labels > 0 and len(labels) == config.num_labels:
        config.id2label = {int(k): str(v) for k, v in labels.items()}
        config.label2id = {v: k for k, v in config.id2label.items()}
    processor = image_processor_from_dict(checkpoint.processor) if checkpoint.processor is not None else None
    if processor is not None and getattr(processor, "do_normalize", False):
        config.image_mean, config.image_std = list(processor.image_mean), list(processor.image_std)
    model_type = checkpoint.hf_config["model_type"]
    model = model_from_weights(
        family,
        family.convert_transformers,
        checkpoint.state_dict,
        config,
        f"{checkpoint.origin} does not match its config.json ({model_type})",
    )
    if processor is not None:
        model.image_processor = processor
    model.card_data = _card_data(checkpoint, config, model_type)
    return model


# -- writing a transformers folder ----------------------------------------------------------------------------


def save_transformers(model: FlaxVisionPreTrainedModel, folder: str | os.PathLike) -> None:
    """Write ``model`` into ``folder`` (existing, empty) as transformers' PyTorch classes load it.

    ``config.json`` in transformers' format (``model_type`` ``vit`` or ``deit``, ``architectures`` naming
    the class: ``ViTForImageClassification``, ``DeiTForImageClassification(WithTeacher)``, ``ViTModel`` or
    ``DeiTModel``), ``model.safetensors`` (float32, the tensor names of the checkpoints on the Hub, which
    transformers 4 and 5 both read) and ``preprocessor_config.json``. A headless model without a pooler
    loads with ``ViTModel.from_pretrained(folder, add_pooling_layer=False)``. Atomic writing is
    :func:`hf_vit_flax.export`'s. Raises ``NotImplementedError`` naming what transformers cannot express.
    """
    import jax
    from safetensors.numpy import save_file
    from transformers import AutoConfig

    family = family_of_config(model.config)
    if family.export_transformers is None or family.config_to_transformers is None:
        raise NotImplementedError(
            f"transformers has no class for the {family.name} family: only ViT-family models export to transformers"
        )
    hf_config = family.config_to_transformers(model.config)
    params = jax.device_get(model.module_params()["params"])
    state_dict = family.export_transformers(params, model.config)
    model_type = hf_config.pop("model_type")
    AutoConfig.for_model(model_type, **hf_config).save_pretrained(folder)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state_dict.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    model.image_processor.save_pretrained(folder)
