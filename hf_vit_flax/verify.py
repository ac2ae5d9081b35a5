"""Numerical verification of a converted model against its PyTorch original (needs torch and timm).

Used by ``hf-vit-flax convert --verify`` and the publishing pipeline: the original runs on a random
batch in float32 and eval mode, next to the converted model, and the max |logits difference| is
returned. Nothing here is imported by ``import hf_vit_flax``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .modeling_utils import FlaxVisionPreTrainedModel

PUSH_TOLERANCE = 1e-4


def _timm_reference(source: Any, architecture: str | None, image_size: int | None, num_classes: int):
    """The timm model that ``from_timm(source, ...)`` converted, with the same weights."""
    import timm

    from .timm_weights import WEIGHT_FILES, timm_hub_source

    if hasattr(source, "state_dict"):
        return source
    model_args: dict[str, Any] = {}
    path = Path(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and path.exists():
        folder = path if path.is_dir() else path.parent
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None) if path.is_dir() else path
        if weights is None:
            raise FileNotFoundError(f"{path} holds no timm weights ({', '.join(WEIGHT_FILES)})")
        if (folder / "config.json").is_file():
            hub_config = json.loads((folder / "config.json").read_text())
            architecture = architecture or hub_config.get("architecture")
            model_args = dict(hub_config.get("model_args") or {})
    else:
        from huggingface_hub import hf_hub_download

        architecture, repo_id = timm_hub_source(source)
        hub_config = json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
        model_args = dict(hub_config.get("model_args") or {})
        weights = Path(hf_hub_download(repo_id, "model.safetensors"))
    if not architecture:
        raise ValueError(f"cannot tell which timm architecture {source} holds: pass architecture=")
    model_args["num_classes"] = num_classes
    if image_size is not None:
        model_args["img_size"] = image_size
    overlay = {"file": str(weights), "num_classes": num_classes}
    return timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=overlay, **model_args)


def max_logits_difference(model: FlaxVisionPreTrainedModel, reference, *, batch: int = 2, seed: int = 0) -> float:
    """Max |logits difference| between ``model`` and a torch ``reference`` on a random NCHW batch."""
    import torch

    height, width = model.config.image_size_hw
    images = np.random.default_rng(seed).standard_normal((batch, model.config.channels, height, width))
    images = images.astype(np.float32)
    with torch.inference_mode():
        expected = reference.eval().float()(torch.from_numpy(images)).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model(images).logits, dtype=np.float32)
    if got.shape != expected.shape:
        raise ValueError(f"the converted model gives logits of shape {got.shape}, the original {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected)))


def verify_timm(
    model: FlaxVisionPreTrainedModel, source: Any, *, architecture: str | None = None, image_size: int | None = None
) -> float:
    """Run timm's original of a ``from_timm`` conversion next to ``model``; returns the max |logits difference|."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise ImportError("verification runs the original PyTorch model: pip install 'hf-vit-flax[torch]'") from err
    if model.config.num_labels <= 0:
        raise ValueError("verification compares logits: convert with the classifier head to verify")
    reference = _timm_reference(source, architecture, image_size, model.config.num_labels)
    return max_logits_difference(model, reference)


def save_timm_checkpoint(model, folder: str | os.PathLike, tag: str | None = None) -> Path:
    """Write a live timm model in the timm Hub format (``config.json`` + ``model.safetensors``).

    The layout ``timm.create_model(..., pretrained=True)`` and ``hf_vit_flax.from_timm`` read; used to
    make offline sources (the demo, tests) from models built locally.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.pretrained_cfg)
    keep = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "license", "num_classes")
    pretrained_cfg = {k: cfg[k] for k in keep if k in cfg}
    if tag or cfg.get("tag"):
        pretrained_cfg["tag"] = tag or cfg["tag"]
    config = {
        "architecture": cfg["architecture"],
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": pretrained_cfg,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def verify_transformers(model: FlaxVisionPreTrainedModel, source: Any, *, batch: int = 2, seed: int = 0) -> float:
    """Run transformers' PyTorch original of a ``from_transformers`` conversion next to ``model``.

    ``source`` is what was converted: a live PyTorch model, a local folder or a Hub repo id (loaded with
    the class its config.json names). Returns the max |difference| of the logits, or for a headless
    model of ``last_hidden_state`` (and ``pooler_output`` when the model has transformers' pooler).
    """
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ImportError("verification runs the original PyTorch model: pip install 'hf-vit-flax[torch]'") from err
    reference = source
    if not hasattr(source, "state_dict"):
        hf_config = transformers.AutoConfig.from_pretrained(os.fspath(source))
        names = [a for a in (hf_config.architectures or []) if hasattr(transformers, a)]
        auto = transformers.AutoModelForImageClassification if model.has_head() else transformers.AutoModel
        model_class = getattr(transformers, names[0]) if names else auto
        reference = model_class.from_pretrained(os.fspath(source))
    height, width = model.config.image_size_hw
    images = np.random.default_rng(seed).standard_normal((batch, model.config.channels, height, width))
    images = images.astype(np.float32)
    with torch.inference_mode():
        expected = reference.eval().float()(pixel_values=torch.from_numpy(images))
    with jax.default_matmul_precision("highest"):
        got = model(images)
    names = ["logits"] if model.has_head() else ["last_hidden_state"]
    if not model.has_head() and getattr(model.config, "pooler", False):
        names.append("pooler_output")
    diffs = []
    for name in names:
        ours, theirs = np.asarray(getattr(got, name), dtype=np.float64), getattr(expected, name).numpy()
        if ours.shape != theirs.shape:
            raise ValueError(f"the converted model gives {name} of shape {ours.shape}, the original {theirs.shape}")
        diffs.append(float(np.max(np.abs(ours - theirs))))
    return max(diffs)
