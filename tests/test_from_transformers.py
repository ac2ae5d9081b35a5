"""transformers' own ViT / DeiT checkpoints -> the Flax classes (``hf_vit_flax.from_transformers``).

Every reference is transformers' PyTorch model itself, built locally from a tiny config with random
weights (every parameter perturbed): nothing is downloaded. Hub repos come from the loopback Hub
server or a hand-built offline cache. On transformers 5 the live models carry its renamed modules
(``q_proj``, ``mlp.fc1`` ...), so the same tests check that reading too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

import hf_vit_flax
from hf_vit_flax import FlaxAutoModelForImageClassification, FlaxViTForImageClassification, FlaxViTModel
from hf_vit_flax.cli import main
from tests.helpers import assert_parity, images, max_abs_diff, randomize_

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=8
)
LABELS = {0: "cat", 1: "dog", 2: "axolotl"}
HAS_FLAX = hasattr(transformers, "FlaxViTForImageClassification")
needs_flax = pytest.mark.skipif(not HAS_FLAX, reason="transformers 5 has no Flax models (FlaxViT* are 4.x only)")


def build(class_name: str, seed: int = 0, **options):
    """transformers' ``class_name`` (ViT* or DeiT*) from the tiny config with ``options``, random weights."""
    config_class = transformers.DeiTConfig if class_name.startswith("DeiT") else transformers.ViTConfig
    config = config_class(**{**TINY, **options})
    return randomize_(getattr(transformers, class_name)(config), seed)


def run_torch(model, pixels: np.ndarray):
    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(pixels))


def run_flax(model, pixels: np.ndarray):
    with jax.default_matmul_precision("highest"):
        return model(pixels)


def assert_same_outputs(ours, reference, pixels):
    """Logits for a classifier; last_hidden_state and (when transformers has one) pooler_output otherwise."""
    expected, got = run_torch(reference, pixels), run_flax(ours, pixels)
    if hasattr(expected, "logits"):
        return assert_parity(got.logits, expected.logits.numpy())
    diff = assert_parity(got.last_hidden_state, expected.last_hidden_state.numpy())
    if expected.pooler_output is not None:
        assert max_abs_diff(got.pooler_output, expected.pooler_output.numpy()) <= 1e-5
    return diff


# -- live PyTorch models: every class, and the options the ViT family maps ---------------------------------

CLASSES = [
    ("ViTForImageClassification", dict(num_labels=3, id2label=LABELS)),
    ("ViTModel", {}),  # with its pooler: pooler_output = tanh(dense(class token))
    ("DeiTForImageClassificationWithTeacher", dict(num_labels=3)),
    ("DeiTForImageClassification", dict(num_labels=3)),
    ("DeiTModel", {}),
]


@pytest.mark.parametrize("class_name, options", CLASSES, ids=[c for c, _ in CLASSES])
def test_live_pytorch_model_matches(class_name, options):
    reference = build(class_name, **options)
    model = hf_vit_flax.from_transformers(reference)
    assert isinstance(model, FlaxViTForImageClassification if "num_labels" in options else FlaxViTModel)
    pixels = images(2, 32, 32)
    assert_same_outputs(model, reference, pixels)
    config = model.config
    assert config.layer_norm_eps == 1e-12 and config.patch_embedding == "conv" and config.qkv_bias
    assert config.distilled == class_name.endswith("WithTeacher")
    assert config.reg_tokens == int(class_name.startswith("DeiT") and not config.distilled)
    assert config.pooler == class_name.endswith("Model")  # transformers' base models have a pooler by default


def test_deit_distillation_token_is_a_register_token_in_the_same_place():
    """DeiTForImageClassification: [class, distillation, patches] + position embeddings, head on the class token:
    exactly ViT(reg_tokens=1), whose register token follows the class token and has a position embedding."""
    reference = build("DeiTForImageClassification", num_labels=3)
    model = hf_vit_flax.from_transformers(reference)
    params = model.params["vit"]
    np.testing.assert_array_equal(params["reg_token"], reference.deit.embeddings.distillation_token.detach()[0].numpy())
    assert params["pos_embedding"].shape == (2 + 16, 32)
    assert model(images(1, 32, 32), output_hidden_states=True).hidden_states[0].shape[1] == 2 + 16


def test_pooler_survives_save_and_load(tmp_path):
    model = hf_vit_flax.from_transformers(build("ViTModel", seed=9))
    model.save_pretrained(tmp_path)
    again = hf_vit_flax.FlaxAutoModel.from_pretrained(tmp_path)
    assert again.config.pooler and again.config.layer_norm_eps == 1e-12
    pixels = images(2, 32, 32)
    np.testing.assert_array_equal(run_flax(again, pixels).pooler_output, run_flax(model, pixels).pooler_output)


OPTIONS = {
    "no-qkv-bias-gelu-new": dict(qkv_bias=False, hidden_act="gelu_new"),
    "gelu-tanh-eps-1e-6": dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    "quick-gelu": dict(hidden_act="quick_gelu"),
    "rectangular-one-channel": dict(image_size=(32, 48), patch_size=(8, 16), num_channels=1),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_options_match(name):
    reference = build("ViTForImageClassification", seed=1, num_labels=3, **OPTIONS[name])
    model = hf_vit_flax.from_transformers(reference)
    height, width = model.config.image_size_hw
    assert_same_outputs(model, reference, images(2, height, width, channels=model.config.channels, seed=2))


def test_labels_and_overrides():
    reference = build("ViTForImageClassification", num_labels=3, id2label=LABELS)
    model = hf_vit_flax.from_transformers(reference)
    assert model.config.id2label == LABELS and model.config.label2id == {v: k for k, v in LABELS.items()}
    headless = hf_vit_flax.from_transformers(reference, num_classes=0)
    assert isinstance(headless, FlaxViTModel) and "head" not in headless.params
    pixels = images(2, 32, 32)
    expected = run_torch(reference.vit, pixels)
    assert max_abs_diff(run_flax(headless, pixels).last_hidden_state, expected.last_hidden_state.numpy()) <= 1e-5
    # ViTModel's pooler dropped: the pooled features are then the class token, as transformers' heads read it.
    base = build("ViTModel")
    no_pooler = hf_vit_flax.from_transformers(base, pooler=False)
    assert not no_pooler.config.pooler and "pooler" not in no_pooler.params
    out = run_flax(no_pooler, pixels)
    np.testing.assert_array_equal(out.pooler_output, out.last_hidden_state[:, 0])
    with pytest.raises(ValueError, match="can only be 0"):
        hf_vit_flax.from_transformers(reference, num_classes=5)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        hf_vit_flax.from_transformers(reference, image_size=64)


# -- files: safetensors (no torch), pytorch_model.bin, the image processor ------------------------------------


@pytest.fixture(scope="module")
def deit_folder(tmp_path_factory):
    """A transformers DeiT-with-teacher folder (model.safetensors) with DeiT's preprocessor, and its outputs."""
    folder = tmp_path_factory.mktemp("deit") / "checkpoint"
    reference = build("DeiTForImageClassificationWithTeacher", seed=3, num_labels=3, id2label=LABELS)
    reference.save_pretrained(folder)
    processor = transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    pixels = images(2, 32, 32, seed=4)  # beside the folder: it holds only the checkpoint's files
    np.save(folder.parent / "deit-pixels.npy", pixels)
    np.save(folder.parent / "deit-logits.npy", run_torch(reference, pixels).logits.numpy())
    return folder


def test_local_safetensors_folder_without_torch(deit_folder, monkeypatch):
    """model.safetensors is read with numpy: no code on the conversion path imports torch (transformers has
    imported it already in this environment, so the test forbids any further ``import torch``)."""
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import torch` (or a submodule) now raises ImportError
    model = hf_vit_flax.from_transformers(deit_folder)
    logits = run_flax(model, np.load(deit_folder.parent / "deit-pixels.npy")).logits
    assert_parity(logits, np.load(deit_folder.parent / "deit-logits.npy"))
    assert model.config.id2label[2] == "axolotl"
    assert type(model.image_processor).__name__.removesuffix("Pil") == "DeiTImageProcessor"


def test_image_processor_is_the_checkpoints(deit_folder):
    model = hf_vit_flax.from_transformers(deit_folder)
    # The PIL backend, as this package's processors (transformers 5 defaults to torchvision's resize).
    backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    theirs = transformers.AutoImageProcessor.from_pretrained(deit_folder, **backend)
    assert type(model.image_processor) is type(theirs)
    picture = (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8)
    ours = model.image_processor(picture, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, np.asarray(theirs(picture, return_tensors="np")["pixel_values"]), atol=1e-6)
    assert model.config.image_mean == list(theirs.image_mean)
    assert model.card_data["tags"][:2] == ["transformers", "deit"] and model.card_data["source_sha256"]


def test_pytorch_model_bin_with_weights_only(tmp_path):
    reference = build("ViTForImageClassification", seed=5, num_labels=3)
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")  # transformers 5: its module names
    assert_same_outputs(hf_vit_flax.from_transformers(tmp_path), reference, images(2, 32, 32))


def test_sharded_safetensors(tmp_path):
    reference = build("ViTModel", seed=6)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert_same_outputs(hf_vit_flax.from_transformers(tmp_path), reference, images(2, 32, 32))


# -- the Hub: the loopback server and an offline cache ----------------------------------------------------------


def folder_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_hub_repo_from_loopback_server(hub, deit_folder):
    hub.create("acme/deit-tiny")
    first = hub.commit("acme/deit-tiny", "upload", folder_files(deit_folder), [])
    hub.commit("acme/deit-tiny", "break it", {"config.json": b'{"model_type": "dinov2"}'}, [])
    with pytest.raises(NotImplementedError, match="dinov2"):
        hf_vit_flax.from_transformers("acme/deit-tiny")
    model = hf_vit_flax.from_transformers("acme/deit-tiny", revision=first)
    logits = run_flax(model, np.load(deit_folder.parent / "deit-pixels.npy")).logits
    assert_parity(logits, np.load(deit_folder.parent / "deit-logits.npy"))
    assert model.card_data["source"] == "acme/deit-tiny" and model.card_data["title"] == "deit-tiny"


def test_hub_repo_from_offline_cache(deit_folder, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--deit"
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(deit_folder / name, repo / "snapshots" / commit / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = hf_vit_flax.from_transformers("acme/deit", cache_dir=str(tmp_path), local_files_only=True)
    assert_parity(
        run_flax(model, np.load(deit_folder.parent / "deit-pixels.npy")).logits,
        np.load(deit_folder.parent / "deit-logits.npy"),
    )
    with pytest.raises(OSError, match="acme/missing"):
        hf_vit_flax.from_transformers("acme/missing", cache_dir=str(tmp_path), local_files_only=True)


# -- transformers 4.x's Flax models and flax_model.msgpack --------------------------------------------------------


def flax_twin(reference, folder):
    """transformers' Flax class of ``reference`` holding its weights, through transformers' own PyTorch -> Flax
    loader. The random initialisation runs under jit: transformers runs it eagerly (~30 s here)."""
    from transformers.modeling_flax_pytorch_utils import load_pytorch_checkpoint_in_flax_state_dict

    reference.save_pretrained(folder)
    model = getattr(transformers, f"Flax{type(reference).__name__}")(reference.config, _do_init=False)
    model._is_initialized = True  # what __init__ sets after its (eager) init
    model.params = jax.jit(model.init_weights, static_argnums=1)(model.key, model.input_shape)
    model.params = load_pytorch_checkpoint_in_flax_state_dict(model, str(folder / "model.safetensors"), False)
    return model


@needs_flax
@pytest.mark.parametrize("class_name", ["ViTForImageClassification", "ViTModel"])
def test_flax_model_and_msgpack(class_name, tmp_path):
    reference = build(class_name, seed=7, **(dict(num_labels=3) if "Classification" in class_name else {}))
    flax_model = flax_twin(reference, tmp_path / "pt")
    pixels = images(2, 32, 32, seed=8)
    assert_same_outputs(hf_vit_flax.from_transformers(flax_model), reference, pixels)
    flax_model.save_pretrained(tmp_path / "flax")
    assert (tmp_path / "flax" / "flax_model.msgpack").is_file()
    assert_same_outputs(hf_vit_flax.from_transformers(tmp_path / "flax"), reference, pixels)


# -- what the ViT family does not express, and checkpoints that do not match ------------------------------------


def test_unexpressed_checkpoints_name_the_feature(tmp_path):
    masked = build("ViTForMaskedImageModeling")
    with pytest.raises(NotImplementedError, match="mask token.*decoder"):
        hf_vit_flax.from_transformers(masked)
    with pytest.raises(NotImplementedError, match="hidden_act='relu'"):
        hf_vit_flax.from_transformers(build("ViTModel", hidden_act="relu"))
    dinov2 = transformers.Dinov2Config(**TINY, use_swiglu_ffn=True)
    with pytest.raises(NotImplementedError, match="dinov2.*SwiGLU"):
        hf_vit_flax.from_transformers(transformers.Dinov2Model(dinov2))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit_mae"}))
    with pytest.raises(NotImplementedError, match="vit_mae.*masking"):
        hf_vit_flax.from_transformers(tmp_path)


def test_weights_that_do_not_match_their_config_name_the_keys(tmp_path):
    reference = build("ViTForImageClassification", num_labels=3)
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="encoder.layer.2"):
        hf_vit_flax.from_transformers(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf_vit_flax.from_transformers(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_vit_flax.from_transformers(str(tmp_path / "nowhere" / "vit"))


# -- the command line and the publishing manifest --------------------------------------------------------------------


def test_cli_convert_transformers_source_with_verify(deit_folder, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", f"transformers:{deit_folder}", "--output-dir", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("against the original: ")[1].split()[0]) <= 1e-5
    model = FlaxAutoModelForImageClassification.from_pretrained(out)
    assert model.config.distilled and model.config.id2label[1] == "dog"
    assert type(model.image_processor).__name__.removesuffix("Pil") == "DeiTImageProcessor"
    # A local folder in transformers' format needs no prefix; --image-size is timm's.
    assert main(["convert", str(deit_folder), "--output-dir", str(tmp_path / "again")]) == 0
    code = main(["convert", f"transformers:{deit_folder}", "--output-dir", str(tmp_path / "x"), "--image-size", "64"])
    assert code == 2 and "--image-size" in capsys.readouterr().err


def test_cli_convert_transformers_hub_repo(hub, deit_folder, tmp_path):
    hub.create("acme/deit-cli")
    hub.commit("acme/deit-cli", "upload", folder_files(deit_folder), [])
    assert main(["convert", "transformers:acme/deit-cli", "--output-dir", str(tmp_path / "out")]) == 0
    model = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "out")
    logits = run_flax(model, np.load(deit_folder.parent / "deit-pixels.npy")).logits
    assert_parity(logits, np.load(deit_folder.parent / "deit-logits.npy"))


def test_manifest_lists_the_transformers_repos():
    sys.path.insert(0, os.path.join(ROOT, "conversion"))
    try:
        from publish import TRANSFORMERS_REPOS
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "conversion", "manifest.json")) as f:
        sources = {entry["source"] for entry in json.load(f)["models"]}
    assert {f"transformers:{repo}" for repo in TRANSFORMERS_REPOS} <= sources
    for repo in ("google/vit-base-patch16-224", "google/vit-base-patch16-224-in21k", "google/vit-large-patch16-224"):
        assert f"transformers:{repo}" in sources
    for repo in ("facebook/deit-base-distilled-patch16-224", "facebook/deit-small-patch16-224", "facebook/dino-vitb16"):
        assert f"transformers:{repo}" in sources
