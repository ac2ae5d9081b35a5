"""Fine-tuning (hf_vit_flax.training, ``hf-vit-flax train``): tiny models, tiny data, offline.

What is checked: learning on digits, head replacement with the dataset's labels, the optimiser's
weight-decay mask and frozen backbone, gradient accumulation, bit-identical resume after SIGKILL,
2 hosts x 2 devices against 1 host x 4 devices, the bad inputs of the issue, and the command line end
to end (then ``predict`` on raw images).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")
pytest.importorskip("sklearn")

import hf_vit_flax  # noqa: E402
from hf_vit_flax.training import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A small "pretrained" ViT with 5 labels: every dataset here has other labels, so its head is replaced.
TINY = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64)
FAST = dict(progress=False, workers=1, warmup=0.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "model"
    hf_vit_flax.FlaxViTForImageClassification(hf_vit_flax.ViTConfig(**TINY), seed=1).save_pretrained(path)
    return str(path)


def colour_folder(root: Path, per_class: int = 12, val: int = 4, size: int = 20) -> Path:
    """An easy image folder: reddish and bluish noise, train/ and val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val)):
        for name, channel in (("blue", 2), ("red", 0)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (size, size, 3))
                pixels[..., channel] += 160
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def fine_tune(tmp_path: Path, model: str, data: str = "digits", **options):
    """``train`` on ``data`` into ``tmp_path / "run"``, quietly, with one worker and no warmup (``FAST``)."""
    return train(TrainConfig(data=data, model=model, output_dir=str(tmp_path / "run"), **{**FAST, **options}))


def flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


def run_script(code: str, devices: int = 1, env: dict | None = None, **kwargs) -> subprocess.Popen:
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
        **(env or {}),
    }
    return subprocess.Popen([sys.executable, "-c", code], env=environ, cwd=str(REPO), **kwargs)


# A run that saves its final parameters: the same command for the interrupted and the uninterrupted run.
TRAIN_AND_SAVE = """
import sys, numpy as np
from flax.traverse_util import flatten_dict
from hf_vit_flax.training import TrainConfig, train
config = TrainConfig(**{config})
result = train(config)
print("sharded arrays:", result.sharded_arrays)
if result.params is not None and {save}:
    np.savez({out!r}, **{{"/".join(k): v for k, v in flatten_dict(result.params).items()}})
"""


# -- learning ------------------------------------------------------------------------------------------
def test_digits_learns_well_above_chance(tmp_path, tiny_model):
    result = fine_tune(tmp_path, tiny_model, steps=60, batch_size=32, lr=3e-3, augment="none", eval_every=60)
    assert result.final_accuracy > 0.6  # chance is 0.1
    assert result.best_accuracy >= result.final_accuracy
    from hf_vit_flax.training.data import digits_dataset

    assert sum(map(sum, result.confusion)) == len(digits_dataset().val) == 359  # the fixed split: 20% per class
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("val_accuracy" in r for r in records) and any("train_loss" in r for r in records)
    for name in ("curves.png", "confusion_matrix.png", "model.safetensors", "preprocessor_config.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_default_model_suits_the_data(tmp_path):
    config = TrainConfig(data="digits", output_dir=str(tmp_path / "run"), steps=1, batch_size=8, **FAST)
    assert (config.peak_lr, config.num_epochs) == (2e-3, 30)  # from scratch
    train(config)
    model = hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "run")
    assert model.config.image_size == 16 and model.config.patch_size == 4
    assert model.config.id2label == {i: str(i) for i in range(10)}
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["base_model"] == "vit-finetune-tiny" and run["recipe"]["augment"] is None
    assert TrainConfig(model="timm:vit_tiny_patch16_224").peak_lr == 5e-4


def test_head_replaced_with_the_class_names_and_model_card(tmp_path, tiny_model):
    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    result = fine_tune(tmp_path, tiny_model, str(data), steps=2, batch_size=8)
    model = hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {0: "blue", 1: "red"}
    assert model.config.label2id == {"blue": 0, "red": 1}
    assert model.params["head"]["kernel"].shape == (32, 2)
    assert result.class_names == ["blue", "red"]
    card = (out / "README.md").read_text()
    from hf_vit_flax.hub import card_metadata

    meta = card_metadata(card)
    [entry] = meta["model-index"]
    [res] = entry["results"]
    assert res["task"]["type"] == "image-classification" and res["dataset"]["split"] == "validation"
    assert res["metrics"][0]["type"] == "accuracy" and 0 <= res["metrics"][0]["value"] <= 1
    assert "## Training" in card and "adamw" in card


def test_from_pretrained_new_labels(tiny_model):
    labels = {0: "cat", 1: "dog", 2: "bird"}
    model = hf_vit_flax.FlaxViTForImageClassification.from_pretrained(
        tiny_model, num_labels=3, id2label=labels, ignore_mismatched_sizes=True
    )
    assert model.config.id2label == labels and model.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert model.params["head"]["kernel"].shape == (32, 3)


# -- the optimiser --------------------------------------------------------------------------------------
def test_weight_decay_mask():
    from hf_vit_flax.training.optim import decay_mask, layer_ids, module_call_order

    config = hf_vit_flax.ViTConfig(**{**TINY, "depth": 2, "distilled": True})
    model = hf_vit_flax.FlaxViTForImageClassification(config)
    mask = flat(decay_mask(model.params))
    decayed = {k for k, v in mask.items() if v}
    assert "vit/transformer/blocks_0/attn/qkv/kernel" in decayed
    assert "vit/transformer/blocks_1/mlp/fc1/kernel" in decayed
    assert "vit/patch_embed/proj/kernel" in decayed and "head/kernel" in decayed
    for name, value in mask.items():
        if name.endswith(("bias", "scale")) or any(t in name for t in ("pos_embedding", "cls_token", "dist_token")):
            assert not value, name
    ids, depths = layer_ids(model.params, "vit")
    ids = flat(ids)
    assert depths == 4
    assert ids["vit/pos_embedding"] == 0 and ids["vit/patch_embed/proj/kernel"] == 0
    assert ids["vit/transformer/blocks_0/attn/qkv/kernel"] == 1
    assert ids["vit/transformer/blocks_1/norm1/scale"] == 2
    assert ids["vit/transformer/norm/scale"] == 3 and ids["head/kernel"] == 3
    # CaiT's class-attention blocks run after its patch blocks, whatever the order of their names.
    cait = hf_vit_flax.FlaxCaiTForImageClassification(
        hf_vit_flax.CaiTConfig(
            image_size=16, patch_size=4, num_classes=2, dim=32, depth=2, cls_depth=1, heads=2, dim_head=16, mlp_dim=32
        ),
        _do_init=False,
    )
    ids, depths = layer_ids(cait.params_shape_tree, "cait", module_call_order(cait))
    ids = flat(ids)
    assert depths == 5
    by_block = {re.match(r"(.*/blocks_\d+)/", k).group(1): v for k, v in ids.items() if "/blocks_" in k}
    assert by_block == {
        "cait/patch_transformer/blocks_0": 1,
        "cait/patch_transformer/blocks_1": 2,
        "cait/cls_transformer/blocks_0": 3,
    }
    assert ids["head/kernel"] == 4


def test_linear_probe_leaves_the_backbone_bit_identical(tmp_path, tiny_model):
    data = colour_folder(tmp_path / "data")
    options = dict(freeze_backbone=True, weight_decay=0.1, layer_decay=0.8)
    result = fine_tune(tmp_path, tiny_model, str(data), steps=3, batch_size=8, **options)
    start = flat(hf_vit_flax.FlaxViTForImageClassification.from_pretrained(tiny_model).params["vit"])
    end = flat(result.params["vit"])
    assert start.keys() == end.keys()
    for key in start:
        np.testing.assert_array_equal(start[key], end[key], err_msg=key)
    head = hf_vit_flax.FlaxViTForImageClassification.from_pretrained(
        str(tmp_path / "run")
    )  # the best model's head moved from its fresh start
    assert not np.allclose(head.params["head"]["kernel"], 0)


def test_bf16_sgd_and_gradient_checkpointing_keep_float32_parameters(tmp_path, tiny_model):
    options = dict(precision="bf16", gradient_checkpointing=True, optimizer="sgd", lr=0.1)
    result = fine_tune(tmp_path, tiny_model, steps=2, batch_size=8, **options)
    start = flat(hf_vit_flax.FlaxViTForImageClassification.from_pretrained(tiny_model).params)
    end = flat(result.params)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in end.values())
    assert not np.array_equal(
        start["vit/transformer/blocks_0/mlp/fc1/kernel"], end["vit/transformer/blocks_0/mlp/fc1/kernel"]
    )
    saved = hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "run")
    assert saved.params["head"]["kernel"].dtype == np.float32


def test_gradient_accumulation_matches_the_full_batch(tmp_path, tiny_model):
    common = dict(data="digits", model=tiny_model, steps=4, batch_size=16, eval_every=4, lr=1e-3, **FAST)
    full = train(TrainConfig(output_dir=str(tmp_path / "full"), **common))
    accumulated = train(TrainConfig(output_dir=str(tmp_path / "accum"), grad_accum=4, **common))
    a, b = flat(full.params), flat(accumulated.params)
    start = flat(hf_vit_flax.FlaxViTForImageClassification.from_pretrained(tiny_model).params)
    assert not np.allclose(a["vit/pos_embedding"], start["vit/pos_embedding"])  # it trained
    for key in a:
        # Adam divides by the root of the second moment: float noise in small gradients shows at ~1e-6.
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-5, err_msg=key)


# -- checkpoints and resume -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identical(tmp_path, tiny_model):
    base = dict(
        data="digits",
        model=tiny_model,
        steps=24,
        batch_size=16,
        checkpoint_every=4,
        eval_every=12,
        lr=1e-3,
        progress=False,
        workers=2,
    )

    def script(out: str, npz: str) -> str:
        return TRAIN_AND_SAVE.format(config=repr({**base, "output_dir": out}), save=True, out=npz)

    reference = run_script(script(str(tmp_path / "ref"), str(tmp_path / "ref.npz")))
    out = tmp_path / "killed"
    killed = run_script(script(str(out), str(tmp_path / "killed.npz")))
    deadline = time.time() + 240
    while not (out / "checkpoints" / "12").is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed.npz").exists()
    steps_left = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps_left and max(steps_left) < 24
    resumed = run_script(script(str(out), str(tmp_path / "killed.npz")), stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert reference.wait(timeout=240) == 0
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "killed.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bit-identical on CPU
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if "train_loss" in line]
    assert steps == sorted(set(steps))  # no record written twice by the resumed run


# -- scale ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_hosts_and_fsdp_match_one_host_with_as_many_devices(tmp_path, tiny_model):
    """2 processes x 2 CPU devices (gloo), and FSDP on 4 devices, against 1 process x 4 devices (data parallel),
    on the same global batch."""
    import portpicker

    base = dict(
        data="digits", model=tiny_model, steps=6, batch_size=16, eval_every=6, lr=1e-3, progress=False, workers=1
    )

    def one_host(name: str, **options) -> subprocess.Popen:
        config = {**base, "output_dir": str(tmp_path / name), **options}
        return run_script(
            TRAIN_AND_SAVE.format(config=repr(config), save=True, out=str(tmp_path / f"{name}.npz")),
            devices=4,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    port = portpicker.pick_unused_port()
    hosts = [
        run_script(
            TRAIN_AND_SAVE.format(
                config=repr(
                    {
                        **base,
                        "output_dir": str(tmp_path / "two"),
                        "coordinator_address": f"127.0.0.1:{port}",
                        "num_processes": 2,
                        "process_id": pid,
                    }
                ),
                save=f"{pid} == 0",
                out=str(tmp_path / "two.npz"),
            ),
            devices=2,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    for proc in hosts:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for name, options in (("one", {}), ("fsdp", {"fsdp": True})):
        proc = one_host(name, **options)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert ("sharded arrays: 0" in out) == (name == "one"), out  # FSDP splits the larger arrays
    one = np.load(tmp_path / "one.npz")
    for other in ("two", "fsdp"):
        theirs = np.load(tmp_path / f"{other}.npz")
        assert sorted(theirs.files) == sorted(one.files)
        diff = max(float(np.max(np.abs(one[k] - theirs[k]))) for k in one.files)
        print(f"max |parameter difference| against 1 host x 4 devices, data parallel: {other}: {diff:.3e}")
        assert diff < 1e-5, other


def test_fsdp_sharding_rule():
    from hf_vit_flax.training.trainer import fsdp_spec

    assert fsdp_spec((1024, 64), 4) == jax.sharding.PartitionSpec("data", None)
    assert fsdp_spec((30, 4096), 4) == jax.sharding.PartitionSpec(None, "data")
    assert fsdp_spec((10,), 4) == jax.sharding.PartitionSpec()  # small: replicated
    assert fsdp_spec((1024, 64), 1) == jax.sharding.PartitionSpec()


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_datasets(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        train(TrainConfig(data=str(empty), model=tiny_model, output_dir=str(tmp_path / "o1"), **FAST))
    single = tmp_path / "single" / "cat"
    single.mkdir(parents=True)
    colour_folder(tmp_path / "tmp")
    for i, image in enumerate((tmp_path / "tmp" / "train" / "red").iterdir()):
        image.rename(single / f"{i}.png")
    with pytest.raises(ValueError, match="single class"):
        train(TrainConfig(data=str(tmp_path / "single"), model=tiny_model, output_dir=str(tmp_path / "o2"), **FAST))
    no_images = tmp_path / "noimg"
    for name in ("a", "b"):
        (no_images / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        train(TrainConfig(data=str(no_images), model=tiny_model, output_dir=str(tmp_path / "o3"), **FAST))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_corrupt_images_error_or_skip(tmp_path, tiny_model):
    data = colour_folder(tmp_path / "data")
    corrupt = data / "train" / "red" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    from hf_vit_flax.training.data import BadImages, Preprocess, load_dataset

    dataset = load_dataset(str(data))
    index = next(i for i in range(len(dataset.train)) if dataset.train.describe(i).endswith("broken.png"))
    processor = hf_vit_flax.FlaxViTForImageClassification.from_pretrained(tiny_model).image_processor
    with pytest.raises(ValueError, match="broken.png.*--on-bad-image skip"):
        Preprocess(dataset.train, processor, BadImages("error"))(index)
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        TrainConfig(on_bad_image="ignore")
    result = train(
        TrainConfig(data=str(data), model=tiny_model, output_dir=str(tmp_path / "s"), steps=4, batch_size=8, **FAST)
    )
    assert result.skipped_images == 1


def test_bad_recipes_and_folders(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="not divisible by grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lamb")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a fine-tuning run"):
        train(TrainConfig(data="digits", model=tiny_model, output_dir=str(other), **FAST))
    assert os.listdir(other) == ["notes.txt"]
    run = tmp_path / "run"
    train(TrainConfig(data="digits", model=tiny_model, output_dir=str(run), steps=2, batch_size=8, lr=1e-3, **FAST))
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(ValueError, match=r"holds another run \(lr: 0.001 there, 0.01 now\)"):
        train(TrainConfig(data="digits", model=tiny_model, output_dir=str(run), steps=2, batch_size=8, lr=1e-2, **FAST))
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_batch_the_devices_do_not_divide(tmp_path, tiny_model):
    out = tmp_path / "run"
    code = (
        "from hf_vit_flax.cli import main; import sys; sys.exit(main(['train', "
        f"{tiny_model!r}, '--data', 'digits', '--output-dir', {str(out)!r}, '--batch-size', '6', '--no-progress']))"
    )
    proc = run_script(code, devices=4, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "batch size 6 is not divisible by the 4 devices" in err


def test_images_the_model_cannot_take(tmp_path):
    config = hf_vit_flax.ViTConfig(**{**TINY, "channels": 1, "image_mean": [0.5], "image_std": [0.5]})
    path = tmp_path / "gray-model"
    hf_vit_flax.FlaxViTForImageClassification(config).save_pretrained(path)
    with pytest.raises(ValueError, match="do not fit the model"):
        fine_tune(tmp_path, str(path))


# -- data sources and the command line ------------------------------------------------------------------
def test_hf_datasets_folder(tmp_path, tiny_model):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(24):
        label = i % 3
        pixels = rng.integers(0, 60, (12, 12, 3))
        pixels[..., label] += 190
        images.append(Image.fromarray(pixels.astype(np.uint8)))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])})
    table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    table.train_test_split(test_size=6, seed=0, stratify_by_column="label").save_to_disk(str(tmp_path / "ds"))
    result = fine_tune(tmp_path, tiny_model, str(tmp_path / "ds"), steps=2, batch_size=6)
    assert result.class_names == ["r", "g", "b"]
    assert sum(map(sum, result.confusion)) == 6  # the test split


def test_cli_end_to_end_then_predict_raw_images(tmp_path, tiny_model, capsys):
    from PIL import Image

    from hf_vit_flax.cli import main

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "train",
        tiny_model,
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--warmup",
        "2",
        "--no-progress",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best val accuracy" in printed and "wall time" in printed
    files = set(os.listdir(out))
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "metrics.jsonl",
        "curves.png",
        "confusion_matrix.png",
        "run.json",
        "checkpoints",
    } <= files
    model = hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained(out)
    rng = np.random.default_rng(1)
    raw, expected = [], []
    for name, channel in (("red", 0), ("blue", 2)):
        for _ in range(3):
            pixels = rng.integers(0, 90, (40, 30, 3))  # another size than the training images
            pixels[..., channel] += 160
            raw.append(Image.fromarray(pixels.astype(np.uint8)))
            expected.append(name)
    assert [p[0]["label"] for p in model.predict(raw, top_k=1)] == expected
    # The same command again: the run is complete, so it resumes at its end and changes nothing.
    weights = (out / "model.safetensors").read_bytes()
    assert main(argv) == 0
    assert (out / "model.safetensors").read_bytes() == weights


def test_push_to_hub_uploads_the_best_model(hub, tmp_path, tiny_model):
    from hf_vit_flax.hub import card_metadata

    out = tmp_path / "run"
    fine_tune(tmp_path, tiny_model, steps=1, batch_size=8, push_to_hub="acme/tiny-digits")
    files = hub.repos["acme/tiny-digits"]["files"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "curves.png"} <= set(files)
    assert "run.json" not in files and not any(name.startswith("checkpoints") for name in files)
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert card_metadata(files["README.md"].decode())["model-index"][0]["results"][0]["dataset"]["split"] == "test"


def test_timm_checkpoint_keeps_its_backbone_and_processor(tmp_path):
    """A timm checkpoint (a local folder in timm's Hub format, as ``timm:<name>`` downloads it) as MODEL."""
    timm = pytest.importorskip("timm")
    from hf_vit_flax.training.models import load_model
    from hf_vit_flax.verify import save_timm_checkpoint

    source = save_timm_checkpoint(timm.create_model("vit_tiny_patch16_224", pretrained=False), tmp_path / "timm-vit")
    converted = hf_vit_flax.from_timm(str(source), image_size=32)  # position embeddings resampled as timm does
    model, base = load_model(str(source), {0: "a", 1: "b"}, image_size=32, seed=0)
    assert base == str(source) and model.config.id2label == {0: "a", 1: "b"}
    assert model.params["head"]["kernel"].shape == (192, 2)
    a, b = flat(converted.params["vit"]), flat(model.params["vit"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert model.image_processor.to_dict() == converted.image_processor.to_dict()


def test_missing_dependencies_name_the_extra(monkeypatch):
    import importlib.util

    from hf_vit_flax.training import require_dependencies

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grain" else real(name, *a))
    with pytest.raises(ImportError, match=r'fine-tuning needs grain: pip install "hf-vit-flax\[train\]"'):
        require_dependencies()
