"""``FlaxAutoModel`` and ``FlaxAutoModelForImageClassification`` that work on every transformers line.

They read a checkpoint's ``config.json``, pick the class registered for its ``model_type`` and call its
``from_pretrained``. On transformers 4.x the families are also registered with transformers' own Flax
Auto classes (``hf_vit_flax/__init__.py``), and a model type of transformers' (``"vit"``, ``"bert"``)
is handed to them; on transformers 5.x, which has no Flax models, such a checkpoint is a clear error.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .checkpoint import CONFIG_NAME, CheckpointLocation, read_json

_LOCATION_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only", "force_download")


class _BaseAutoModel:
    """Dispatch on ``config.model_type`` to the registered model class."""

    # The attribute of a ``families.Family`` that names the class this Auto class builds.
    _family_attribute: ClassVar[str]
    # The transformers 4.x Auto class of the same name, for model types that are not this package's.
    _transformers_name: ClassVar[str]
    _transformers_mapping: ClassVar[str]  # the name of its model_type -> class name table
    _registry: ClassVar[dict[str, type]]

    def __init__(self, *args, **kwargs):
        raise OSError(f"{type(self).__name__} is built with from_pretrained(...) or from_config(config)")

    @classmethod
    def register(cls, config_class: type, model_class: type, exist_ok: bool = False) -> None:
        """Map ``config_class.model_type`` to ``model_class`` (as transformers' ``Auto*.register``)."""
        model_type = config_class.model_type
        known = cls._mapping()
        if model_type in known and known[model_type] is not model_class and not exist_ok:
            raise ValueError(
                f"{model_type} is already registered with {cls.__name__}: pass exist_ok=True to replace it"
            )
        cls._registry[model_type] = model_class

    @classmethod
    def _mapping(cls) -> dict[str, type]:
        from .families import FAMILIES

        mapping = {f.config_class.model_type: getattr(f, cls._family_attribute) for f in FAMILIES.values()}
        mapping.update(cls._registry)
        return mapping

    @classmethod
    def _model_class(cls, model_type: str | None, source: str) -> type | None:
        mapping = cls._mapping()
        if model_type in mapping:
            return mapping[model_type]
        if model_type in _transformers_flax_model_types(cls._transformers_mapping):
            return None  # transformers 4.x loads its own Flax models
        known = ", ".join(sorted(mapping))
        found = f"a '{model_type}' model" if model_type else "a config without a model_type"
        raise ValueError(
            f"{source} holds {found}; {cls.__name__} loads the model types of hf_vit_flax ({known}). "
            f"Load it with the library that made it."
        )

    @classmethod
    def from_config(cls, config, **kwargs):
        """A randomly initialised model of the class registered for ``config``."""
        model_class = cls._model_class(getattr(config, "model_type", None), f"config {type(config).__name__}")
        if model_class is None:
            return _transformers_auto_class(cls._transformers_name).from_config(config, **kwargs)
        return model_class._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """Load a checkpoint (a folder or a Hub repo id) with the class registered for its ``model_type``.

        Takes the arguments of the model classes' ``from_pretrained`` (``revision``, ``cache_dir``,
        ``token``, ``local_files_only``, ``subfolder``, ``dtype``, ``_do_init`` ...).
        """
        config = kwargs.get("config")
        if config is not None and not isinstance(config, (str, os.PathLike)):
            model_type = config.model_type
            source = f"config {type(config).__name__}"
        else:
            location = CheckpointLocation(
                os.fspath(config or pretrained_model_name_or_path),
                **{k: kwargs[k] for k in _LOCATION_KWARGS if k in kwargs},
            )
            source = location.describe()
            path = location.require(CONFIG_NAME, "the model's config")
            model_type = _read_model_type(path)
        model_class = cls._model_class(model_type, source)
        if model_class is None:
            auto = _transformers_auto_class(cls._transformers_name)
            return auto.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


def _read_model_type(path: str) -> Any:
    from .configuration_utils import check_json_object

    return check_json_object(read_json(path), path).get("model_type")


def _transformers_auto_class(name: str):
    import transformers

    return getattr(transformers, name, None)  # transformers 4.x only


def _transformers_flax_model_types(mapping_name: str) -> set[str]:
    """The model types transformers' Flax Auto class of that table loads (none on transformers 5)."""
    try:
        from transformers.models.auto import modeling_flax_auto
    except ImportError:
        return set()
    return set(getattr(modeling_flax_auto, mapping_name, {}))


class FlaxAutoModel(_BaseAutoModel):
    """The base model (features: ``last_hidden_state``, ``pooler_output``) of a checkpoint's family."""

    _family_attribute = "model_class"
    _transformers_name = "FlaxAutoModel"
    _transformers_mapping = "FLAX_MODEL_MAPPING_NAMES"
    _registry: ClassVar[dict[str, type]] = {}


class FlaxAutoModelForImageClassification(_BaseAutoModel):
    """The image classifier (``logits``) of a checkpoint's family."""

    _family_attribute = "classifier_class"
    _transformers_name = "FlaxAutoModelForImageClassification"
    _transformers_mapping = "FLAX_MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"
    _registry: ClassVar[dict[str, type]] = {}
