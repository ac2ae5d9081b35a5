"""Entry points that bring PyTorch weights into the Flax classes.

The key mapping of each family lives in its ``convert_<family>.py`` as a pure numpy function;
this module only dispatches, reads tensors (duck-typed, torch is never imported here) and
checks the result strictly against the model's expected tree.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .configuration_utils import VisionTransformerConfig
from .conversion_utils import to_numpy
from .families import FAMILIES, Family, family_of_config
from .layers import as_tuples
from .modeling_utils import FlaxVisionPreTrainedModel


def _vit_pytorch_family(module: Any) -> Family:
    path = f"{type(module).__module__}.{type(module).__name__}"
    for family in FAMILIES.values():
        if family.vit_pytorch_class == path:
            return family
    supported = ", ".join(f.vit_pytorch_class for f in FAMILIES.values())
    raise NotImplementedError(f"{path} is not a supported vit-pytorch model; supported: {supported}")


def from_vit_pytorch(
    model_or_state_dict: Any, config: VisionTransformerConfig | None = None, *, image_size=None
) -> FlaxVisionPreTrainedModel:
    """Port a vit-pytorch model to the matching ``Flax<Family>ForImageClassification``.

    Args:
        model_or_state_dict: a live vit-pytorch module (``vit_pytorch.vit.ViT``, ...), whose family
            and config are read off it, or its ``state_dict()`` (tensors or numpy arrays), which
            needs ``config``.
        config: the family's config (``ViTConfig(...)``); required with a state dict, optional
            with a module.
        image_size: int or (height, width), with a module whose image size it cannot tell: a
            rectangular grid of patches (ViT, CaiT, CrossViT), or any size CrossFormer takes (its
            windows must divide every stage's feature map; 224 by default).

    Returns the classification model holding the same weights; a vit-pytorch model built with
    ``num_classes=0`` comes back as the headless ``Flax<Family>Model``.
    """
    if hasattr(model_or_state_dict, "state_dict"):
        family = _vit_pytorch_family(model_or_state_dict)
        if config is None:
            size = {"image_size": image_size} if image_size is not None else {}
            config = family.config_from_vit_pytorch(model_or_state_dict, **size)
        elif image_size is not None:
            raise ValueError("give the image size in the config or as image_size=, not both")
        state_dict = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        if config is None:
            raise ValueError(
                "a state dict does not say which model it belongs to: pass its config, e.g. "
                "from_vit_pytorch(state_dict, config=hf_vit_flax.ViTConfig(image_size=256, patch_size=32, ...))"
            )
        family = family_of_config(config)
        state_dict = model_or_state_dict
    else:
        raise TypeError(f"expected a vit-pytorch nn.Module or a state dict, got {type(model_or_state_dict).__name__}")
    params = family.convert_vit_pytorch(to_numpy(state_dict), config)
    model_class = family.classifier_class if config.num_labels > 0 else family.model_class
    return model_class.from_params(config, params)


VIT_PYTORCH_CONFIG = "config.json"  # {"class": "vit_pytorch.vit.ViT", "kwargs": {...}}
VIT_PYTORCH_WEIGHTS = "model.safetensors"


def save_vit_pytorch(model: FlaxVisionPreTrainedModel, folder: str | os.PathLike) -> None:
    """Write ``model`` into ``folder`` for vit-pytorch: its state dict (``model.safetensors``) and the class
    and constructor arguments that rebuild it (``config.json``); :func:`load_vit_pytorch` builds the
    PyTorch model from the folder. The ``"vit-pytorch"`` target of ``hf_vit_flax.export``. Raises
    ``NotImplementedError`` / ``ValueError`` naming the options vit-pytorch's class does not have (e.g.
    timm's conv patch embedding).
    """
    from safetensors.numpy import save_file

    config = model.config
    family = family_of_config(config)
    if family.export_vit_pytorch is None or family.vit_pytorch_kwargs is None:
        raise NotImplementedError(f"the {family.name} family does not export to vit-pytorch")
    kwargs = family.vit_pytorch_kwargs(config)
    state_dict = family.export_vit_pytorch(model.module_params()["params"], config)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state_dict.items()}
    save_file(tensors, os.path.join(folder, VIT_PYTORCH_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, VIT_PYTORCH_CONFIG), "w", encoding="utf-8") as f:
        json.dump({"class": family.vit_pytorch_class, "kwargs": kwargs}, f, indent=2)


def load_vit_pytorch(folder: str | os.PathLike):
    """The vit-pytorch model of a folder written by ``hf_vit_flax.export(model, "vit-pytorch", folder)``
    (needs torch and vit-pytorch).

    Only the classes of the registered families are built; the weights load with ``strict=True``.
    """
    from safetensors.torch import load_file

    with open(os.path.join(folder, VIT_PYTORCH_CONFIG), encoding="utf-8") as f:
        spec = json.load(f)
    known = {family.vit_pytorch_class for family in FAMILIES.values()}
    if spec.get("class") not in known:
        raise ValueError(f"{folder} names {spec.get('class')!r}, which is not a vit-pytorch class of {sorted(known)}")
    module_name, _, class_name = spec["class"].rpartition(".")
    # JSON has no tuples; vit-pytorch's ``pair`` takes a (height, width) tuple, not a list.
    kwargs = {k: as_tuples(v) for k, v in spec["kwargs"].items()}
    model = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    model.load_state_dict(load_file(os.path.join(folder, VIT_PYTORCH_WEIGHTS)), strict=True)
    return model.eval()
