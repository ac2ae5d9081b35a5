"""Entry points that bring PyTorch weights into the Flax classes.

The key mapping of each family lives in its ``convert_<family>.py`` as a pure numpy function;
this module only dispatches, reads tensors (duck-typed, torch is never imported here) and
checks the result strictly against the model's expected tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .configuration_utils import VisionTransformerConfig
from .conversion_utils import to_numpy
from .families import FAMILIES, Family, family_of_config
from .modeling_utils import FlaxVisionPreTrainedModel


def _vit_pytorch_family(module: Any) -> Family:
    path = f"{type(module).__module__}.{type(module).__name__}"
    for family in FAMILIES.values():
        if family.vit_pytorch_class == path:
            return family
    supported = ", ".join(f.vit_pytorch_class for f in FAMILIES.values())
    raise NotImplementedError(f"{path} is not a supported vit-pytorch model; supported: {supported}")


def from_vit_pytorch(
    model_or_state_dict: Any, config: VisionTransformerConfig | None = None
) -> FlaxVisionPreTrainedModel:
    """Port a vit-pytorch model to the matching ``Flax<Family>ForImageClassification``.

    Args:
        model_or_state_dict: a live vit-pytorch module (``vit_pytorch.vit.ViT``, ...), whose family
            and config are read off it, or its ``state_dict()`` (tensors or numpy arrays), which
            needs ``config``.
        config: the family's config (``ViTConfig(...)``); required with a state dict, optional
            with a module (e.g. for a rectangular image size the module cannot tell).

    Returns the classification model holding the same weights; a vit-pytorch model built with
    ``num_classes=0`` comes back as the headless ``Flax<Family>Model``.
    """
    if hasattr(model_or_state_dict, "state_dict"):
        family = _vit_pytorch_family(model_or_state_dict)
        if config is None:
            config = family.config_from_vit_pytorch(model_or_state_dict)
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
