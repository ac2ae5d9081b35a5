"""The Hugging Face face shared by every family.

A family provides a seed-API linen module (``ViT``, ``CaiT`` ...) with three methods:
``forward_features(img, *, train, output_hidden_states, output_attentions) -> Features``,
``forward_head(pooler_output) -> logits`` and ``__call__(img, train=False) -> logits``.
Everything here is written once against that vocabulary:

* ``FlaxBackboneModule`` / ``FlaxClassifierModule``: config-driven linen shells that hold the seed
  module under ``base_model_prefix`` (so the parameters of a ``Flax<Family>ForImageClassification``
  under that key are exactly the seed module's, and a head checkpoint loads into the base model).
* ``FlaxVisionPreTrainedModel``: NCHW ``pixel_values`` in (transposed once, here), a jitted apply,
  safetensors by default, a model card and image processor saved with the weights, strict loading,
  and work-arounds for the transformers 4.x Flax bugs listed in the README.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError
from transformers import FlaxPreTrainedModel, ViTImageProcessor
from transformers.image_processing_utils import BaseImageProcessor
from transformers.modeling_flax_outputs import FlaxBaseModelOutputWithPooling, FlaxSequenceClassifierOutput

from ._cpu import jit_compiler_options
from .configuration_utils import VisionTransformerConfig
from .layers import Features  # noqa: F401  (re-exported for families)

SAFE_WEIGHTS_NAME = "model.safetensors"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"

# Keys of the checkpoint most recently read by ``load_flax_weights``, for the strict check in
# ``from_pretrained`` (transformers only warns about missing or unexpected keys).
_LOADED_KEYS: contextvars.ContextVar[set | None] = contextvars.ContextVar("_LOADED_KEYS", default=None)


class _ShellModule(nn.Module):
    config: VisionTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    gradient_checkpointing: bool = False

    seed_module_class: ClassVar[type[nn.Module]]
    base_model_prefix: ClassVar[str]
    with_head: ClassVar[bool] = False

    def setup(self):
        kwargs = self.config.to_module_kwargs()
        if not self.with_head:
            kwargs["num_classes"] = 0
        backbone = self.seed_module_class(
            **kwargs, dtype=self.dtype, param_dtype=self.param_dtype, remat=self.gradient_checkpointing
        )
        setattr(self, self.base_model_prefix, backbone)

    def features(self, pixel_values, deterministic: bool, output_attentions: bool, output_hidden_states: bool):
        return getattr(self, self.base_model_prefix).forward_features(
            pixel_values,
            train=not deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    def outputs(self, features: Features, return_dict: bool):
        """The model output (a transformers output class, or a tuple) built from the seed module's features."""
        raise NotImplementedError

    def __call__(
        self,
        pixel_values,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ):
        features = self.features(pixel_values, deterministic, output_attentions, output_hidden_states)
        return self.outputs(features, return_dict)


class FlaxBackboneModule(_ShellModule):
    """Features only: ``last_hidden_state`` (the normed tokens) and ``pooler_output``."""

    def outputs(self, features: Features, return_dict: bool):
        if not return_dict:
            return tuple(v for v in features if v is not None)
        return FlaxBaseModelOutputWithPooling(
            last_hidden_state=features.last_hidden_state,
            pooler_output=features.pooler_output,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )


class FlaxClassifierModule(_ShellModule):
    """Features, then the family's own classification head."""

    with_head: ClassVar[bool] = True

    def outputs(self, features: Features, return_dict: bool):
        logits = getattr(self, self.base_model_prefix).forward_head(features.pooler_output)
        if not return_dict:
            return tuple(v for v in (logits, features.hidden_states, features.attentions) if v is not None)
        return FlaxSequenceClassifierOutput(
            logits=logits, hidden_states=features.hidden_states, attentions=features.attentions
        )


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
    # Top-level parameter names (under ``base_model_prefix``) that belong to the classification head.
    head_param_names: ClassVar[tuple[str, ...]] = ("head",)

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
    def init_weights(self, rng: jax.Array, input_shape: tuple, params=None):
        pixel_values = jnp.zeros(input_shape, dtype=jnp.float32)
        params_rng, dropout_rng = jax.random.split(rng)
        # Jitted: an eager init dispatches every op on its own (minutes for the larger families).
        init = jax.jit(self.module.init, static_argnames="return_dict")
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
    def from_params(cls, config: VisionTransformerConfig, seed_params: dict, **kwargs):
        """A model holding ``seed_params`` (the family's seed-module parameters, e.g. from a converter).

        The tree is checked strictly against the model's (every missing, unexpected or mis-shaped key
        is named); the model is built without a random initialisation.
        """
        from .conversion_utils import check_tree

        model = cls(config, _do_init=False, **kwargs)
        expected = unfreeze(model.params_shape_tree)[cls.base_model_prefix]
        params = check_tree(seed_params, expected, f"{cls.__name__} ({config.model_type})")
        model._is_initialized = True
        model.params = {cls.base_model_prefix: jax.tree.map(jnp.asarray, params)}
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
    def check_pixel_values(self, pixel_values) -> None:
        """NCHW, the config's channel count and image size; a clear error otherwise."""
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
        if shape[2:] != (height, width):
            raise ValueError(
                f"{name} was configured for {height}x{width} images but got {shape[2]}x{shape[3]}; resize them "
                f"with the model's image processor (model.image_processor) or load it with image_size="
                f"({shape[2]}, {shape[3]}) where the family supports it"
            )

    def _apply(self, deterministic, output_attentions, output_hidden_states, return_dict, top_level=True):
        key = (deterministic, output_attentions, output_hidden_states, return_dict, id(self.module), top_level)
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
    ):
        """Run the model on NCHW ``pixel_values`` (as produced by the image processor).

        ``train=True`` enables dropout and needs ``dropout_rng``; evaluation is deterministic.
        """
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = bool(return_dict if return_dict is not None else self.config.return_dict)
        self.check_pixel_values(pixel_values)
        if train and dropout_rng is None:
            raise ValueError("train=True enables dropout and needs a PRNG key: pass dropout_rng=jax.random.key(...)")
        if getattr(pixel_values, "dtype", None) != np.float32:  # float32 arrays go to the jitted apply as they are
            pixel_values = jnp.asarray(pixel_values, dtype=jnp.float32)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        params = params if params is not None else self.params
        top_level = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, pixel_values, rngs)))
        apply = self._apply(not train, output_attentions, output_hidden_states, return_dict, top_level)
        return apply(params, pixel_values, rngs)

    # -- image processor and prediction ---------------------------------------------------------------
    @property
    def image_processor(self) -> BaseImageProcessor:
        """The preprocessing saved with the weights (``preprocessor_config.json``).

        By default a ``ViTImageProcessor`` at the config's image size; converters set the original's
        evaluation transform (e.g. timm's resize + center crop).
        """
        if self._image_processor is None:
            self._image_processor = ViTImageProcessor(**self.config.image_processor_kwargs())
        return self._image_processor

    @image_processor.setter
    def image_processor(self, processor: BaseImageProcessor) -> None:
        self._image_processor = processor

    def predict(self, images, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Classify PIL images or HWC uint8/float arrays: per image, the ``top_k`` labels and scores."""
        from .predict import predict

        return predict(self, images, top_k=top_k)

    # -- saving and loading ---------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        params=None,
        push_to_hub: bool = False,
        safe_serialization: bool = True,
        **kwargs,
    ):
        """Save config, weights (``model.safetensors`` by default), image processor and model card.

        Files are written to a temporary folder and moved into place, so an interrupted save leaves
        the previous files intact, and no other file in ``save_directory`` is touched (transformers
        4.x deletes every file whose name starts with "model"). A weights file of the other format
        is removed, since ``from_pretrained`` would prefer it to the new one.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory} is a file; give a folder")
        os.makedirs(save_directory, exist_ok=True)
        repo_id = kwargs.pop("repo_id", None)
        commit_message = kwargs.pop("commit_message", None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("private", "token", "revision", "create_pr") if k in kwargs}
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-save-") as tmp:
            super().save_pretrained(tmp, params=params, safe_serialization=safe_serialization, **kwargs)
            self.image_processor.save_pretrained(tmp)
            from .hub import write_model_card

            write_model_card(self, tmp, repo_id=repo_id)
            written = sorted(os.listdir(tmp))
            stale = FLAX_WEIGHTS_NAME if safe_serialization else SAFE_WEIGHTS_NAME
            stale_path = os.path.join(save_directory, stale)
            if os.path.isfile(stale_path) and stale not in written:
                os.remove(stale_path)
            # Weights first, config last: a reader never sees a new config with old weights.
            for name in sorted(written, key=lambda n: n == "config.json"):
                os.replace(os.path.join(tmp, name), os.path.join(save_directory, name))
        if push_to_hub:
            from .hub import upload_folder

            upload_folder(
                save_directory,
                repo_id or os.path.basename(os.path.abspath(save_directory)),
                files=written,
                commit_message=commit_message,
                **hub_kwargs,
            )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        **kwargs,
    ):
        """Upload weights (safetensors), config, image processor and a model card to ``repo_id``."""
        from .hub import upload_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, safe_serialization=safe_serialization, repo_id=repo_id)
            return upload_folder(
                tmp,
                repo_id,
                files=sorted(os.listdir(tmp)),
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    @classmethod
    def load_flax_weights(cls, resolved_archive_file):
        try:
            state = super().load_flax_weights(resolved_archive_file)
        except SafetensorError as err:
            raise OSError(_corrupt_message(resolved_archive_file, err)) from err
        _LOADED_KEYS.set(set(flatten_dict(unfreeze(state)).keys()))
        return state

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained``, strict: a checkpoint whose keys do not match the model is an error.

        Only the classification head may be absent (a backbone checkpoint loaded for fine-tuning: the
        head is freshly initialised) or extra (a classifier checkpoint loaded into the base model).
        """
        token = _LOADED_KEYS.set(None)
        try:
            try:
                model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            except SafetensorError as err:
                raise OSError(_corrupt_message(pretrained_model_name_or_path, err)) from err
            loaded = _LOADED_KEYS.get()
        finally:
            _LOADED_KEYS.reset(token)
        if loaded is not None:
            model._check_checkpoint_keys(loaded, str(pretrained_model_name_or_path))
        model._load_image_processor(pretrained_model_name_or_path, kwargs)
        return model

    def _check_checkpoint_keys(self, loaded: set, source: str) -> None:
        prefix = self.base_model_prefix
        expected = set(flatten_dict(unfreeze(self.params_shape_tree if not self._is_initialized else self.params)))
        expected_is_prefixed = any(k[0] == prefix for k in expected)
        normalized = set()
        for key in loaded:
            if key[0] == prefix and not expected_is_prefixed:
                key = key[1:]
            elif key[0] != prefix and expected_is_prefixed:
                key = (prefix,) + key
            normalized.add(key)

        def is_head(key):
            return len(key) > 1 and key[0] == prefix and key[1] in self.head_param_names

        missing = sorted("/".join(k) for k in expected - normalized if not is_head(k))
        unexpected = sorted("/".join(k) for k in normalized - expected if not is_head(k))
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint at {source} does not match {type(self).__name__} built from its config: "
                f"missing keys {_abbrev(missing)}, unexpected keys {_abbrev(unexpected)}. It was saved by "
                f"another family or version; load it with the class that saved it."
            )

    def _load_image_processor(self, name_or_path, kwargs) -> None:
        hub_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if k in kwargs
        }
        from transformers import AutoImageProcessor

        try:  # the class the processor was saved with (ViT, or Bit / DeiT for timm's crop transform)
            self._image_processor = AutoImageProcessor.from_pretrained(name_or_path, use_fast=False, **hub_kwargs)
        except (OSError, ValueError):
            self._image_processor = None  # none saved: the config's default is used


def _corrupt_message(path, err) -> str:
    return (
        f"could not read the weights of {path}: the safetensors file is corrupt or truncated ({err}). "
        f"Download it again (force_download=True) or save the model again."
    )


def _abbrev(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"
