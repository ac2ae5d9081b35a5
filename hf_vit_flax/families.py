"""The table of model families: one row per family, read by registration, converters and the CLI."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .configuration_utils import VisionTransformerConfig
from .modeling_utils import FlaxVisionPreTrainedModel


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


# The converter functions a family's modules define, by the name of the ``Family`` field each fills.
VIT_PYTORCH_FUNCTIONS = ("config_from_vit_pytorch", "convert_vit_pytorch", "export_vit_pytorch", "vit_pytorch_kwargs")
TIMM_FUNCTIONS = ("config_from_timm", "convert_timm", "export_timm", "timm_architecture")
TRANSFORMERS_FUNCTIONS = (
    "config_from_transformers",
    "convert_transformers",
    "config_to_transformers",
    "export_transformers",
)


def family_from_modules(
    name: str,
    class_name: str,
    *,
    vit_pytorch_class: str,
    timm_prefixes: tuple[str, ...] = (),
    transformers: str | None = None,
) -> Family:
    """The row of the family in ``models/<name>/``, read off its modules by the names every family uses.

    ``modeling_flax_<name>`` holds ``Flax<class_name>Model`` and ``Flax<class_name>ForImageClassification``;
    ``convert_<name>`` the vit-pytorch functions (``VIT_PYTORCH_FUNCTIONS``) and, for a family with
    ``timm_prefixes``, the timm ones (``TIMM_FUNCTIONS``); ``transformers`` names the family's module of
    transformers-format functions (``TRANSFORMERS_FUNCTIONS`` and its ``MODEL_TYPES``), if it has one.
    """
    package = f"{__package__}.models.{name}"
    modeling = importlib.import_module(f"{package}.modeling_flax_{name}")
    converter = importlib.import_module(f"{package}.convert_{name}")
    functions = {f: getattr(converter, f) for f in VIT_PYTORCH_FUNCTIONS + (TIMM_FUNCTIONS if timm_prefixes else ())}
    if transformers is not None:
        module = importlib.import_module(f"{package}.{transformers}")
        functions.update({f: getattr(module, f) for f in TRANSFORMERS_FUNCTIONS})
        functions["transformers_model_types"] = module.MODEL_TYPES
    model_class = getattr(modeling, f"Flax{class_name}Model")
    return Family(
        name=name,
        config_class=model_class.config_class,
        model_class=model_class,
        classifier_class=getattr(modeling, f"Flax{class_name}ForImageClassification"),
        vit_pytorch_class=vit_pytorch_class,
        timm_prefixes=timm_prefixes,
        **functions,
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        family_from_modules(
            "vit",
            "ViT",
            vit_pytorch_class="vit_pytorch.vit.ViT",
            timm_prefixes=("vit_", "deit_", "deit3_"),
            transformers="convert_transformers",
        ),
        family_from_modules("crossformer", "CrossFormer", vit_pytorch_class="vit_pytorch.crossformer.CrossFormer"),
        family_from_modules("cait", "CaiT", vit_pytorch_class="vit_pytorch.cait.CaiT", timm_prefixes=("cait_",)),
        family_from_modules(
            "crossvit", "CrossViT", vit_pytorch_class="vit_pytorch.cross_vit.CrossViT", timm_prefixes=("crossvit_",)
        ),
    )
}


def family_of_config(config: VisionTransformerConfig) -> Family:
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} is not the config of a hf_vit_flax family ({', '.join(FAMILIES)})")
