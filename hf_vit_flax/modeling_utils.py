"""The Hugging Face face shared by every family.

A family provides a core linen module (``ViT``, ``CaiT`` ...) with three methods:
``forward_features(img, *, train, output_hidden_states, output_attentions) -> Features``,
``forward_head(pooler_output) -> logits`` and ``__call__(img, train=False) -> logits``.
Everything here is written once against that vocabulary:

* ``FlaxBaseModelModule`` / ``FlaxClassifierModule``: config-driven linen shells around the headless
  core module, in transformers' Flax parameter layout: a ``Flax<Family>Model``'s parameters are the bare
  backbone tree; a ``Flax<Family>ForImageClassification``'s are ``{base_model_prefix: backbone,
  <head names>: head}``, the head (the family's own head module, same parameter names as in the core
  module) outside the prefix. ``params[base_model_prefix]`` moves between the two, and a checkpoint of
  either loads into the other. A family's ``Flax<Family>PreTrainedModel`` names its core module and
  ``base_model_prefix``; its ``shell_modules()`` are the family's two shells.
* ``FlaxVisionPreTrainedModel``: NCHW ``pixel_values`` in (transposed once, here), a jitted apply,
  safetensors by default, a model card and image processor saved with the weights, strict loading,
  and work-arounds for the transformers 4.x Flax bugs listed in the README.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from transformers import PretrainedConfig
from transformers.image_processing_utils import BaseImageProcessor

from ._cpu import init_compiler_options, jit_compiler_options
from .configuration_utils import VisionTransformerConfig
from .image_processing import image_processor_class
from .layers import Features  # noqa: F401  (re-exported for families)
from .modeling_flax_outputs import FlaxBaseModelOutputWithPooling, FlaxSequenceClassifierOutput
from .modeling_flax_utils import FlaxPreTrainedModel

_JITTED_INITS: OrderedDict = OrderedDict()
_JITTED_INITS_KEPT = 16


# Config entries that name or describe a checkpoint, or choose what a forward pass returns: the parameters
# ``init`` creates do not depend on them.
_NOT_PARAMETER_SHAPING = (
    "_name_or_path",
    "architectures",
    "transformers_version",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def _module_key(module: nn.Module) -> tuple | None:
    """The value of a shell module as far as its parameters go (its class and fields, the config as JSON
    without ``_NOT_PARAMETER_SHAPING``), or ``None`` if a field cannot be hashed."""
    fields = []
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name)
        if isinstance(value, PretrainedConfig):
            entries = {k: v for k, v in value.to_dict().items() if k not in _NOT_PARAMETER_SHAPING}
            value = json.dumps(entries, sort_keys=True, default=str)
        try:
            hash(value)
        except TypeError:
            return None
        fields.append((field.name, value))
    return type(module), tuple(fields)


def _jitted_init(module: nn.Module, options: dict):
    """``jax.jit(module.init)``, one per module value (the last ``_JITTED_INITS_KEPT``): a second model of the
    same configuration in one process (loading a checkpoint twice, a sweep, a test suite) reuses the first
    one's trace and compiled program instead of tracing the whole network again. Only the parameters of
    what it returns are used (the first module's outputs may have been other ones)."""
    key = _module_key(module)
    if key is None:
        return jax.jit(module.init, static_argnames="return_dict", compiler_options=options or None)
    key = (key, tuple(sorted(options.items())))
    init = _JITTED_INITS.pop(key, None)
    if init is None:
        init = jax.jit(module.init, static_argnames="return_dict", compiler_options=options or None)
    _JITTED_INITS[key] = init
    while len(_JITTED_INITS) > _JITTED_INITS_KEPT:
        _JITTED_INITS.popitem(last=False)
    return init


class _ShellModule(nn.Module):
    config: VisionTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    gradient_checkpointing: bool = False

    core_module_class: ClassVar[type[nn.Module]]
    base_model_prefix: ClassVar[str]
    with_head: ClassVar[bool] = False
    # The transformers output class; a family with further outputs (``Features.extra``) subclasses it.
    output_class: ClassVar[type]

    def setup(self):
        kwargs = {**self.config.to_module_kwargs(), "dtype": self.dtype, "param_dtype": self.param_dtype}
        backbone = self.core_module_class(**{**kwargs, "num_classes": 0}, remat=self.gradient_checkpointing)
        setattr(self, self.base_model_prefix, backbone)
        if self.with_head:  # {prefix: backbone, head names: head}, as transformers' Flax heads
            self.classifier = self.core_module_class.head_module(kwargs)
            nn.share_scope(self, self.classifier)
        else:  # the bare backbone tree, as transformers' Flax base models
            nn.share_scope(self, backbone)

    def features(
        self,
        pixel_values,
        deterministic: bool,
        output_attentions: bool,
        output_hidden_states: bool,
        interpolate_pos_encoding: bool = False,
    ):
        # Only asked of the families that take it (``CoreModule.supports_interpolate_pos_encoding``).
        extra = {"interpolate_pos_encoding": True} if interpolate_pos_encoding else {}
        return getattr(self, self.base_model_prefix).forward_features(
            pixel_values,
            train=not deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **extra,
        )

    def outputs(self, features: Features, return_dict: bool):
        """The model output (a transformers output class, or a tuple) built from the core module's features."""
        raise NotImplementedError

    def __call__(
        self,
        pixel_values,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        interpolate_pos_encoding: bool = False,
    ):
        features = self.features(
            pixel_values, deterministic, output_attentions, output_hidden_states, interpolate_pos_encoding
        )
        return self.outputs(features, return_dict)


class FlaxBaseModelModule(_ShellModule):
    """Features only: ``last_hidden_state`` (the normed tokens) and ``pooler_output``."""

    output_class: ClassVar[type] = FlaxBaseModelOutputWithPooling

    def outputs(self, features: Features, return_dict: bool):
        output = self.output_class(
            last_hidden_state=features.last_hidden_state,
            pooler_output=features.pooler_output,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
            **(features.extra or {}),
        )
        return output if return_dict else output.to_tuple()


class FlaxClassifierModule(_ShellModule):
    """Features, then the family's own classification head."""

    with_head: ClassVar[bool] = True
    output_class: ClassVar[type] = FlaxSequenceClassifierOutput

    def outputs(self, features: Features, return_dict: bool):
        output = self.output_class(
            logits=self.classifier(features.pooler_output),
            hidden_states=features.hidden_states,
            attentions=features.attentions,
            **(features.extra or {}),
        )
        return output if return_dict else output.to_tuple()


class FlaxVisionPreTrainedModel(FlaxPreTrainedModel):
    """Base of every ``Flax<Family>Model`` / ``Flax<Family>ForImageClassification``.

    Args:
        config: the family's config.
        input_shape: NHWC shape used to initialise the parameters (default: one image of the
            config's size).
        seed: PRNG seed of the initialisation.
        dtype: computation dtype (``jnp.bfloat16`` for mixed precision); parameters stay in
            ``param_dtype``.
        param_dtype: dtype of the created parameters (float32 by default).
        gradient_checkpointing: rematerialise each block in the backward pass (``nn.remat``),
            parameter paths unchanged.
    """

    config_class = VisionTransformerConfig
    main_input_name = "pixel_values"
    module_class: type[_ShellModule] = None
    # What a family's ``Flax<Family>PreTrainedModel`` declares: its core linen module (``ViT`` ...) and
    # ``base_model_prefix``. The config class and the head's parameter names follow from the core module.
    core_module_class: ClassVar[type[nn.Module]] = None
    # Top-level parameter names of the classification head (next to ``base_model_prefix`` in a classifier's
    # parameters, and at the top level of the core module's): the core module's ``head_class.param_names``.
    head_param_names: ClassVar[tuple[str, ...]] = ("head",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "core_module_class" in vars(cls):
            cls.config_class = cls.core_module_class.config_class
            cls.head_param_names = cls.core_module_class.head_class.param_names

    @classmethod
    def shell_modules(
        cls,
        model_output: type = FlaxBaseModelOutputWithPooling,
        classifier_output: type = FlaxSequenceClassifierOutput,
    ) -> tuple[type[FlaxBaseModelModule], type[FlaxClassifierModule]]:
        """The family's linen shells, ``Flax<Family>Module`` and ``Flax<Family>ForImageClassificationModule``
        (named after the core module, in the family's Python module, as transformers names them), around
        ``core_module_class`` under ``base_model_prefix``; ``*_output``: the transformers output classes
        they return (a family with further outputs passes its subclasses)."""
        family = cls.core_module_class.__name__
        shared = {
            "__module__": cls.__module__,
            "core_module_class": cls.core_module_class,
            "base_model_prefix": cls.base_model_prefix,
        }
        shells = (
            ("Module", FlaxBaseModelModule, model_output),
            ("ForImageClassificationModule", FlaxClassifierModule, classifier_output),
        )
        return tuple(
            type(f"Flax{family}{name}", (base,), {**shared, "output_class": out}) for name, base, out in shells
        )

    def __init__(
        self,
        config: VisionTransformerConfig,
        input_shape: tuple[int, ...] | None = None,
        seed: int = 0,
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
        param_dtype: jnp.dtype = jnp.float32,
        gradient_checkpointing: bool = False,
        **kwargs,
    ):
        if self.module_class.with_head and config.num_labels == 0:
            raise ValueError(
                f"{type(self).__name__} needs a config with labels, and this one has num_labels=0 (a model without a "
                f"classification head): use {type(self).__name__.replace('ForImageClassification', 'Model')} for "
                f"its features, or pass num_labels=N (from_pretrained(..., num_labels=N)) for a new head to fine-tune"
            )
        module = self.module_class(
            config=config, dtype=dtype, param_dtype=param_dtype, gradient_checkpointing=gradient_checkpointing, **kwargs
        )
        if input_shape is None:
            height, width = config.image_size_hw
            input_shape = (1, height, width, config.channels)
        self.param_dtype = param_dtype
        self.card_data: dict[str, Any] = {}
        self._image_processor: BaseImageProcessor | None = None
        self._jitted = {}
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    # -- parameters ---------------------------------------------------------------------------------
    def _init_compiler_options(self) -> dict:
        return init_compiler_options(self.config.estimate_num_parameters())

    def init_weights(self, rng: jax.Array, input_shape: tuple, params=None):
        pixel_values = jnp.zeros(input_shape, dtype=jnp.float32)
        params_rng, dropout_rng = jax.random.split(rng)
        # Jitted: an eager init dispatches every op on its own (minutes for the larger families).
        # (compiler options are for a top-level jit only: not under eval_shape or a caller's jit).
        traced = isinstance(rng, jax.core.Tracer)
        options = {} if traced else self._init_compiler_options()
        init = _jitted_init(self.module, options)
        random_params = init({"params": params_rng, "dropout": dropout_rng}, pixel_values, return_dict=False)["params"]
        if params is None:
            return random_params
        random_params = flatten_dict(unfreeze(random_params))
        params = flatten_dict(unfreeze(params))
        for missing_key in self._missing_keys:
            params[missing_key] = random_params[missing_key]
        self._missing_keys = set()
        return freeze(unflatten_dict(params))

    @classmethod
    def has_head(cls) -> bool:
        """Whether the model has a classification head (``Flax<Family>ForImageClassification``)."""
        return cls.module_class.with_head

    def module_params(self, params: dict | None = None) -> dict:
        """``{"params": ...}`` as the family's core module (``hf_vit_flax.ViT(...)`` etc.) takes it in ``apply``.

        The core module holds backbone and head in one tree; this model holds them in transformers'
        layout (see :mod:`hf_vit_flax.modeling_utils`). ``params`` defaults to the model's own.
        """
        params = unfreeze(params if params is not None else self.params)
        if not self.has_head():
            return {"params": dict(params)}
        heads = {k: v for k, v in params.items() if k in self.head_param_names}
        return {"params": {**params[self.base_model_prefix], **heads}}

    @classmethod
    def params_from_module(cls, core_params: dict) -> dict:
        """The inverse of :meth:`module_params`: a core-module parameter tree in this model's layout."""
        core_params = unfreeze(core_params)
        core_params = core_params.get("params", core_params) if set(core_params) == {"params"} else core_params
        if not cls.has_head():
            return dict(core_params)
        heads = {k: v for k, v in core_params.items() if k in cls.head_param_names}
        body = {k: v for k, v in core_params.items() if k not in cls.head_param_names}
        return {cls.base_model_prefix: body, **heads}

    @classmethod
    def from_params(cls, config: VisionTransformerConfig, core_params: dict, **kwargs):
        """A model holding ``core_params`` (the family's core-module parameters, e.g. from a converter).

        The tree is checked strictly against the model's (every missing, unexpected or mis-shaped key
        is named), then placed into the model's layout; the model is built without a random
        initialisation.
        """
        from .conversion_utils import check_tree

        model = cls(config, _do_init=False, **kwargs)
        expected = model.module_params(model.params_shape_tree)["params"]
        params = check_tree(core_params, expected, f"{cls.__name__} ({config.model_type})")
        model._is_initialized = True
        model.params = cls.params_from_module(jax.tree.map(jnp.asarray, params))
        return model

    def enable_gradient_checkpointing(self) -> None:
        self._module = self.module_class(
            config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, gradient_checkpointing=True
        )
        self._jitted = {}

    @property
    def num_parameters_exact(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

    # -- forward ------------------------------------------------------------------------------------
    def check_pixel_values(self, pixel_values, any_size: bool = False) -> None:
        """NCHW, the config's channel count and image size (any size with ``any_size``); a clear error otherwise."""
        shape = tuple(getattr(pixel_values, "shape", ()))
        channels, (height, width) = self.config.channels, self.config.image_size_hw
        name = type(self).__name__
        if len(shape) != 4:
            raise ValueError(
                f"{name} expects pixel_values of shape (batch, {channels}, {height}, {width}) (NCHW), got {shape}"
            )
        if shape[1] != channels:
            hint = ""
            if shape[3] == channels:
                hint = (
                    " This looks like NHWC input: Hugging Face models take NCHW pixel_values, so transpose with "
                    "x.transpose(0, 3, 1, 2) (or call the flax module, which takes NHWC, directly)."
                )
            raise ValueError(f"{name} expects {channels}-channel NCHW pixel_values but got shape {shape}.{hint}")
        if not any_size and shape[2:] != (height, width):
            raise ValueError(
                f"{name} was configured for {height}x{width} images but got {shape[2]}x{shape[3]}; resize them "
                f"with the model's image processor (model.image_processor) or load it with image_size="
                f"({shape[2]}, {shape[3]}) where the family supports it"
            )

    def _apply(
        self,
        deterministic,
        output_attentions,
        output_hidden_states,
        return_dict,
        top_level=True,
        interpolate_pos_encoding=False,
    ):
        key = (
            deterministic,
            output_attentions,
            output_hidden_states,
            return_dict,
            id(self.module),
            top_level,
            interpolate_pos_encoding,
        )
        if key not in self._jitted:
            module = self.module

            def apply(params, pixel_values, rngs):
                # NCHW -> NHWC inside the jitted function: fused by XLA instead of a separate dispatch per call.
                return module.apply(
                    {"params": params},
                    jnp.transpose(pixel_values, (0, 2, 3, 1)),
                    deterministic,
                    output_attentions,
                    output_hidden_states,
                    return_dict,
                    interpolate_pos_encoding,
                    rngs=rngs,
                )

            # This CPU's XLA settings even when jax's backends existed before hf_vit_flax was imported
            # (jax takes compiler options on a top-level jit only: not inside the caller's jit or grad).
            options = jit_compiler_options() if top_level else {}
            self._jitted[key] = jax.jit(apply, compiler_options=options or None)
        return self._jitted[key]

    def __call__(
        self,
        pixel_values,
        params: dict | None = None,
        dropout_rng: jax.Array | None = None,
        train: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ):
        """Run the model on NCHW ``pixel_values`` (as produced by the image processor).

        ``train=True`` enables dropout and needs ``dropout_rng``; evaluation is deterministic.
        ``interpolate_pos_encoding=True`` (the ViT family, as transformers' ViT) takes images of another
        size than the config's, resizing the position embeddings to their patch grid.
        """
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = bool(return_dict if return_dict is not None else self.config.return_dict)
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        if interpolate_pos_encoding and not self.module_class.core_module_class.supports_interpolate_pos_encoding:
            raise ValueError(
                f"{type(self).__name__} does not take interpolate_pos_encoding=True (the ViT family does); "
                f"resize the images to the config's image size {self.config.image_size_hw}"
            )
        any_size = interpolate_pos_encoding or not self.module_class.core_module_class.fixed_image_size
        self.check_pixel_values(pixel_values, any_size=any_size)
        if train and dropout_rng is None:
            raise ValueError("train=True enables dropout and needs a PRNG key: pass dropout_rng=jax.random.key(...)")
        if getattr(pixel_values, "dtype", None) != np.float32:  # float32 arrays go to the jitted apply as they are
            pixel_values = jnp.asarray(pixel_values, dtype=jnp.float32)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        params = params if params is not None else self.params
        top_level = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, pixel_values, rngs)))
        apply = self._apply(
            not train, output_attentions, output_hidden_states, return_dict, top_level, interpolate_pos_encoding
        )
        return apply(params, pixel_values, rngs)

    # -- image processor and prediction ---------------------------------------------------------------
    @property
    def image_processor(self) -> BaseImageProcessor:
        """The preprocessing saved with the weights (``preprocessor_config.json``).

        By default a ``ViTImageProcessor`` at the config's image size; converters set the original's
        evaluation transform (e.g. timm's resize + center crop).
        """
        if self._image_processor is None:
            self._image_processor = image_processor_class()(**self.config.image_processor_kwargs())
        return self._image_processor

    @image_processor.setter
    def image_processor(self, processor: BaseImageProcessor) -> None:
        self._image_processor = processor

    def predict(self, images, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Classify PIL images or HWC uint8/float arrays: per image, the ``top_k`` labels and scores."""
        from .predict import predict

        return predict(self, images, top_k=top_k)

    # -- what a checkpoint holds besides config and weights ------------------------------------------------
    def _save_extras(self, folder: str, repo_id: str | None) -> None:
        from .hub import write_model_card

        self.image_processor.save_pretrained(folder)
        write_model_card(self, folder, repo_id=repo_id)

    def _after_load(self, location) -> None:
        self._image_processor = load_image_processor(location)

    def _checkpoint_to_model_keys(self, state: dict) -> dict:
        # Checkpoints come in three layouts: a base model's (the bare backbone), a classifier's
        # ({prefix: backbone, head names: head}), and the one this package wrote before it followed
        # transformers (everything under the prefix, the head included: prefix/head/...). Each key is
        # read as a backbone or a head key, then placed where this model keeps it.
        prefix, heads = self.base_model_prefix, self.head_param_names
        mapped = {}
        for key, value in state.items():
            if key[0] == prefix and len(key) > 1:
                key = key[1:]
            if key[0] not in heads and self.has_head():
                key = (prefix, *key)
            mapped[key] = value
        return mapped

    def _optional_key(self, key: tuple) -> bool:
        # Only the classification head may be absent (a backbone checkpoint loaded for fine-tuning) or
        # extra (a classifier checkpoint loaded into the base model).
        return len(key) > 1 and key[0] in self.head_param_names


def load_image_processor(location) -> BaseImageProcessor | None:
    """The image processor saved with a checkpoint, or None when it has none (the config's default is used).

    A ``preprocessor_config.json`` that exists but cannot be fetched is an error, never a silent
    fallback to other preprocessing.
    """
    import json

    from .checkpoint import PROCESSOR_NAME

    path = location.get(PROCESSOR_NAME)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise OSError(f"{path} is not a valid image processor config ({err})") from err
    return image_processor_class(str(data.get("image_processor_type", "ViTImageProcessor"))).from_dict(data)
