"""The table of model families: one row per family, read by registration, converters and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .configuration_utils import VisionTransformerConfig
from .modeling_utils import FlaxVisionPreTrainedModel
from .models.cait import configuration_cait, convert_cait, modeling_flax_cait
from .models.crossformer import configuration_crossformer, convert_crossformer, modeling_flax_crossformer
from .models.crossvit import configuration_crossvit, convert_crossvit, modeling_flax_crossvit
from .models.vit import configuration_vit, convert_transformers, convert_vit, modeling_flax_vit


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type[VisionTransformerConfig]
    model_class: type[FlaxVisionPreTrainedModel]
    classifier_class: type[FlaxVisionPreTrainedModel]
    # vit-pytorch: the reference class ("module.Class"), reading a config off a live module, and
    # the pure-numpy state-dict converter (returns the core module's params).
    vit_pytorch_class: str
    config_from_vit_pytorch: Callable[[Any], VisionTransformerConfig]
    convert_vit_pytorch: Callable[[dict, VisionTransformerConfig], dict]
    # timm (optional): architecture-name prefixes this family converts (e.g. ("cait_",)), reading a
    # config off a live timm model (duck-typed, no torch import), and the pure-numpy converter from
    # a timm state dict to the core module's params.
    timm_prefixes: tuple[str, ...] = ()
    config_from_timm: Callable[[Any], VisionTransformerConfig] | None = None
    convert_timm: Callable[[dict, VisionTransformerConfig], dict] | None = None
    # The way back (optional): core-module params -> a state dict the PyTorch library loads strictly,
    # and the timm architecture name and ``model_args`` that rebuild the model in timm.
    export_vit_pytorch: Callable[[dict, VisionTransformerConfig], dict] | None = None
    export_timm: Callable[[dict, VisionTransformerConfig], dict] | None = None
    timm_architecture: Callable[[VisionTransformerConfig], tuple[str, dict]] | None = None
    vit_pytorch_kwargs: Callable[[VisionTransformerConfig], dict] | None = None
    # transformers (optional): the ``model_type`` s of transformers' own checkpoints this family converts
    # (e.g. ("vit", "deit")); a config from a checkpoint's config.json (a dict) and its state dict; the
    # pure-numpy converter to the core module's params; and back: the transformers config.json of a
    # config and the state dict (checkpoint names) of the core module's params.
    transformers_model_types: tuple[str, ...] = ()
    config_from_transformers: Callable[[dict, dict], VisionTransformerConfig] | None = None
    convert_transformers: Callable[[dict, VisionTransformerConfig], dict] | None = None
    config_to_transformers: Callable[[VisionTransformerConfig], dict] | None = None
    export_transformers: Callable[[dict, VisionTransformerConfig], dict] | None = None

    @property
    def core_module_class(self) -> type:
        """The family's core linen module (``ViT``, ``CaiT`` ...)."""
        return self.model_class.module_class.core_module_class


FAMILIES: dict[str, Family] = {
    "vit": Family(
        name="vit",
        config_class=configuration_vit.ViTConfig,
        model_class=modeling_flax_vit.FlaxViTModel,
        classifier_class=modeling_flax_vit.FlaxViTForImageClassification,
        vit_pytorch_class="vit_pytorch.vit.ViT",
        config_from_vit_pytorch=convert_vit.config_from_vit_pytorch,
        convert_vit_pytorch=convert_vit.convert_vit_pytorch,
        timm_prefixes=("vit_", "deit_", "deit3_"),
        config_from_timm=convert_vit.config_from_timm,
        convert_timm=convert_vit.convert_timm,
        export_vit_pytorch=convert_vit.export_vit_pytorch,
        export_timm=convert_vit.export_timm,
        timm_architecture=convert_vit.timm_architecture,
        vit_pytorch_kwargs=convert_vit.vit_pytorch_kwargs,
        transformers_model_types=convert_transformers.MODEL_TYPES,
        config_from_transformers=convert_transformers.config_from_transformers,
        convert_transformers=convert_transformers.convert_transformers,
        config_to_transformers=convert_transformers.config_to_transformers,
        export_transformers=convert_transformers.export_transformers,
    ),
    "crossformer": Family(
        name="crossformer",
        config_class=configuration_crossformer.CrossFormerConfig,
        model_class=modeling_flax_crossformer.FlaxCrossFormerModel,
        classifier_class=modeling_flax_crossformer.FlaxCrossFormerForImageClassification,
        vit_pytorch_class="vit_pytorch.crossformer.CrossFormer",
        config_from_vit_pytorch=convert_crossformer.config_from_vit_pytorch,
        convert_vit_pytorch=convert_crossformer.convert_vit_pytorch,
        export_vit_pytorch=convert_crossformer.export_vit_pytorch,
        vit_pytorch_kwargs=convert_crossformer.vit_pytorch_kwargs,
    ),
    "cait": Family(
        name="cait",
        config_class=configuration_cait.CaiTConfig,
        model_class=modeling_flax_cait.FlaxCaiTModel,
        classifier_class=modeling_flax_cait.FlaxCaiTForImageClassification,
        vit_pytorch_class="vit_pytorch.cait.CaiT",
        config_from_vit_pytorch=convert_cait.config_from_vit_pytorch,
        convert_vit_pytorch=convert_cait.convert_vit_pytorch,
        timm_prefixes=("cait_",),
        config_from_timm=convert_cait.config_from_timm,
        convert_timm=convert_cait.convert_timm,
        export_vit_pytorch=convert_cait.export_vit_pytorch,
        export_timm=convert_cait.export_timm,
        timm_architecture=convert_cait.timm_architecture,
        vit_pytorch_kwargs=convert_cait.vit_pytorch_kwargs,
    ),
    "crossvit": Family(
        name="crossvit",
        config_class=configuration_crossvit.CrossViTConfig,
        model_class=modeling_flax_crossvit.FlaxCrossViTModel,
        classifier_class=modeling_flax_crossvit.FlaxCrossViTForImageClassification,
        vit_pytorch_class="vit_pytorch.cross_vit.CrossViT",
        config_from_vit_pytorch=convert_crossvit.config_from_vit_pytorch,
        convert_vit_pytorch=convert_crossvit.convert_vit_pytorch,
        timm_prefixes=("crossvit_",),
        config_from_timm=convert_crossvit.config_from_timm,
        convert_timm=convert_crossvit.convert_timm,
        export_vit_pytorch=convert_crossvit.export_vit_pytorch,
        export_timm=convert_crossvit.export_timm,
        timm_architecture=convert_crossvit.timm_architecture,
        vit_pytorch_kwargs=convert_crossvit.vit_pytorch_kwargs,
    ),
}


def family_of_config(config: VisionTransformerConfig) -> Family:
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} is not the config of a hf_vit_flax family ({', '.join(FAMILIES)})")
