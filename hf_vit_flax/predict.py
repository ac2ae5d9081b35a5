"""Image classification without transformers' pipeline (which does not run Flax models).

Every input (a file, a PIL image of any mode, an array) first becomes an RGB uint8 HWC array, the
one layout the image processor is then told it gets: left to guess, transformers reads an image 1 to
3 pixels high as channels-first. Files and PIL images are read as transformers' ``load_image`` reads
them (EXIF orientation applied, then ``convert("RGB")``), except that images of more than 8 bits per
channel are scaled to 8 bits instead of clipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# Pillow's modes of more than 8 bits per pixel (single channel): scaled to 8 bits, never clipped.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (PIL), with an error that names the file when it cannot be read.

    EXIF orientation is applied and 16-bit images are scaled to 8 bits (see :func:`to_rgb`). A missing
    file, a file that is not an image, a truncated one and a decompression bomb are all a ValueError.
    """
    from PIL import Image

    if not os.path.isfile(path):
        problem = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ValueError(f"cannot read image {os.fspath(path)!r}: it {problem}")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"cannot read image {os.fspath(path)!r}: {err} If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS."
        ) from err
    # PIL's decoders fail with OSError, SyntaxError, EOFError, struct.error ... depending on the format.
    except Exception as err:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {err}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any mode as RGB, upright.

    The EXIF orientation tag is applied (a phone photo is stored sideways), as in transformers'
    ``load_image``; 16-bit and 32-bit integer and float images are scaled to 8 bits (see
    :func:`to_uint8`), which ``convert("RGB")`` alone would clip to white; alpha is dropped.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        image = Image.fromarray(to_uint8(np.asarray(image), f"a mode-{image.mode} image"))
    return image.convert("RGB")


def to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8, by their type and range.

    uint8 as they are; uint16 scaled from 0..65535; other integers as 8-bit values when they lie in
    0..255, else as 16-bit values; floats scaled from [0, 1], or taken as 0..255 values when they
    exceed 1. Non-finite floats and values outside those ranges are a ValueError naming ``what``.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {array.dtype}: expected uint8, another integer type or floats")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{what} holds non-finite values (NaN or infinity)")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating):
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} holds floats from {low} to {high}: expected values in [0, 1] (or 0..255); "
                f"rescale it, or pass uint8"
            )
        scale = 255.0 if high <= 1 else 1.0
    else:
        if low < 0 or high > 65535:
            raise ValueError(
                f"{what} holds integers from {low} to {high}: expected 0..255 (8-bit) or 0..65535 (16-bit)"
            )
        sixteen_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2  # either byte order (mode I;16B)
        scale = 255 / 65535 if sixteen_bit or high > 255 else 1.0
    return np.round(array.astype(np.float64) * scale).astype(np.uint8)


def to_rgb_array(image, what: str) -> np.ndarray:
    """An HWC array (1, 3 or 4 (RGBA) channels) or an HW grayscale array as an RGB uint8 HWC array."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " It looks channels-first (CHW): transpose it with image.transpose(1, 2, 0)."
        raise ValueError(
            f"{what} has shape {array.shape}: expected an HWC array with 1, 3 or 4 (RGBA) channels, or an HW "
            f"grayscale array.{hint}"
        )
    if array.size == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    array = to_uint8(array, what)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]  # RGBA: alpha dropped, as convert("RGB") does


def _rgb_array(image, index: int) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return np.asarray(load_image(image))
    if isinstance(image, Image.Image):
        try:
            return np.asarray(to_rgb(image))
        except Exception as err:  # as in load_image: a lazily loaded image is decoded here
            raise ValueError(f"cannot read image {index} (a mode-{image.mode} PIL image): {err}") from err
    return to_rgb_array(image, f"image {index}")


def predict(model, images, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """Classify images with a ``Flax<Family>ForImageClassification``.

    Args:
        model: a classification model (its ``image_processor`` and ``config.id2label`` are used).
        images: a file path, a PIL image (any mode), an HWC array (uint8, 16-bit integers, or floats in
            [0, 1]; 1, 3 or 4 (RGBA) channels), an HW grayscale array, or a list (or NHWC batch) of those.
        top_k: how many labels to return per image (at most the number of labels).

    Returns:
        One list per image of ``{"label": str, "score": float}``, best first; ``[]`` for no images.
    """
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer (how many labels per image), got {top_k!r}")
    batch = [_rgb_array(image, i) for i, image in enumerate(_as_list(images))]
    if not batch:
        return []
    pixel_values = model.image_processor(batch, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    logits = np.asarray(model(pixel_values).logits, dtype=np.float32)
    bad = sorted({int(i) for i in np.nonzero(~np.isfinite(logits))[0]})
    if bad:
        raise ValueError(
            f"the model produced non-finite logits (NaN or infinity) for image(s) {bad}: its weights are probably "
            f"corrupt; load or convert the checkpoint again"
        )
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    k = min(int(top_k), probs.shape[-1])
    id2label = model.config.id2label
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        results.append([{"label": id2label.get(int(i), str(int(i))), "score": float(row[i])} for i in best])
    return results


def format_predictions(paths: Sequence[str], predictions: list[list[dict[str, Any]]]) -> str:
    lines = []
    for path, preds in zip(paths, predictions, strict=True):
        lines.append(path)
        lines += [f"  {p['score']:.4f}  {p['label']}" for p in preds]
    return "\n".join(lines)
