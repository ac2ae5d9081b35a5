"""``hf-vit-flax train --data OWNER/NAME``: a Hugging Face ``datasets`` dataset read by its Hub name, offline.

The Hub is the loopback server of tests/hub_server.py (``hub_datasets`` points both huggingface_hub and
datasets at it). The dataset is what the Hub holds for an image dataset: ``data/<split>-00000-of-00001.parquet``
files written by ``Dataset.to_parquet``, the ``image`` and ``label`` (ClassLabel) features in their metadata,
uploaded with huggingface_hub's ``upload_folder``; ``datasets.load_dataset`` finds them by listing the repo.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

import hf_vit_flax  # noqa: E402
from hf_vit_flax.training.data import load_dataset  # noqa: E402

REPO_ID = "acme/tiny-shapes"
# Not in alphabetical order: the class of label i is the ClassLabel's name i, never a sorted list of names.
CLASS_NAMES = ["square", "circle"]
SPLITS = {"train": 4, "validation": 2}  # images per class: 2 classes x 6 images
TINY = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64)


def tiny_shapes(per_class: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """16x16 RGB images, each its own: noise under a bright square (label 0) or disc (label 1)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:16, :16]
    masks = [(abs(y - 7.5) < 5) & (abs(x - 7.5) < 5), (y - 7.5) ** 2 + (x - 7.5) ** 2 < 30]
    images, labels = [], []
    for label, mask in enumerate(masks):
        for _ in range(per_class):
            image = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
            image[mask] += np.uint8(150)
            images.append(image)
            labels.append(label)
    return images, labels


@pytest.fixture
def shapes_repo(hub_datasets, tmp_path) -> dict[str, tuple[list[np.ndarray], list[int]]]:
    """``acme/tiny-shapes`` on the loopback Hub; returns the images and labels of each split."""
    from huggingface_hub import HfApi
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    folder = tmp_path / "tiny-shapes"
    (folder / "data").mkdir(parents=True)
    originals = {}
    for seed, (split, per_class) in enumerate(SPLITS.items()):
        images, labels = originals[split] = tiny_shapes(per_class, seed)
        table = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(image) for image in images], "label": labels}, features=features
        )
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    api = HfApi()
    api.create_repo(REPO_ID, repo_type="dataset")
    api.upload_folder(repo_id=REPO_ID, repo_type="dataset", folder_path=str(folder))
    assert sorted(hub_datasets.datasets[REPO_ID]["files"]) == [
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    assert REPO_ID not in hub_datasets.repos  # a dataset repo, not a model repo of the same name
    return originals


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "model"
    hf_vit_flax.FlaxViTForImageClassification(hf_vit_flax.ViTConfig(**TINY), seed=1).save_pretrained(path)
    return str(path)


def test_hub_dataset_by_name_gives_its_classes_splits_and_images(shapes_repo, hub_datasets, tmp_path):
    dataset = load_dataset(REPO_ID)
    assert dataset.name == REPO_ID
    assert dataset.class_names == CLASS_NAMES
    assert (dataset.train.name, dataset.val.name) == ("train", "validation")  # its own split, none held out
    assert not dataset.val_is_test and dataset.notes == []
    for split in (dataset.train, dataset.val):
        images, labels = shapes_repo[split.name]
        assert len(split) == len(images) == 2 * SPLITS[split.name]
        np.testing.assert_array_equal(split.labels, labels)
        for i, original in enumerate(images):
            read = split.read(i)
            assert read.dtype == np.uint8 and read.shape == (16, 16, 3)
            np.testing.assert_array_equal(read, original, err_msg=split.describe(i))
    # Read from the loopback Hub (by the commit that "main" was), into the cache under tmp_path.
    downloaded = [d for d in hub_datasets.downloads if d.startswith(f"datasets/{REPO_ID}/")]
    assert {d.rsplit("/", 1)[1] for d in downloaded} == {
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    }
    assert any((tmp_path / "datasets").rglob("*.arrow"))


def test_train_command_with_a_hub_dataset_name(shapes_repo, tiny_model, tmp_path, capsys):
    from hf_vit_flax.cli import main

    out = tmp_path / "run"
    argv = ["train", tiny_model, "--data", REPO_ID, "--output-dir", str(out), "--steps", "2"]
    argv += ["--batch-size", "4", "--workers", "1", "--warmup", "0", "--no-progress"]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    model = hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(CLASS_NAMES))
    assert model.params["head"]["kernel"].shape == (32, 2)
    run = json.loads((out / "run.json").read_text())
    assert REPO_ID in json.dumps(run)
    assert f"on {REPO_ID} (8 training images, 2 classes)" in (out / "README.md").read_text()


def test_unknown_hub_dataset_names_it_and_what_data_takes(hub_datasets, tmp_path, capsys):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("acme/no-such-dataset")
    message = str(err.value)
    assert "acme/no-such-dataset" in message and "no dataset" in message and "digits, an image folder" in message

    from hf_vit_flax.cli import main

    code = main(["train", "--data", "nosuchname", "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2  # a user error, no traceback
    err_text = capsys.readouterr().err
    assert err_text.startswith("hf-vit-flax train: error: --data nosuchname: no such folder, and no dataset nosuchname")
    assert "Traceback" not in err_text
    assert not (tmp_path / "run").exists()
