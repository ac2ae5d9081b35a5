"""What every family's config shares. Imports no jax: configs are plain data.

Each family's config takes the seed README's keyword names (``image_size, patch_size, num_classes,
dim, depth, heads, mlp_dim`` ...) and answers to transformers' standard names through
``attribute_map`` (``hidden_size`` -> ``dim`` and so on), so both vocabularies work for reading,
writing and construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import PretrainedConfig

DEFAULT_NUM_CLASSES = 1000

# transformers' names of a plain transformer stack's sizes, as aliases of the seed names (ViT, CaiT).
TRANSFORMER_ATTRIBUTE_MAP = {
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "heads",
    "intermediate_size": "mlp_dim",
}


class VisionTransformerConfig(PretrainedConfig):
    """Base class of the family configs: label handling, validation, the default image processor."""

    # Sub-classes set ``model_type`` and extend ``attribute_map``.
    attribute_map = {"num_channels": "channels"}
    # Which family-specific class names to suggest when a checkpoint of another family is loaded.
    family_name = "vision transformer"

    def __init__(self, num_classes: int | None = None, image_mean=None, image_std=None, **kwargs):
        # ``num_classes`` (seed name) and ``num_labels`` / ``id2label`` (transformers) are one quantity.
        if num_classes is not None:
            if "num_labels" in kwargs and kwargs["num_labels"] != num_classes:
                raise ValueError(f"num_classes={num_classes} and num_labels={kwargs['num_labels']} disagree")
            if kwargs.get("id2label") is not None and len(kwargs["id2label"]) != num_classes:
                raise ValueError(f"num_classes={num_classes} but id2label has {len(kwargs['id2label'])} entries")
            if kwargs.get("id2label") is None:
                kwargs["num_labels"] = max(int(num_classes), 0)
        elif kwargs.get("id2label") is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = DEFAULT_NUM_CLASSES
        # Normalisation the model was trained with; written into the image processor that ships with it.
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        super().__init__(**kwargs)
        self.validate()

    @property
    def num_classes(self) -> int:
        return self.num_labels

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self.num_labels = value

    # -- to be provided by each family ------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError, naming the problem and the fix, for hyper-parameters the model cannot take."""

    def to_module_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments of the family's seed-API linen module."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"this checkpoint's config has model_type '{found}', but {cls.__name__} expects "
                f"'{cls.model_type}' ({cls.family_name}). Load it with the Auto classes "
                f"(FlaxAutoModelForImageClassification.from_pretrained) or the class of its own family."
            )
        return super().from_dict(config_dict, **kwargs)

    def dict_dtype_to_str(self, d: dict[str, Any]) -> None:
        # transformers 4.x copies a Flax `dtype=` argument of from_pretrained into the config, where it
        # serialises as "numpy" and breaks reloading. The computation dtype is not a property of the
        # checkpoint (parameters are saved as they are), so it is not written.
        value = d.get("dtype")
        if value is not None and not isinstance(value, (str, int, dict)) and _is_numpy_dtype(value):
            d.pop("dtype")
        super().dict_dtype_to_str(d)

    def image_processor_kwargs(self) -> dict[str, Any]:
        """Arguments of the ``ViTImageProcessor`` saved next to the weights."""
        height, width = self.image_size_hw
        return {
            "do_resize": True,
            "size": {"height": height, "width": width},
            "resample": 3,  # bicubic
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": self.image_mean or [0.5] * self.channels,
            "image_std": self.image_std or [0.5] * self.channels,
        }

    @property
    def image_size_hw(self) -> tuple[int, int]:
        return to_pair(self.image_size)


def to_pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def as_json_size(value):
    """Sizes are stored as int or [h, w] (json has no tuples); modules get tuples back."""
    return list(value) if isinstance(value, (list, tuple)) else int(value)


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def check_rate(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1), got {value}")


def _is_numpy_dtype(value) -> bool:
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True
