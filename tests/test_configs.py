"""The variant table (configs/): every timm variant builds and has exactly timm's parameter count.

Each ``configs/<architecture>.json`` written by ``conversion/make_configs.py`` records timm's own
parameter count of that architecture (``"timm": {"reference_num_params": ...}``); the Flax model
built from the file (``jax.eval_shape``, no memory) must have exactly that many parameters, and a
variant without a recorded count fails.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from hf_vit_flax.families import FAMILIES
from hf_vit_flax.timm_weights import UNSUPPORTED_FILE, list_timm_models, load_variant_config, timm_family
from hf_vit_flax.variants import configs_dir, read_variant

TIMM_VARIANTS = [path.stem for path in sorted(configs_dir().glob("*.json")) if "timm" in json.loads(path.read_text())]


def test_the_table_is_not_empty_and_listed():
    assert len(TIMM_VARIANTS) > 100
    assert list_timm_models() == [name for name in TIMM_VARIANTS if not name.startswith("_")]


@pytest.mark.parametrize("architecture", TIMM_VARIANTS)
def test_variant_builds_with_the_reference_parameter_count(architecture):
    info = read_variant(architecture)["timm"]
    assert info["architecture"] == architecture
    assert isinstance(info.get("reference_num_params"), int), f"{architecture} has no recorded parameter count"
    family = timm_family(architecture)
    assert info["family"] == family.name
    config = load_variant_config(architecture)
    assert isinstance(config, family.config_class)
    model_class = family.classifier_class if config.num_labels > 0 else family.model_class
    model = model_class(config, _do_init=False)  # jax.eval_shape of init: shapes only
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(model.params_shape_tree)))
    assert count == info["reference_num_params"]
    assert config.estimate_num_parameters() == count  # the closed form the size limit reads


@pytest.mark.parametrize("architecture", [a for a in TIMM_VARIANTS if a.startswith(("deit", "vit_tiny", "vit_wee"))])
def test_variant_forward_shape(architecture):
    config = load_variant_config(architecture)
    family = timm_family(architecture)
    model = family.classifier_class(config, _do_init=False)
    height, width = config.image_size_hw
    pixels = jax.ShapeDtypeStruct((2, config.channels, height, width), np.float32)
    out = jax.eval_shape(lambda p, x: model(x, params=p).logits, model.params_shape_tree, pixels)
    assert out.shape == (2, config.num_labels)


def test_unsupported_list_is_consistent():
    unsupported = read_variant(UNSUPPORTED_FILE)
    prefixes = tuple(p for f in FAMILIES.values() for p in f.timm_prefixes)
    assert unsupported and all(isinstance(reason, str) and reason for reason in unsupported.values())
    assert not set(unsupported) & set(TIMM_VARIANTS)
    assert all(name.startswith(prefixes) for name in unsupported)
