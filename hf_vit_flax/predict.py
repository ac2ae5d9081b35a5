"""Image classification without transformers' pipeline (which does not run Flax models)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def load_image(path: str):
    """Open an image file as RGB (PIL), with an error that names the file when it cannot be read."""
    import struct

    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} {'is a folder' if os.path.isdir(path) else 'does not exist'}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    # Damaged files surface from PIL's decoders as any of these; UnidentifiedImageError is an OSError.
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot read image {path}: not an image format PIL knows, or damaged") from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def predict(model, images, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """Classify images with a ``Flax<Family>ForImageClassification``.

    Args:
        model: a classification model (its ``image_processor`` and ``config.id2label`` are used).
        images: a PIL image, an HWC array (uint8 0..255 or float), a file path, or a list of those.
        top_k: how many labels to return per image.

    Returns:
        One list per image of ``{"label": str, "score": float}``, best first.
    """
    batch = [load_image(x) if isinstance(x, str) else x for x in _as_list(images)]
    if not batch:
        return []
    pixel_values = model.image_processor(batch, return_tensors="np")["pixel_values"]
    logits = model(pixel_values).logits
    probs = np.asarray(jax.nn.softmax(logits.astype("float32"), axis=-1))
    k = max(1, min(int(top_k), probs.shape[-1]))
    id2label = model.config.id2label
    results = []
    for row in probs:
        best = np.argsort(-row)[:k]
        results.append([{"label": id2label.get(int(i), str(int(i))), "score": float(row[i])} for i in best])
    return results


def format_predictions(paths: Sequence[str], predictions: list[list[dict[str, Any]]]) -> str:
    lines = []
    for path, preds in zip(paths, predictions, strict=True):
        lines.append(path)
        lines += [f"  {p['score']:.4f}  {p['label']}" for p in preds]
    return "\n".join(lines)
