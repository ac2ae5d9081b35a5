"""hf_vit_flax: vision transformers in JAX/Flax, identical to their PyTorch originals, on the Hugging Face Hub.

Load any checkpoint of the package with ``hf_vit_flax.FlaxAutoModelForImageClassification`` (or
``FlaxAutoModel``), on transformers 4.x and 5.x alike. Importing the package registers every family
with transformers' ``AutoConfig`` and ``AutoImageProcessor``, and on transformers 4.x with its
``FlaxAutoModel`` and ``FlaxAutoModelForImageClassification`` too.
"""

from __future__ import annotations

# First: adds this CPU's XLA settings to XLA_FLAGS before anything creates jax's backends (read once).
from . import _cpu  # noqa: F401  isort: skip
from .auto import FlaxAutoModel, FlaxAutoModelForImageClassification
from .configuration_utils import VisionTransformerConfig
from .convert import from_vit_pytorch, load_vit_pytorch
from .exporters import export
from .families import FAMILIES
from .modeling_flax_utils import FlaxPreTrainedModel
from .modeling_utils import FlaxVisionPreTrainedModel
from .models.cait.configuration_cait import CaiTConfig
from .models.cait.modeling_flax_cait import CaiT, FlaxCaiTForImageClassification, FlaxCaiTModel
from .models.crossformer.configuration_crossformer import CrossFormerConfig
from .models.crossformer.convert_crossformer import from_crossformer_checkpoint
from .models.crossformer.modeling_flax_crossformer import (
    CrossFormer,
    FlaxCrossFormerForImageClassification,
    FlaxCrossFormerModel,
)
from .models.crossvit.configuration_crossvit import CrossViTConfig
from .models.crossvit.modeling_flax_crossvit import CrossViT, FlaxCrossViTForImageClassification, FlaxCrossViTModel
from .models.vit.configuration_vit import ViTConfig
from .models.vit.modeling_flax_vit import FlaxViTForImageClassification, FlaxViTModel, ViT
from .predict import predict
from .timm_weights import from_timm, list_timm_models
from .transformers_weights import from_transformers

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Register the families with transformers' Auto classes: AutoConfig and AutoImageProcessor on every
    line, and on transformers 4.x its Flax model Auto classes too."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    from .image_processing import image_processor_class

    processor = image_processor_class("ViTImageProcessor")
    for family in FAMILIES.values():
        AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
        AutoImageProcessor.register(family.config_class, slow_image_processor_class=processor, exist_ok=True)
        for auto_name, model_class in (
            ("FlaxAutoModel", family.model_class),
            ("FlaxAutoModelForImageClassification", family.classifier_class),
        ):
            transformers_auto = getattr(transformers, auto_name, None)  # transformers 4.x only
            if transformers_auto is not None:
                transformers_auto.register(family.config_class, model_class, exist_ok=True)


_register_auto_classes()

__all__ = [
    "FlaxAutoModel",
    "FlaxAutoModelForImageClassification",
    "FlaxPreTrainedModel",
    "CrossViT",
    "CrossViTConfig",
    "FlaxCrossViTForImageClassification",
    "FlaxCrossViTModel",
    "CaiT",
    "CaiTConfig",
    "FlaxCaiTForImageClassification",
    "FlaxCaiTModel",
    "CrossFormer",
    "CrossFormerConfig",
    "FlaxCrossFormerForImageClassification",
    "FlaxCrossFormerModel",
    "from_crossformer_checkpoint",
    "FAMILIES",
    "FlaxViTForImageClassification",
    "FlaxViTModel",
    "FlaxVisionPreTrainedModel",
    "ViT",
    "ViTConfig",
    "VisionTransformerConfig",
    "from_vit_pytorch",
    "load_vit_pytorch",
    "predict",
    "from_timm",
    "list_timm_models",
    "from_transformers",
    "export",
]
