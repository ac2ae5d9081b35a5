"""The model a fine-tuning starts from, with a classification head for the dataset's labels.

MODEL is what the rest of the package loads: a folder written by ``save_pretrained`` or a Hub repo id
(``from_pretrained(..., num_labels=N, id2label=..., ignore_mismatched_sizes=True)``, as transformers
replaces a head), a timm, transformers-format or CrossFormer checkpoint (``timm:<name>``,
``transformers:<repo-or-path>``, ``crossformer:<path>``: ``hf_vit_flax.sources.Source``, the resolution of
``hf-vit-flax convert``), or a named variant of ``configs/`` (randomly initialised). Without MODEL, the
``vit-finetune-tiny`` preset, at a size suited to the data.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from ..modeling_utils import FlaxVisionPreTrainedModel

DEFAULT_PRESET = "vit-finetune-tiny"
# The default preset's input for small images (digits, 8x8 scans) and for photographs.
DEFAULT_SIZES = {"small": (16, 4), "photo": (64, 8)}


def _is_saved_model(path: str) -> bool:
    """A folder written by ``save_pretrained`` (its config.json names one of our model types)."""
    from ..checkpoint import folder_model_type
    from ..families import FAMILIES

    return folder_model_type(path) in {f.config_class.model_type for f in FAMILIES.values()}


def with_labels(model: FlaxVisionPreTrainedModel, id2label: dict[int, str], seed: int = 0, **kwargs):
    """``model`` with a classification head for ``id2label``: the backbone kept, the head kept when it has
    those labels already and otherwise fresh (as ``from_pretrained(..., ignore_mismatched_sizes=True)``)."""
    from ..families import family_of_config

    family = family_of_config(model.config)
    config = model.config.__class__.from_dict(
        {**model.config.to_dict(), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    )
    config.num_labels = len(id2label)
    new = family.classifier_class(config, seed=seed, **kwargs)
    prefix = new.base_model_prefix
    backbone = model.params if not model.has_head() else model.params[prefix]
    params = dict(new.params)
    params[prefix] = backbone
    same_labels = model.has_head() and dict(model.config.id2label) == dict(id2label)
    if same_labels:
        params.update({k: v for k, v in model.params.items() if k != prefix})
    new.params = params
    new.image_processor = model.image_processor
    new.card_data = dict(model.card_data)
    return new


def load_model(
    spec: str | None,
    id2label: dict[int, str],
    *,
    small_images: bool = False,
    image_size: int | None = None,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    crossformer_variant: str | None = None,
) -> tuple[FlaxVisionPreTrainedModel, str]:
    """The model to fine-tune and a name of what it started from (for the model card)."""
    from .. import FlaxAutoModelForImageClassification
    from ..families import family_of_config
    from ..hub import looks_like_path
    from ..sources import Source, is_prefixed
    from ..variants import variant_config, variant_names

    kwargs: dict[str, Any] = {
        "dtype": jnp.bfloat16 if precision == "bf16" else jnp.float32,
        "gradient_checkpointing": gradient_checkpointing,
    }
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if spec is None or spec in variant_names():
        name = spec or DEFAULT_PRESET
        overrides: dict[str, Any] = {}
        if spec is None:
            size, patch = DEFAULT_SIZES["small" if small_images else "photo"]
            overrides = {"image_size": image_size or size, "patch_size": patch}
        elif image_size is not None:
            overrides = {"image_size": image_size}
        config = variant_config(name, **overrides, **labels)
        model = family_of_config(config).classifier_class(config, seed=seed, **kwargs)
        return model, name
    is_source = is_prefixed(spec) or (os.path.exists(spec) and not _is_saved_model(spec))
    if is_source:
        source = Source.parse(spec, variant=crossformer_variant, image_size=image_size)
        return with_labels(source.convert(), id2label, seed=seed, **kwargs), spec
    if not os.path.exists(spec) and looks_like_path(spec):
        raise FileNotFoundError(
            f"the model {spec} does not exist: give a folder written by save_pretrained, a Hub repo id, "
            f"timm:<name>, transformers:<repo-or-path>, crossformer:<path> or a variant of configs/ ({DEFAULT_PRESET}, vit_tiny_patch16_224 ...)"
        )
    if image_size is not None:
        raise ValueError(f"--image-size applies to variants and timm checkpoints; {spec} has its own size")
    model = FlaxAutoModelForImageClassification.from_pretrained(
        spec, ignore_mismatched_sizes=True, seed=seed, dtype=kwargs["dtype"], **labels
    )
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model, spec
