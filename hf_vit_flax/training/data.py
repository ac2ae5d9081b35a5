"""Datasets for fine-tuning, read with grain: image folders, Hugging Face ``datasets``, scikit-learn's digits.

Every source is a random-access sequence of examples (``{"image": RGB uint8 HWC array, "label": int}``);
grain shuffles it per epoch from the seed, shards it per host (``ShardByJaxProcess``), reads it with
threads and batches it, and its iterator state goes into the checkpoints, so the batch of a given
(seed, step) is the same whether a run was interrupted or not, and whatever the number of hosts.
Images go through the model's own image processor, so a trained model predicts right on raw images.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..predict import load_image, to_rgb, to_rgb_array

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_SPLITS = ("val", "validation", "valid", "test")
# The held-out split of digits: fixed, whatever the training seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class BadImages:
    """Unreadable images met while reading (each counted once), shared by the reading threads."""

    def __init__(self, policy: str):
        self.policy = policy
        self.names: set[str] = set()
        self._lock = threading.Lock()

    def report(self, name: str, err: Exception) -> None:
        if self.policy == "error":
            raise ValueError(
                f"{err} (pass --on-bad-image skip to skip unreadable images and count them instead)"
            ) from err
        with self._lock:
            if name not in self.names:
                self.names.add(name)
                logger.warning("skipping an unreadable image: %s", err)

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass
class Split:
    """Examples of one split: ``read(i)`` gives an RGB uint8 HWC image (or raises ValueError), ``labels[i]``."""

    name: str
    labels: np.ndarray
    read: Any  # Callable[[int], np.ndarray]
    describe: Any  # Callable[[int], str]: the file or row, for errors

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageDataset:
    """A training split, a validation split and the class names (label ``i`` is ``class_names[i]``)."""

    name: str  # what the model card records as the dataset
    class_names: list[str]
    train: Split
    val: Split
    val_is_test: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))


def load_dataset(spec: str, *, val_fraction: float = 0.1, seed: int = 0) -> ImageDataset:
    """``"digits"``, an image folder, or a Hugging Face dataset (a local ``save_to_disk`` folder or a Hub name)."""
    if spec == "digits":
        dataset = digits_dataset()
    elif os.path.isdir(spec) and not _is_hf_dataset_folder(spec):
        dataset = folder_dataset(spec, val_fraction=val_fraction, seed=seed)
    else:
        dataset = hf_dataset(spec, val_fraction=val_fraction, seed=seed)
    _check(dataset)
    return dataset


def _check(dataset: ImageDataset) -> None:
    if len(dataset.train) == 0:
        raise ValueError(f"the dataset {dataset.name} has no training images")
    if len(dataset.class_names) < 2:
        raise ValueError(
            f"the dataset {dataset.name} has a single class ({dataset.class_names[0]!r}): a classifier needs at "
            f"least two"
        )
    if len(dataset.val) == 0:
        raise ValueError(f"the dataset {dataset.name} has no validation images")


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): ``fraction`` of each class held out (at least one image of a class of two+)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n = int(round(len(idx) * fraction))
        n = min(max(n, 1 if len(idx) > 1 else 0), len(idx) - 1)
        held.append(idx[:n])
        train.append(idx[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


# -- scikit-learn's digits ---------------------------------------------------------------------------------
def digits_dataset() -> ImageDataset:
    """scikit-learn's digits (1,797 scans of 8x8 pixels, 16 grey levels, 10 classes), a fixed 20% test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError('--data digits needs scikit-learn: pip install "hf-vit-flax[train]"') from err
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = _stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)

    def split(name: str, idx: np.ndarray) -> Split:
        return Split(
            name,
            labels[idx],
            read=lambda i: np.repeat(images[idx[i]][..., None], 3, axis=-1),
            describe=lambda i: f"digits[{int(idx[i])}]",
        )

    return ImageDataset(
        name="scikit-learn digits",
        class_names=[str(d) for d in range(10)],
        train=split("train", train_idx),
        val=split("test", test_idx),
        val_is_test=True,
        notes=["digits: the fixed 20% test split (stratified, seed 0) is the validation split"],
    )


# -- image folders -----------------------------------------------------------------------------------------
def _class_folders(root: str) -> list[str]:
    return sorted(
        name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)) and not name.startswith(".")
    )


def _images_by_class(root: str, class_names: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, filename))
                    labels.append(label)
    return paths, labels


def _file_split(name: str, paths: list[str], labels: list[int]) -> Split:
    return Split(
        name,
        np.asarray(labels, dtype=np.int32),
        read=lambda i: np.asarray(load_image(paths[i])),
        describe=lambda i: paths[i],
    )


def folder_dataset(root: str, *, val_fraction: float = 0.1, seed: int = 0) -> ImageDataset:
    """An image folder: ``root/<class>/*.jpg``, or ``root/train/<class>/...`` with ``root/val|test/<class>/...``."""
    subfolders = _class_folders(root)
    notes = []
    if "train" in subfolders:
        train_root = os.path.join(root, "train")
        val_name = next((s for s in VAL_SPLITS if s in subfolders), None)
        class_names = _class_folders(train_root)
        if not class_names:
            raise ValueError(f"{train_root} has no class sub-folders (expected {train_root}/<class name>/<images>)")
        paths, labels = _images_by_class(train_root, class_names)
        if val_name is not None:
            val_root = os.path.join(root, val_name)
            unknown = sorted(set(_class_folders(val_root)) - set(class_names))
            if unknown:
                raise ValueError(
                    f"{val_root} has classes that {train_root} does not: {', '.join(unknown)}; every validation "
                    f"class needs training images"
                )
            train = _file_split("train", paths, labels)
            val = _file_split(val_name, *_images_by_class(val_root, class_names))
            return _folder_result(root, class_names, train, val, val_name == "test", notes)
    else:
        class_names = subfolders
        if not class_names:
            raise ValueError(
                f"{root} has no class sub-folders: expected {root}/<class name>/<images>, or {root}/train/<class "
                f"name>/... with {root}/val/<class name>/..."
            )
        paths, labels = _images_by_class(root, class_names)
    if not paths:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders")
    labels_array = np.asarray(labels)
    train_idx, val_idx = _stratified_split(labels_array, val_fraction, seed)
    notes.append(f"no validation folder: {len(val_idx)} images ({val_fraction:.0%} per class) held out")
    train = _file_split("train", [paths[i] for i in train_idx], [labels[i] for i in train_idx])
    val = _file_split("val", [paths[i] for i in val_idx], [labels[i] for i in val_idx])
    return _folder_result(root, class_names, train, val, False, notes)


def _folder_result(root, class_names, train, val, val_is_test, notes) -> ImageDataset:
    present = np.unique(train.labels) if len(train) else []
    empty = [class_names[i] for i in range(len(class_names)) if i not in present]
    if len(train) and empty:
        raise ValueError(f"classes without training images in {root}: {', '.join(empty)}")
    return ImageDataset(os.path.basename(os.path.abspath(root)), class_names, train, val, val_is_test, notes)


# -- Hugging Face datasets ---------------------------------------------------------------------------------
def _is_hf_dataset_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, n)) for n in ("dataset_dict.json", "dataset_info.json", "state.json"))


def hf_dataset(spec: str, *, val_fraction: float = 0.1, seed: int = 0) -> ImageDataset:
    """A ``datasets`` image dataset: a folder written by ``save_to_disk`` or a Hub name, ``image`` + ``label``."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f'--data {spec}: Hugging Face datasets need the datasets package: pip install "hf-vit-flax[train]"'
        ) from err
    if os.path.isdir(spec):
        loaded = datasets.load_from_disk(spec)
    elif os.path.exists(spec):
        raise ValueError(f"--data {spec} is a file: give an image folder, a dataset folder, a Hub dataset or digits")
    else:
        from ..hub import looks_like_path

        if looks_like_path(spec):
            raise FileNotFoundError(f"--data {spec} does not exist (an image folder or a datasets folder)")
        try:
            loaded = datasets.load_dataset(spec)
        except datasets.exceptions.DatasetNotFoundError as err:
            # datasets says only "Dataset 'x' doesn't exist on the Hub": a mistyped folder name lands here too.
            raise FileNotFoundError(
                f"--data {spec}: no such folder, and no dataset {spec} on the Hub (or a private or gated one that "
                f"needs a token: HF_TOKEN). --data takes digits, an image folder, a folder written by datasets' "
                f"save_to_disk, or a Hub dataset name (owner/name)"
            ) from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"the dataset {spec} has no train split (it has {', '.join(loaded)})")
    train = loaded["train"]
    image_column = next((c for c in ("image", "img", "pixel_values") if c in train.column_names), None)
    label_column = next((c for c in ("label", "labels", "fine_label") if c in train.column_names), None)
    if image_column is None or label_column is None:
        raise ValueError(
            f"the dataset {spec} needs an image and a label column (image, label); it has {', '.join(train.column_names)}"
        )
    feature = train.features[label_column]
    if hasattr(feature, "names"):
        class_names = list(feature.names)
    else:
        values = sorted(set(train[label_column]))
        class_names = [str(v) for v in values]
    notes = []
    val_name = next((s for s in VAL_SPLITS if s in loaded), None)
    if val_name is not None:
        val = loaded[val_name]
    else:
        labels = np.asarray(train[label_column])
        train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
        val, train = train.select(val_idx), train.select(train_idx)
        val_name = "val"
        notes.append(f"no validation split: {len(val_idx)} examples ({val_fraction:.0%} per class) held out")
    to_index = None if hasattr(feature, "names") else {v: i for i, v in enumerate(sorted(set(train[label_column])))}

    def split(name: str, table) -> Split:
        raw = table[label_column]
        labels = np.asarray([to_index[v] if to_index else v for v in raw], dtype=np.int32)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"the {name} split of {spec} has labels outside 0..{len(class_names) - 1}")
        images = table.select_columns([image_column])

        def read(i: int) -> np.ndarray:
            image = images[int(i)][image_column]
            if hasattr(image, "mode"):
                try:
                    return np.asarray(to_rgb(image))
                except Exception as err:
                    raise ValueError(f"cannot read image {i} of the {name} split: {err}") from err
            return to_rgb_array(np.asarray(image), f"image {i} of the {name} split")

        return Split(name, labels, read=read, describe=lambda i: f"{spec}[{name}][{int(i)}]")

    return ImageDataset(spec, class_names, split("train", train), split(val_name, val), val_name == "test", notes)


# -- preprocessing and grain pipelines ------------------------------------------------------------------------
def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random box of ``scale`` of the area and ``ratio`` aspect (Inception / timm ``RandomResizedCrop``);
    the image processor then resizes it to the model's size. At least half the image is kept (timm's 8% is for
    training from scratch on ImageNet; small datasets and digits lose their content to such crops)."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return image[top : top + h, left : left + w]
    return image  # the whole image, as timm falls back to a center crop of the full image


class Preprocess:
    """An example -> ``{"pixel_values": CHW float32, "label": int32, "weight": float32}`` via the image processor.

    An unreadable image is reported to ``bad`` and, when skipped, becomes a zero image of weight 0: it
    takes its place in the batch (shapes and the number of steps stay the same on every host) and
    counts for nothing in the loss or the accuracy.
    """

    def __init__(self, split: Split, processor, bad: BadImages, augment: str = "none"):
        self.split, self.processor, self.bad, self.augment = split, processor, bad, augment
        self._blank = None

    def _pixels(self, image: np.ndarray) -> np.ndarray:
        out = self.processor(image, return_tensors="np", input_data_format="channels_last")["pixel_values"]
        return np.asarray(out[0], dtype=np.float32)

    def __call__(self, index: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        index = int(index)
        label = np.int32(self.split.labels[index])
        try:
            image = self.split.read(index)
        except ValueError as err:
            self.bad.report(self.split.describe(index), err)
            return {"pixel_values": self.blank(), "label": label, "weight": np.float32(0)}
        if rng is not None and self.augment != "none":
            image = random_resized_crop(image, rng)
            if self.augment == "crop-flip" and rng.uniform() < 0.5:
                image = image[:, ::-1]
        return {"pixel_values": self._pixels(np.ascontiguousarray(image)), "label": label, "weight": np.float32(1)}

    def blank(self) -> np.ndarray:
        if self._blank is None:
            self._blank = np.zeros_like(self._pixels(np.zeros((8, 8, 3), np.uint8)))
        return self._blank


def _grain():
    try:
        import grain
    except ImportError as err:
        raise ImportError('fine-tuning reads its data with grain: pip install "hf-vit-flax[train]"') from err
    return grain


def shard_options():
    """This host's shard of every dataset: grain's ``ShardByJaxProcess`` (index and count from jax)."""
    return _grain().sharding.ShardByJaxProcess(drop_remainder=True)


def example_order(num_examples: int, seed: int):
    """The order in which training reads a split's examples: a permutation per epoch from ``seed``, epoch
    after epoch (a grain ``MapDataset`` of indices: ``example_order(n, seed)[p]`` is the example at position
    ``p`` of the stream, and a step's global batch is the next ``batch_size`` positions)."""
    return _grain().MapDataset.range(num_examples).seed(seed).shuffle().repeat(None)


def train_pipeline(preprocess: Preprocess, *, seed: int, host_batch: int, workers: int):
    """The endless training stream of this host: :func:`example_order`, augmented from (``seed``,
    position), sharded by host after shuffling (so the global batch of a step does not depend on the number
    of hosts), batched. Returns a grain ``IterDataset``; its iterators are checkpointable."""
    grain = _grain()
    shard = shard_options()
    ds = example_order(len(preprocess.split), seed)
    ds = (
        ds.random_map(lambda index, rng: preprocess(index, rng)) if preprocess.augment != "none" else ds.map(preprocess)
    )
    ds = ds[shard.shard_index :: shard.shard_count]
    ds = ds.batch(host_batch, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(2 * workers, 4)))


def eval_pipeline(preprocess: Preprocess, *, host_batch: int, workers: int) -> tuple[Any, int]:
    """This host's evaluation batches, padded with weight-0 examples to the same number on every host.

    Returns (an iterable of batches, the number of batches)."""
    grain = _grain()
    shard = shard_options()
    n = len(preprocess.split)
    global_batch = host_batch * shard.shard_count
    num_batches = -(-n // global_batch)

    def example(index: int):
        if index < n:
            return preprocess(index)
        item = preprocess(0)
        return {**item, "weight": np.float32(0)}

    ds = grain.MapDataset.range(num_batches * global_batch).map(example)
    ds = ds[shard.shard_index :: shard.shard_count].batch(host_batch)
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(2 * workers, 4))
    ), num_batches
