"""transformers' image processors as this package uses them, on every transformers release line.

The package preprocesses with PIL and numpy, as transformers 4.x's ``ViTImageProcessor`` does; on
transformers 5 that class needs torchvision, and its PIL twin is ``ViTImageProcessorPil``, which gives
the same pixel values and saves the same ``preprocessor_config.json`` (``image_processor_type``
``"ViTImageProcessor"``), so a saved processor reloads under either line.
"""

from __future__ import annotations

import transformers

# The processors a checkpoint of this package may name (timm's resize-and-crop transform uses Bit / DeiT).
PROCESSOR_NAMES = ("ViTImageProcessor", "BitImageProcessor", "DeiTImageProcessor")


def image_processor_class(name: str = "ViTImageProcessor") -> type:
    """The PIL/numpy image processor class called ``name`` (``ViTImageProcessor``, ``BitImageProcessor`` ...)."""
    base = name.removesuffix("Fast").removesuffix("Pil")
    if base not in PROCESSOR_NAMES:
        raise ValueError(f"unknown image processor {name}: this package reads {', '.join(PROCESSOR_NAMES)}")
    pil_class = getattr(transformers, base + "Pil", None)  # transformers 5.x
    return pil_class if pil_class is not None else getattr(transformers, base)
