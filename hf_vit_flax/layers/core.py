"""The core-module base class, its outputs and heads, and the input checks every family shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from .linear import Dense

Dtype = Any


class Features(NamedTuple):
    """What every family's ``forward_features`` returns (the vocabulary of the HF wrappers).

    ``hidden_states`` / ``attentions`` are tuples of arrays when asked for, else ``None``;
    ``hidden_states[-1]`` is the last block's output. ``extra`` holds a family's further outputs by
    name (the fields its output classes add, e.g. CrossViT's large branch), or ``None``.
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    extra: dict | None = None


class CoreModule(nn.Module):
    """Base of the core modules (``ViT``, ``CaiT``, ``CrossViT``, ``CrossFormer``: the seed README's API).

    ``model.apply(params, img, train=False)`` returns logits ``(batch, num_classes)``, or with
    ``num_classes <= 0`` the features named by ``headless_output`` (as the PyTorch original returns
    without its head). Sub-classes define ``num_classes``, ``forward_features`` (a :class:`Features`)
    and ``forward_head``.
    """

    # How to compute, the same for every family (``runtime_fields``): keyword-only, after a family's own fields.
    remat: bool = dataclasses.field(default=False, kw_only=True)
    dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)
    param_dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)

    headless_output: ClassVar[str] = "last_hidden_state"
    # Whether ``forward_features`` takes ``interpolate_pos_encoding=True`` (images of another size).
    supports_interpolate_pos_encoding: ClassVar[bool] = False
    # Whether the module takes only its ``image_size`` (position embeddings of a fixed grid), or every size
    # its own ``forward_features`` checks (CrossFormer: any size its windows tile).
    fixed_image_size: ClassVar[bool] = True
    # The classification head, a module whose fields are a subset of the core module's (same names), and
    # whose ``param_names`` are its top-level parameter names.
    head_class: ClassVar[type[nn.Module]]
    # The family's config class: its ``field_checks`` validate this module's fields of the same name.
    config_class: ClassVar[type]

    def __post_init__(self):
        super().__post_init__()
        # The same per-field errors as the config's (``ViT(patch_size=0)`` names the field instead of
        # failing inside the forward pass with a ZeroDivisionError).
        names = {f.name for f in dataclasses.fields(self)}
        for name, check in self.config_class.field_checks.items():
            if name in names:
                check(name, getattr(self, name))

    # Fields that are how to compute, not what: the HF shells set them from their own arguments.
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"parent", "name", "dtype", "param_dtype", "remat"})

    @classmethod
    def kwargs_from_config(cls, config) -> dict:
        """The module's keyword arguments from a family config: every field of the module (the config's
        options, ``VisionTransformerConfig.options_dataclass``) that the config holds, with ``num_classes``
        from ``num_labels`` and JSON lists back to tuples."""
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name in cls.runtime_fields:
                continue
            if field.name == "num_classes":
                kwargs["num_classes"] = config.num_labels
            elif hasattr(config, field.name):
                kwargs[field.name] = as_tuples(getattr(config, field.name))
        return kwargs

    @classmethod
    def head_module(cls, kwargs: dict) -> nn.Module:
        """The family's head built from core-module keyword arguments (the fields it does not take are ignored)."""
        names = {f.name for f in dataclasses.fields(cls.head_class)} - {"parent", "name"}
        return cls.head_class(**{k: v for k, v in kwargs.items() if k in names})

    def setup_head(self) -> None:
        """Create the head (with ``num_classes > 0``) in this module's own scope: its parameters sit at the
        top level (``head``, ``sm_head`` ...), where checkpoints and converters name them. The HF classifier
        shell builds the same head next to the headless core module, so both share one implementation."""
        if self.num_classes > 0:
            names = {f.name for f in dataclasses.fields(self.head_class)} - {"parent", "name"}
            self.classifier = self.head_module({k: getattr(self, k) for k in names})
            nn.share_scope(self, self.classifier)

    def forward_head(self, pooled):
        return self.classifier(pooled)

    def __call__(self, img, train: bool = False):
        features = self.forward_features(img, train=train)
        if self.num_classes <= 0:
            return getattr(features, self.headless_output)
        return self.forward_head(features.pooler_output)


class LinearHead(nn.Module):
    """A single ``Linear`` head named ``head`` (timm's and vit-pytorch's for most families)."""

    param_names: ClassVar[tuple[str, ...]] = ("head",)

    num_classes: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.head = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, pooled):
        return self.head(pooled)


def as_tuples(value):
    """JSON's lists back to (nested) tuples: module fields are hashable and compare by value."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; a length-2 sequence is returned as a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_image(images: jax.Array, image_size: tuple[int, int] | None, channels: int, *, family: str) -> None:
    """Fail early, with the fix, on images a model cannot take (instead of an einops/XLA traceback).

    ``image_size=None`` accepts any size (a model that interpolates its position embeddings).
    """
    if images.ndim != 4:
        raise ValueError(
            f"{family} expects a batch of images of shape (batch, height, width, channels), "
            f"got an array of shape {tuple(images.shape)}"
        )
    _, height, width, got_channels = images.shape
    if got_channels != channels:
        hint = ""
        if height == channels and got_channels != channels:
            hint = " (this looks like NCHW input: the flax modules take NHWC, transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"{family} was built for {channels}-channel images but got {got_channels} channels "
            f"in an input of shape {tuple(images.shape)}{hint}"
        )
    if image_size is not None and (height, width) != tuple(image_size):
        raise ValueError(
            f"{family} was built for {image_size[0]}x{image_size[1]} images but got {height}x{width}; "
            f"resize the images (e.g. with the model's image processor) or build the model with "
            f"image_size=({height}, {width})"
        )


def check_divisible(image_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
    for axis, image, patch in (("height", image_size[0], patch_size[0]), ("width", image_size[1], patch_size[1])):
        if image % patch != 0:
            raise ValueError(f"image {axis} {image} is not divisible by patch {axis} {patch}")
