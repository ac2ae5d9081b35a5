"""What every family's config shares. Imports no jax: configs are plain data.

Each family's config takes the seed README's keyword names (``image_size, patch_size, num_classes,
dim, depth, heads, mlp_dim`` ...) and answers to transformers' standard names through
``attribute_map`` (``hidden_size`` -> ``dim`` and so on), so both vocabularies work for reading,
writing and construction.

Every config is validated when it is built and when it is loaded (``from_dict``, ``from_pretrained``,
``from_json_file``): each field's type and range (each family's ``field_checks`` table of the helpers
below: ``positive_int``, ``rate``, ``boolean`` ...), then the rules that relate several fields (the
family's ``check_architecture``), then the size. A config whose parameter count (a closed form per
family) exceeds ``HF_VIT_FLAX_MAX_PARAMETERS`` (default 4 billion: 16 GB of float32 weights) or whose
layers exceed ``HF_VIT_FLAX_MAX_LAYERS`` (default 1000; every layer is traced on its own, so tracing
time grows with depth) is refused with that count; raise those environment variables to build a
larger model anyway.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from transformers import PretrainedConfig

DEFAULT_NUM_CLASSES = 1000

# The size limits (environment variables, read at each validation) and their defaults. ViT-gigantic,
# the largest shipped variant, has 1.8 billion parameters and 48 layers.
MAX_PARAMETERS_VARIABLE = "HF_VIT_FLAX_MAX_PARAMETERS"
MAX_LAYERS_VARIABLE = "HF_VIT_FLAX_MAX_LAYERS"
DEFAULT_MAX_PARAMETERS = 4_000_000_000
DEFAULT_MAX_LAYERS = 1_000

# transformers' names of a plain transformer stack's sizes, as aliases of the seed names (ViT, CaiT).
TRANSFORMER_ATTRIBUTE_MAP = {
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "heads",
    "intermediate_size": "mlp_dim",
}


# Fields stored as an int or an [height, width] list.
SIZE_FIELDS = frozenset({"image_size", "patch_size"})


# -- field checks: each takes the field's name and value and raises a ValueError naming both ---------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _shown(value) -> str:
    return f"{value!r} (a {type(value).__name__})" if not _is_real(value) else repr(value)


def positive_int(name: str, value) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {_shown(value)}")


def non_negative_int(name: str, value) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 and an integer, got {_shown(value)}")


def rate(name: str, value) -> None:
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {_shown(value)}")


def is_positive_number(value) -> bool:
    """A finite real number > 0 (not a bool)."""
    return _is_real(value) and math.isfinite(value) and value > 0


def positive_float(name: str, value) -> None:
    if not is_positive_number(value):
        raise ValueError(f"{name} must be a positive finite number, got {_shown(value)}")


def boolean(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {_shown(value)}")


def positive_size(name: str, value) -> None:
    """A size: a positive int (square), or a (height, width) pair of them."""
    pair = isinstance(value, (list, tuple))
    sides = list(value) if pair else [value]
    if (pair and len(sides) != 2) or not all(_is_int(side) and side > 0 for side in sides):
        raise ValueError(f"{name} must be a positive integer or a (height, width) pair of them, got {_shown(value)}")


def optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """``check``, with ``None`` allowed."""

    def check_optional(name: str, value) -> None:
        if value is not None:
            check(name, value)

    return check_optional


def one_of(*choices: str) -> Callable[[str, Any], None]:
    def check_choice(name: str, value) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    return check_choice


def presets(names: tuple[str, ...], **options: tuple) -> dict[str, dict[str, Any]]:
    """Named presets of options from a table with one row per option and one column per preset: each row
    reads as how the references differ in that option. ``presets(("a", "b"), x=(1, 2))`` is
    ``{"a": {"x": 1}, "b": {"x": 2}}``."""
    for name, values in options.items():
        if len(values) != len(names):
            raise ValueError(f"option {name} has {len(values)} values for the {len(names)} presets {names}")
    return {preset: {name: values[i] for name, values in options.items()} for i, preset in enumerate(names)}


def check_positive(**values: int) -> None:
    for name, value in values.items():
        positive_int(name, value)


class VisionTransformerConfig(PretrainedConfig):
    """Base class of the family configs: label handling, validation, the default image processor."""

    # Sub-classes set ``model_type`` and extend ``attribute_map``.
    attribute_map = {"num_channels": "channels"}
    # Which family-specific class names to suggest when a checkpoint of another family is loaded.
    family_name = "vision transformer"
    # Each family declares the type and range of its fields once: field name -> check(name, value). Here:
    # the fields of every family that this class reads itself (image size, channels) and the LayerNorm eps.
    field_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "image_size": positive_size,
        "channels": positive_int,
        "layer_norm_eps": positive_float,
    }

    def __init__(self, num_classes: int | None = None, image_mean=None, image_std=None, **kwargs):
        check_label_counts(num_classes=num_classes, num_labels=kwargs.get("num_labels"))
        # ``num_classes`` (seed name) and ``num_labels`` / ``id2label`` (transformers) are one quantity.
        if num_classes is not None:
            if "num_labels" in kwargs and kwargs["num_labels"] != num_classes:
                raise ValueError(f"num_classes={num_classes} and num_labels={kwargs['num_labels']} disagree")
            if kwargs.get("id2label") is not None and len(kwargs["id2label"]) != num_classes:
                raise ValueError(f"num_classes={num_classes} but id2label has {len(kwargs['id2label'])} entries")
            if kwargs.get("id2label") is None:
                kwargs["num_labels"] = num_classes
        elif kwargs.get("id2label") is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = DEFAULT_NUM_CLASSES
        # Normalisation the model was trained with; written into the image processor that ships with it.
        self.image_mean = _as_list(image_mean, "image_mean")
        self.image_std = _as_list(image_std, "image_std")
        super().__init__(**kwargs)
        self.validate()

    @property
    def num_classes(self) -> int:
        return self.num_labels

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self.num_labels = value

    # -- to be provided by each family ------------------------------------------------------------
    def check_architecture(self) -> None:
        """Raise ValueError for combinations of fields the model cannot take (each field is valid on its own)."""

    def estimate_num_parameters(self) -> int:
        """The model's parameter count (with its head), in closed form: cheap at any size."""
        raise NotImplementedError

    def num_layers(self) -> int:
        """How many blocks the model has (each is traced on its own)."""
        raise NotImplementedError

    def to_module_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments of the family's core linen module: each of its fields the config
        holds (``CoreModule.kwargs_from_config``): the module's fields are the config's options
        (:meth:`options_dataclass`)."""
        from .families import family_of_config

        return family_of_config(self).core_module_class.kwargs_from_config(self)

    @classmethod
    def options_dataclass(cls, *, required: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> type:
        """The family's options as a dataclass, the base of its core module (``class ViT(CoreModule,
        ViTConfig.options_dataclass(required=...))``): the names, annotations, defaults and order of this
        config's ``__init__`` arguments, which declare each option once, for the config and the module.

        ``required`` names the arguments the module, like its vit-pytorch reference, has no default for
        (the config has one for each); they lead the signature. The module's ``num_classes`` defaults to the
        config's default number of labels; ``exclude`` names arguments the module does not take
        (CrossFormer's ``image_size``: it takes any size).
        """
        fields = []
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or param.kind is param.VAR_KEYWORD or name in exclude:
                continue
            if name in required:
                fields.append((name, param.annotation))
                continue
            default = DEFAULT_NUM_CLASSES if name == "num_classes" else param.default
            fields.append((name, param.annotation, dataclasses.field(default=default)))
        if [field[0] for field in fields[: len(required)]] != list(required):
            raise TypeError(f"{cls.__name__}: the required options {required} must lead its __init__ arguments")
        return dataclasses.make_dataclass(f"{cls.family_name}Options", fields, eq=False)

    def set_options(self, options: Mapping[str, Any]) -> None:
        """Store a family config's keyword arguments (its ``locals()``) as attributes, sizes as JSON values.

        A family's ``__init__`` lists its options once, in its signature, then calls
        ``self.set_options(locals())`` and ``super().__init__(num_classes=num_classes, **kwargs)``.
        """
        for name, value in options.items():
            if name not in ("self", "kwargs", "num_classes", "__class__"):
                setattr(self, name, as_json_size(value) if name in SIZE_FIELDS else value)

    # -- shared -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError, naming the field, the problem and the fix, for a config the model cannot take.

        Runs at construction and after every load; in order: each field (``field_checks``), the
        normalisation, the family's cross-field rules (``check_architecture``), the size limits.
        """
        for name, check in self.field_checks.items():
            check(name, getattr(self, name))
        check_normalization(self.image_mean, self.image_std, self.channels)
        self.check_architecture()
        check_model_size(self)

    @classmethod
    def _dict_from_json_file(cls, json_file):
        # transformers' reader returns any JSON value; a list or a string then fails with a TypeError.
        return check_json_object(super()._dict_from_json_file(json_file), json_file)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict takes a dict of config fields, got {type(config_dict).__name__}")
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"this checkpoint's config has model_type '{found}', but {cls.__name__} expects "
                f"'{cls.model_type}' ({cls.family_name}). Load it with the Auto classes "
                f"(FlaxAutoModelForImageClassification.from_pretrained) or the class of its own family."
            )
        check_label_counts(num_classes=kwargs.get("num_classes"), num_labels=kwargs.get("num_labels"))
        result = super().from_dict(config_dict, **kwargs)
        # transformers sets keyword overrides (from_pretrained(..., depth=0)) after construction.
        config = result[0] if isinstance(result, tuple) else result
        config.validate()
        return result

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
    """Sizes are stored as int or [h, w] (json has no tuples); modules get tuples back. Only integers
    (numpy's too) become ``int``: validation names a float or a string rather than truncating it."""

    def side(v):
        return int(v) if _is_int(v) else v

    return [side(v) for v in value] if isinstance(value, (list, tuple)) else side(value)


def check_label_counts(**values) -> None:
    """``num_classes`` / ``num_labels``: an integer >= 0 (0: no classification head)."""
    for name, value in values.items():
        if value is not None:
            non_negative_int(name, value)


def check_normalization(image_mean, image_std, channels: int) -> None:
    """``image_mean`` / ``image_std``: None, or one finite number per channel (positive for the std)."""
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if values is None:
            continue
        if (
            not isinstance(values, (list, tuple))
            or len(values) != channels
            or not all(_is_real(v) and math.isfinite(v) for v in values)
        ):
            raise ValueError(f"{name} must be {channels} finite numbers (one per channel), got {values!r}")
        if name == "image_std" and min(values) <= 0:
            raise ValueError(f"image_std must be positive (images are divided by it), got {values!r}")


def _as_list(values, name: str):
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a list of numbers, one per channel, got {values!r}")
    return list(values)


# -- size limits ----------------------------------------------------------------------------------


def size_limit(variable: str, default: int) -> int:
    """The limit set by environment ``variable`` (an integer; ``1e10`` and ``10_000`` are accepted) or ``default``."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise ValueError(f"{variable} must be a positive integer, got {raw!r}")
    return int(value)


def check_model_size(config: VisionTransformerConfig) -> None:
    """Refuse a model that cannot be built: more parameters or layers than the limits (see the module docstring)."""
    family = config.family_name
    layers = config.num_layers()
    what = f"this {family} config has {layers:,} layers"
    why = " (each layer is traced and compiled on its own)"
    refuse_over_limit(layers, MAX_LAYERS_VARIABLE, DEFAULT_MAX_LAYERS, what, "the depth fields", why)
    params = config.estimate_num_parameters()
    what = f"this {family} config would have about {params:,} parameters ({4 * params / 1e9:,.1f} GB in float32)"
    fields = "the widths, depths and the image / patch sizes"
    refuse_over_limit(params, MAX_PARAMETERS_VARIABLE, DEFAULT_MAX_PARAMETERS, what, fields)


def refuse_over_limit(count: int, variable: str, default: int, what: str, fields: str, why: str = "") -> None:
    """Raise ValueError when ``count`` is over the limit set by ``variable`` (else ``default``): ``what`` was
    counted, ``why`` there is a limit, which ``fields`` to check, and how to raise the limit."""
    limit = size_limit(variable, default)
    if count > limit:
        raise ValueError(
            f"{what}, more than the limit of {limit:,}{why}: check {fields}, or set {variable}={count} to build it anyway"
        )


# -- closed-form parameter counts (shared by the families' estimates) --------------------------------


def dense_params(features_in: int, features_out: int, bias: bool = True) -> int:
    return features_in * features_out + (features_out if bias else 0)


def norm_params(dim: int) -> int:
    return 2 * dim  # scale and bias


def block_params(
    dim: int,
    heads: int,
    dim_head: int,
    mlp_dim: int,
    *,
    qkv_bias: bool = False,
    project_out: bool = True,
    layer_scale: bool = False,
) -> int:
    """A pre-norm transformer block: two LayerNorms, qkv and output projections, a two-layer MLP, LayerScale."""
    inner = heads * dim_head
    attention = dense_params(dim, 3 * inner, qkv_bias) + (dense_params(inner, dim) if project_out else 0)
    mlp = dense_params(dim, mlp_dim) + dense_params(mlp_dim, dim)
    return 2 * norm_params(dim) + attention + mlp + (2 * dim if layer_scale else 0)


def check_json_object(data, json_file) -> dict:
    """``data`` read from ``json_file`` if it is a JSON object; a ValueError naming the file otherwise."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{os.fspath(json_file)} holds a JSON {_json_kind(data)}, not an object: a config.json maps field "
            f"names to values. Save the config again with save_pretrained."
        )
    return data


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _is_real(value) else type(value).__name__
    )


def _is_numpy_dtype(value) -> bool:
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True
