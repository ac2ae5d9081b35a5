"""The Flax classes -> a folder transformers' PyTorch classes load (``hf_vit_flax.export(model, to="transformers")``).

Each export is loaded by transformers itself (``<Class>.from_pretrained``, strict: a missing or unused
tensor fails the test) and compared with our model: the same logits within 1e-5, and, for a model that
came from transformers, the very same tensors.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import timm
import torch
import transformers

import hf_vit_flax
from hf_vit_flax import (
    CaiTConfig,
    FlaxCaiTForImageClassification,
    FlaxViTForImageClassification,
    FlaxViTModel,
    ViTConfig,
)
from hf_vit_flax.cli import main
from hf_vit_flax.conversion_utils import to_numpy
from tests.helpers import TINY_CONFIGS, assert_parity, images, max_abs_diff, randomize_
from tests.test_from_transformers import LABELS, build, run_flax, run_torch

# The family's tiny config in transformers' ViT layout (a convolutional patch embedding, qkv biases), two layers.
TINY_VIT = dict(TINY_CONFIGS["vit"], depth=2, mlp_dim=48, patch_embedding="conv", qkv_bias=True)


def load(folder, **kwargs):
    """The folder loaded by the transformers class its config.json names, every tensor accounted for."""
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, architecture).from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def perturbed(model, seed: int = 0):
    """``model`` with every parameter moved by noise (LayerNorm scales and biases too): logits O(1)."""
    rng = np.random.default_rng(seed)
    model.params = jax.tree.map(lambda p: p + 0.2 * rng.standard_normal(p.shape).astype(np.float32), model.params)
    return model


# -- import -> export: the same tensors, the same outputs ----------------------------------------------------

CLASSES = [
    ("ViTForImageClassification", dict(num_labels=3, id2label=LABELS)),
    ("ViTModel", {}),
    ("DeiTForImageClassificationWithTeacher", dict(num_labels=3)),
    ("DeiTForImageClassification", dict(num_labels=3)),
]


@pytest.mark.parametrize("class_name, options", CLASSES, ids=[c for c, _ in CLASSES])
def test_round_trip_gives_back_the_same_tensors(class_name, options, tmp_path):
    original = build(class_name, seed=11, **options)
    model = hf_vit_flax.from_transformers(original)
    out = hf_vit_flax.export(model, to="transformers", output_dir=tmp_path / "exported")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    again = load(out)
    assert type(again) is type(original)
    exported, expected = to_numpy(again.state_dict()), to_numpy(original.state_dict())
    assert sorted(exported) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    pixels = images(2, 32, 32, seed=12)
    ours, theirs = run_flax(model, pixels), run_torch(again, pixels)
    if model.has_head():
        assert_parity(ours.logits, theirs.logits.numpy())
        assert again.config.id2label == original.config.id2label
    else:
        assert_parity(ours.last_hidden_state, theirs.last_hidden_state.numpy())
        assert max_abs_diff(ours.pooler_output, theirs.pooler_output.numpy()) <= 1e-5


# -- models that never were transformers' ---------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu_tanh", "quick_gelu"])
def test_own_vit_loads_in_transformers(activation, tmp_path):
    config = ViTConfig(**TINY_VIT, layer_norm_eps=1e-6, mlp_activation=activation, id2label=LABELS)
    model = perturbed(FlaxViTForImageClassification(config, seed=1))
    out = hf_vit_flax.export(model, to="transformers", output_dir=tmp_path / "out")
    again = load(out)
    assert isinstance(again, transformers.ViTForImageClassification) and again.config.layer_norm_eps == 1e-6
    pixels = images(2, 32, 32, seed=13)
    assert_parity(run_flax(model, pixels).logits, run_torch(again, pixels).logits.numpy())
    assert again.config.id2label == LABELS
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert dict(processor.size) == {"height": 32, "width": 32}


def test_headless_vit_without_pooler_loads_in_vit_model(tmp_path):
    model = perturbed(FlaxViTModel(ViTConfig(**{**TINY_VIT, "num_classes": 0}), seed=2))
    out = hf_vit_flax.export(model, to="transformers", output_dir=tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ViTModel"]
    again = load(out, add_pooling_layer=False)
    pixels = images(2, 32, 32, seed=14)
    assert_parity(run_flax(model, pixels).last_hidden_state, run_torch(again, pixels).last_hidden_state.numpy())


def test_timm_deit_distilled_through_us_to_transformers(tmp_path):
    """timm's distilled DeiT -> ours -> transformers' DeiTForImageClassificationWithTeacher: timm's logits."""
    original = randomize_(
        timm.models.deit.VisionTransformerDistilled(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=1.5, num_classes=3
        ),
        seed=15,
    )
    model = hf_vit_flax.from_timm(original)
    out = hf_vit_flax.export(model, to="transformers", output_dir=tmp_path / "out")
    again = load(out)
    assert isinstance(again, transformers.DeiTForImageClassificationWithTeacher)
    pixels = images(2, 32, 32, seed=16)
    with torch.inference_mode():
        expected = original.eval()(torch.from_numpy(pixels)).numpy()
    assert_parity(run_torch(again, pixels).logits.numpy(), expected)


# -- what transformers cannot express: a clear error, and nothing written ------------------------------------------

UNEXPRESSED = {
    "mean pooling": (dict(pool="mean"), "pool='mean'"),
    "register tokens": (dict(reg_tokens=4, no_embed_class=True), "4 register tokens.*no_embed_class"),
    "pre-norm": (dict(pre_norm=True), "pre_norm"),
    "LayerScale": (dict(layer_scale_init=1e-5), "LayerScale"),
    "fc_norm": (dict(pool="mean", fc_norm=True), "fc_norm"),
    "vit-pytorch embedding": (dict(patch_embedding="norm_linear", qkv_bias=False), "norm_linear"),
    "pooler read by the head": (dict(pooler=True), "reads the pooler"),
    "narrow heads": (dict(dim_head=8), r"heads \* dim_head = 16 != dim = 32"),
}


@pytest.mark.parametrize("name", UNEXPRESSED)
def test_unexpressed_vit_is_a_clear_error_and_writes_nothing(name, tmp_path):
    options, message = UNEXPRESSED[name]
    model = FlaxViTForImageClassification(ViTConfig(**{**TINY_VIT, **options}), _do_init=False)
    with pytest.raises(NotImplementedError, match=message):
        hf_vit_flax.export(model, to="transformers", output_dir=tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_other_families_are_a_clear_error(tmp_path):
    config = CaiTConfig(**TINY_CONFIGS["cait"])
    with pytest.raises(NotImplementedError, match="only ViT-family models"):
        hf_vit_flax.export(FlaxCaiTForImageClassification(config, _do_init=False), "transformers", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown export target 'onnx'.*transformers"):
        hf_vit_flax.export(FlaxCaiTForImageClassification(config, _do_init=False), "onnx", tmp_path / "out")
    assert os.listdir(tmp_path) == []


# -- atomic writing --------------------------------------------------------------------------------------------


@pytest.fixture
def small_vit():
    return FlaxViTForImageClassification(ViTConfig(**TINY_VIT), seed=3)


def test_a_failed_export_leaves_the_folder_as_it_was(small_vit, tmp_path, monkeypatch):
    import safetensors.numpy

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        hf_vit_flax.export(small_vit, "transformers", tmp_path / "new")
    assert os.listdir(tmp_path) == []  # neither the folder nor a staging folder
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("previous export")
    with pytest.raises(OSError, match="No space"):
        hf_vit_flax.export(small_vit, "transformers", tmp_path / "old", overwrite=True)
    assert os.listdir(tmp_path) == ["old"] and os.listdir(tmp_path / "old") == ["keep.txt"]


def test_an_existing_folder_is_replaced_only_with_overwrite(small_vit, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="not empty"):
        hf_vit_flax.export(small_vit, "transformers", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["stale.bin"]
    hf_vit_flax.export(small_vit, "transformers", tmp_path / "out", overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert oct(os.stat(tmp_path / "out").st_mode & 0o777) != oct(0o700)  # an ordinary folder, not mkdtemp's


# -- the command line -------------------------------------------------------------------------------------------


def test_cli_export_saved_model_and_transformers_source(small_vit, tmp_path, capsys):
    perturbed(small_vit, seed=4).save_pretrained(tmp_path / "saved")
    assert main(["export", str(tmp_path / "saved"), "--to", "transformers", "--output-dir", str(tmp_path / "hf")]) == 0
    assert "exported FlaxViTForImageClassification" in capsys.readouterr().out
    pixels = images(2, 32, 32, seed=17)
    assert_parity(run_flax(small_vit, pixels).logits, run_torch(load(tmp_path / "hf"), pixels).logits.numpy())
    # transformers -> ours -> transformers in one command; a model transformers cannot express: exit 2.
    assert (
        main(["export", f"transformers:{tmp_path / 'hf'}", "--to", "transformers", "--output-dir", str(tmp_path / "b")])
        == 0
    )
    np.testing.assert_array_equal(
        to_numpy(load(tmp_path / "b").state_dict())["classifier.weight"],
        to_numpy(load(tmp_path / "hf").state_dict())["classifier.weight"],
    )
    FlaxViTForImageClassification(ViTConfig(**TINY_VIT, pool="mean"), seed=0).save_pretrained(tmp_path / "mean")
    assert main(["export", str(tmp_path / "mean"), "--to", "transformers", "--output-dir", str(tmp_path / "c")]) == 2
    assert "pool='mean'" in capsys.readouterr().err and not (tmp_path / "c").exists()
