"""The Hugging Face interface on both transformers lines (4.57 and 5.x) and huggingface_hub 0.x to 2.x.

Checkpoints written under the other line load with identical weights and logits; the Auto classes
dispatch on model_type; ``from_pretrained`` takes transformers' Hub options, exercised against the
loopback Hub server with huggingface_hub's real client.
"""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax.traverse_util import flatten_dict, unflatten_dict
from PIL import Image

from hf_vit_flax import (
    FlaxAutoModel,
    FlaxAutoModelForImageClassification,
    FlaxCaiTForImageClassification,
    FlaxPreTrainedModel,
    FlaxViTForImageClassification,
    FlaxViTModel,
    ViTConfig,
)
from tests.helpers import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "cross_line")
TRANSFORMERS_4 = transformers.__version__.startswith("4.")
CONFIG = dict(image_size=32, patch_size=8, num_classes=4, dim=32, depth=1, heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def model():
    return FlaxViTForImageClassification(ViTConfig(**CONFIG, id2label={i: f"c{i}" for i in range(4)}), seed=5)


@pytest.fixture(scope="module")
def x():
    return images(2, 32, 32)


# -- checkpoints across the two lines ------------------------------------------------------------------
@pytest.mark.parametrize("line", ["transformers-4", "transformers-5"])
@pytest.mark.parametrize(
    "name, cls", [("vit", FlaxViTForImageClassification), ("cait", FlaxCaiTForImageClassification)]
)
def test_checkpoint_written_by_either_line_loads_with_identical_logits(line, name, cls, tmp_path):
    folder = os.path.join(FIXTURES, line, name)
    x = np.load(os.path.join(FIXTURES, line, "x.npy"))
    shutil.copytree(folder, tmp_path / name)  # the fixture stays read-only
    loaded = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / name)
    assert type(loaded) is cls
    # The weights are read exactly; the logits were recorded on another machine, whose CPU may take another
    # matmul path (hf_vit_flax/_cpu.py), so they agree to float32 rounding.
    np.testing.assert_allclose(
        np.asarray(loaded(x).logits), np.load(os.path.join(folder, "logits.npy")), rtol=0, atol=1e-5
    )
    # ... and saving it again under this line gives the same tensors.
    loaded.save_pretrained(tmp_path / "again")
    again = cls.from_pretrained(tmp_path / "again")
    for a, b in zip(jax_leaves(loaded.params), jax_leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("line", ["transformers-4", "transformers-5"])
def test_image_processor_gives_the_same_pixel_values_on_both_lines(line, tmp_path):
    from tests.fixtures.cross_line.make import sample_image

    shutil.copytree(os.path.join(FIXTURES, line, "vit"), tmp_path / "vit")
    processor = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "vit").image_processor
    pixels = processor(sample_image(), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixels, np.load(tmp_path / "vit" / "pixel_values.npy"))


def jax_leaves(tree):
    return [np.asarray(v) for _, v in sorted(flatten_dict(tree).items())]


# -- the classes on this line ----------------------------------------------------------------------------
def test_classes_extend_transformers_base_on_4x_and_stand_alone_on_5x(model):
    assert isinstance(model, FlaxPreTrainedModel)
    if TRANSFORMERS_4:
        assert isinstance(model, transformers.FlaxPreTrainedModel)
    else:
        assert not hasattr(transformers, "FlaxPreTrainedModel")
    assert model.config.model_type == "vit_flax" and model.module is not None and model.framework == "flax"
    assert model.num_parameters() == sum(int(np.prod(v.shape)) for v in jax_leaves(model.params))
    assert model.num_parameters() == sum(int(np.prod(v.shape)) for v in flatten_dict(model.params_shape_tree).values())


def test_dtype_casts_and_init_weights(model, x):
    half = model.to_bf16(model.params)
    assert all(v.dtype == jnp.bfloat16 for v in jax_leaves(half))
    assert all(v.dtype == jnp.float32 for v in jax_leaves(model.to_fp32(half)))
    assert all(v.dtype == jnp.float16 for v in jax_leaves(model.to_fp16(model.params)))
    mask = unflatten_dict({k: k[0] != "head" for k in flatten_dict(model.params)})
    masked = model.to_bf16(model.params, mask)
    assert masked["head"]["kernel"].dtype == jnp.float32
    others = [v for k, v in flatten_dict(masked).items() if k[0] != "head"]
    assert others and all(v.dtype == jnp.bfloat16 for v in others)
    fresh = model.init_weights(model.key, model.input_shape)
    assert set(flatten_dict(fresh)) == set(flatten_dict(model.params))


def test_do_init_false_returns_model_and_params(model, x, tmp_path):
    model.save_pretrained(tmp_path)
    lazy, params = FlaxViTForImageClassification.from_pretrained(tmp_path, _do_init=False)
    with pytest.raises(ValueError, match="_do_init=False"):
        lazy.params  # noqa: B018
    np.testing.assert_array_equal(lazy(x, params=params).logits, model(x).logits)
    # The base model takes the classifier's checkpoint without its head, strictly checked.
    base, base_params = FlaxAutoModel.from_pretrained(tmp_path, _do_init=False)
    assert type(base) is FlaxViTModel and "head" not in base_params and "vit" not in base_params
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path, broken)
    other = FlaxViTForImageClassification(ViTConfig(**{**CONFIG, "depth": 2}))
    other.save_pretrained(broken)
    (broken / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="unexpected keys"):
        FlaxViTForImageClassification.from_pretrained(broken, _do_init=False)


def test_dtype_is_the_computation_dtype_and_not_saved(model, x, tmp_path):
    model.save_pretrained(tmp_path)
    half = FlaxAutoModelForImageClassification.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert half(x).logits.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax_leaves(half.params))  # parameters as saved
    half.save_pretrained(tmp_path / "again")
    assert "dtype" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_sharded_save_and_load(model, x, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="10KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).is_file() for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    np.testing.assert_array_equal(FlaxViTForImageClassification.from_pretrained(tmp_path)(x).logits, model(x).logits)


def test_config_kwargs_of_from_pretrained_update_the_config(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = FlaxViTForImageClassification.from_pretrained(tmp_path, output_hidden_states=True)
    assert loaded.config.output_hidden_states is True


def test_auto_class_refuses_a_model_type_of_another_library(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deit", "hidden_size": 8}))
    for auto in (FlaxAutoModel, FlaxAutoModelForImageClassification):
        with pytest.raises(ValueError, match="holds a 'deit' model.*vit_flax"):
            auto.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON array, not an object"):
        FlaxAutoModelForImageClassification.from_pretrained(tmp_path)


@pytest.mark.skipif(not TRANSFORMERS_4, reason="transformers 5 has no Flax models to hand a 'vit' checkpoint to")
def test_auto_class_hands_transformers_flax_models_to_transformers_on_4x(tmp_path):
    from transformers import FlaxViTForImageClassification as TransformersFlaxViT
    from transformers import ViTConfig as TransformersViTConfig

    config = TransformersViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    TransformersFlaxViT(config).save_pretrained(tmp_path)
    assert type(FlaxAutoModelForImageClassification.from_pretrained(tmp_path)) is TransformersFlaxViT
    # and transformers' own Auto classes load this package's checkpoints
    ours = FlaxViTForImageClassification(ViTConfig(**CONFIG))
    ours.save_pretrained(tmp_path / "ours")
    assert type(transformers.FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "ours")) is type(ours)


def test_auto_class_register_and_from_config():
    model = FlaxAutoModelForImageClassification.from_config(ViTConfig(**CONFIG))
    assert type(model) is FlaxViTForImageClassification
    with pytest.raises(ValueError, match="already registered"):
        FlaxAutoModel.register(ViTConfig, FlaxViTForImageClassification)


def test_no_deprecation_warning_when_using_the_package(tmp_path, caplog):
    """transformers 4.x logs "TensorFlow and JAX classes are deprecated" from its Flax base class."""
    code = (
        "import hf_vit_flax, numpy as np\n"
        "from hf_vit_flax import ViTConfig, FlaxViTForImageClassification, FlaxAutoModelForImageClassification\n"
        f"m = FlaxViTForImageClassification(ViTConfig(**{CONFIG!r}))\n"
        f"m.save_pretrained({str(tmp_path)!r})\n"
        f"FlaxAutoModelForImageClassification.from_pretrained({str(tmp_path)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deprecated" not in result.stderr


# -- the Hub: transformers' download options against the loopback server ----------------------------
def test_push_and_load_revision_subfolder_cache_and_offline(hub, model, x, tmp_path):
    from huggingface_hub import HfApi

    cache = str(tmp_path / "my-cache")
    model.push_to_hub("acme/vit", token="hf_test")
    first = hub.repos["acme/vit"]["sha"]
    changed = FlaxViTForImageClassification(model.config, seed=99)
    changed.push_to_hub("acme/vit", token="hf_test")
    assert hub.repos["acme/vit"]["sha"] != first

    latest = FlaxAutoModelForImageClassification.from_pretrained("acme/vit", cache_dir=cache, token="hf_test")
    np.testing.assert_array_equal(latest(x).logits, changed(x).logits)
    old = FlaxViTForImageClassification.from_pretrained("acme/vit", revision=first, cache_dir=cache)
    np.testing.assert_array_equal(old(x).logits, model(x).logits)
    assert os.path.isdir(os.path.join(cache, "models--acme--vit"))

    # local_files_only: served from the cache, no request made.
    before = len(hub.downloads)
    cached = FlaxViTForImageClassification.from_pretrained("acme/vit", cache_dir=cache, local_files_only=True)
    np.testing.assert_array_equal(cached(x).logits, changed(x).logits)
    assert len(hub.downloads) == before
    # force_download: downloaded again.
    FlaxViTForImageClassification.from_pretrained("acme/vit", cache_dir=cache, force_download=True)
    assert any(d.endswith("/model.safetensors") for d in hub.downloads[before:])

    # A subfolder of a repo, sharded.
    model.save_pretrained(tmp_path / "sharded", max_shard_size="10KB")
    HfApi().upload_folder(
        repo_id="acme/vit",
        folder_path=str(tmp_path / "sharded"),
        path_in_repo="sub",
        allow_patterns=["*.json", "*.safetensors"],
    )
    sub = FlaxViTForImageClassification.from_pretrained("acme/vit", subfolder="sub", cache_dir=cache)
    np.testing.assert_array_equal(sub(x).logits, model(x).logits)


def test_save_pretrained_push_to_hub_uploads_what_it_saved(hub, model, tmp_path):
    model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="acme/saved", max_shard_size="20KB")
    files = set(hub.repos["acme/saved"]["files"])
    assert {"config.json", "model.safetensors.index.json", "preprocessor_config.json", "README.md"} <= files
    assert not [f for f in files if f.startswith(".")]  # no lock file, no temporary folder


def test_unreachable_repo_is_an_error_naming_the_url(hub, tmp_path):
    with pytest.raises(OSError, match="acme/missing"):
        FlaxViTForImageClassification.from_pretrained("acme/missing", cache_dir=str(tmp_path))
    with pytest.raises(OSError, match="does not exist"):
        FlaxViTForImageClassification.from_pretrained(str(tmp_path / "no" / "such" / "folder"))


def test_pixel_values_processor_class_is_pil_based(model):
    processor = model.image_processor
    assert "Pil" in type(processor).__name__ or TRANSFORMERS_4
    pixels = processor(Image.new("RGB", (40, 40), (255, 0, 0)), return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)


def test_a_headless_checkpoint_is_a_clear_error_for_the_classifier_or_gets_a_new_head(tmp_path, x):
    config = ViTConfig(**{**CONFIG, "num_classes": 0})
    base = FlaxViTModel(config, seed=2)
    base.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=0.*FlaxViTModel.*num_labels=N"):
        FlaxAutoModelForImageClassification.from_pretrained(tmp_path)
    classifier = FlaxViTForImageClassification.from_pretrained(tmp_path, num_labels=3)
    assert classifier(x).logits.shape == (2, 3)
    np.testing.assert_array_equal(
        classifier(x, output_hidden_states=True).hidden_states[-1], base(x, output_hidden_states=True).hidden_states[-1]
    )


def test_a_second_model_of_one_configuration_reuses_the_traced_init():
    """Building a model traces and compiles its ``init`` once per configuration in a process: an equal
    configuration (a new object, or one that differs in what the forward pass returns or in its name)
    reuses it, with the same values for the same seed; another seed gives other values; another
    configuration or dtype gets its own."""
    from hf_vit_flax import modeling_utils

    def config(**changes):
        options = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=32)
        return ViTConfig(**{**options, **changes})

    first = FlaxViTModel(config())
    kept = dict(modeling_utils._JITTED_INITS)
    second, reseeded = FlaxViTModel(config()), FlaxViTModel(config(), seed=1)
    FlaxViTModel(config(output_attentions=True, output_hidden_states=True, name_or_path="elsewhere"))
    assert dict(modeling_utils._JITTED_INITS).keys() == kept.keys()  # no new trace
    leaves = [flatten_dict(m.params) for m in (first, second, reseeded)]
    assert all(np.array_equal(leaves[0][k], leaves[1][k]) for k in leaves[0])
    assert not all(np.array_equal(leaves[0][k], leaves[2][k]) for k in leaves[0])
    FlaxViTModel(config(depth=2))
    FlaxViTModel(config(), dtype=jnp.bfloat16)
    assert len(set(modeling_utils._JITTED_INITS) - set(kept)) == 2
