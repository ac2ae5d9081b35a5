"""save_pretrained / from_pretrained: formats, Auto classes, the transformers 4.x work-arounds, bad files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoConfig, AutoImageProcessor

from hf_vit_flax import (
    FlaxAutoModel,
    FlaxAutoModelForImageClassification,
    FlaxViTForImageClassification,
    FlaxViTModel,
    ViT,
    ViTConfig,
)
from tests.helpers import images

CONFIG = dict(image_size=32, patch_size=8, num_classes=4, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


@pytest.fixture(scope="module")
def model():
    return FlaxViTForImageClassification(ViTConfig(**CONFIG), seed=1)


@pytest.fixture(scope="module")
def x():
    return images(2, 32, 32)


def test_save_load_auto_classes_exact(model, x, tmp_path):
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(os.listdir(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    assert type(AutoConfig.from_pretrained(tmp_path)) is ViTConfig
    loaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is FlaxViTForImageClassification
    np.testing.assert_array_equal(loaded(x).logits, model(x).logits)
    base = FlaxAutoModel.from_pretrained(tmp_path)  # a classification checkpoint into the base model
    assert type(base) is FlaxViTModel
    core_module = ViT(**model.config.to_module_kwargs())
    features = core_module.apply(model.module_params(), x.transpose(0, 2, 3, 1), method="forward_features")
    np.testing.assert_allclose(base(x).pooler_output, features.pooler_output, atol=1e-6)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)).__name__ == "ViTImageProcessor"


def test_base_checkpoint_into_classifier_and_back(model, x, tmp_path):
    base = FlaxViTModel(model.config, _do_init=False)
    base_params = model.params["vit"]
    base.save_pretrained(tmp_path, params=base_params)
    classifier = FlaxViTForImageClassification.from_pretrained(tmp_path)  # head freshly initialised
    np.testing.assert_array_equal(classifier.params["vit"]["pos_embedding"], model.params["vit"]["pos_embedding"])


def test_msgpack_format_and_switching_formats(model, x, tmp_path):
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert os.path.exists(tmp_path / "flax_model.msgpack")
    np.testing.assert_array_equal(FlaxViTForImageClassification.from_pretrained(tmp_path)(x).logits, model(x).logits)
    other = FlaxViTForImageClassification(model.config, seed=7)
    other.save_pretrained(tmp_path)  # safetensors now; the stale msgpack would shadow it
    assert not os.path.exists(tmp_path / "flax_model.msgpack")
    np.testing.assert_array_equal(FlaxViTForImageClassification.from_pretrained(tmp_path)(x).logits, other(x).logits)


def test_save_keeps_other_files_starting_with_model(model, tmp_path):
    # transformers 4.x deletes every file whose name starts with "model" when saving safetensors.
    (tmp_path / "modeling_custom.py").write_text("print('mine')\n")
    (tmp_path / "model_notes.txt").write_text("notes\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_custom.py").read_text() == "print('mine')\n"
    assert (tmp_path / "model_notes.txt").exists()


def test_dtype_argument_does_not_leak_into_saved_config(model, x, tmp_path):
    model.save_pretrained(tmp_path)
    half = FlaxAutoModelForImageClassification.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert half(x).logits.dtype == jnp.bfloat16
    half.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved.get("dtype") in (None, "float32")
    assert "architectures" in saved and saved["architectures"] == ["ViTForImageClassification"]
    reloaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "again")
    np.testing.assert_array_equal(reloaded(x).logits, model(x).logits)


@pytest.mark.parametrize("cast", ["to_bf16", "to_fp16"])
def test_half_precision_weights_save_and_load_as_saved(model, cast, tmp_path):
    # bfloat16 is an ml_dtypes type that numpy does not count as floating point; it is a weight dtype.
    params = getattr(model, cast)(model.params)
    for safe in (True, False):
        model.save_pretrained(tmp_path, params=params, safe_serialization=safe)
        loaded = FlaxViTForImageClassification.from_pretrained(tmp_path)
        want = jnp.dtype(jnp.bfloat16 if cast == "to_bf16" else jnp.float16)
        assert {v.dtype for v in jax.tree.leaves(loaded.params)} == {want}


def test_corrupt_and_truncated_safetensors_are_clear_errors(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="corrupt or truncated"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(OSError, match="corrupt or truncated"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)


def test_checkpoint_of_another_shape_names_keys(model, tmp_path):
    model.save_pretrained(tmp_path)
    wider = ViTConfig(**dict(CONFIG, mlp_dim=128))
    with pytest.raises(ValueError, match="mlp"):
        FlaxViTForImageClassification.from_pretrained(tmp_path, config=wider)
    deeper = ViTConfig(**dict(CONFIG, depth=3))
    with pytest.raises(ValueError, match="missing keys .*blocks_2"):
        FlaxViTForImageClassification.from_pretrained(tmp_path, config=deeper)


def test_checkpoint_of_another_family_is_a_clear_error(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "cait_flax"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'cait_flax'"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)


def test_save_into_a_file_path_is_refused(model, tmp_path):
    target = tmp_path / "weights"
    target.write_text("precious")
    with pytest.raises(ValueError, match="is a file"):
        model.save_pretrained(target)
    assert target.read_text() == "precious"


def test_max_shard_size_takes_transformers_units(model, tmp_path):
    # transformers' save_pretrained takes "5GiB" / "150kiB" (powers of 1024) as well as "150kB".
    from hf_vit_flax.checkpoint import _parse_size

    assert [_parse_size(s) for s in ("150kB", "150kiB", "2MiB", 7)] == [150_000, 150 * 2**10, 2 * 2**20, 7]
    model.save_pretrained(tmp_path, max_shard_size="20kiB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    np.testing.assert_array_equal(
        FlaxViTForImageClassification.from_pretrained(tmp_path)(images(1, 32, 32)).logits,
        model(images(1, 32, 32)).logits,
    )
