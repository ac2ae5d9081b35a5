"""Position embeddings at another resolution: PyTorch's bicubic interpolation, as transformers' ViT applies it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's bicubic convolution constant (``upsample_bicubic2d``); JAX's and PIL's kernels use -0.5.
_TORCH_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray, a: float = _TORCH_CUBIC_A) -> np.ndarray:
    """The four weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``t`` in [0, 1)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` matrix ``M`` with ``M @ x`` equal to PyTorch's
    ``interpolate(x, size=out_size, mode="bicubic", align_corners=False)`` along one axis.

    As ``aten::upsample_bicubic2d``: source position ``(i + 0.5) * in / out - 0.5``, Keys' kernel with
    ``a = -0.75``, taps outside the input clamped to its border, no antialiasing.
    """
    scale = in_size / out_size
    real = scale * (np.arange(out_size) + 0.5) - 0.5
    index = np.floor(real)
    weights = _cubic_weights(real - index)
    matrix = np.zeros((out_size, in_size))
    for tap in range(4):
        source = np.clip(index.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), source), weights[:, tap])
    return matrix.astype(np.float32)


def interpolate_pos_embedding(pos_embedding: jax.Array, new_grid: tuple[int, int], num_prefix_tokens: int) -> jax.Array:
    """``(tokens, dim)`` position embeddings of a square patch grid, resized to ``new_grid`` (height, width)
    with PyTorch's bicubic interpolation; the first ``num_prefix_tokens`` (class, distillation ...) are kept.

    This is transformers' ``ViTEmbeddings.interpolate_pos_encoding``; it is differentiable, and the
    identity when the grid does not change.
    """
    prefix, grid = pos_embedding[:num_prefix_tokens], pos_embedding[num_prefix_tokens:]
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(
            f"interpolate_pos_encoding needs position embeddings of a square patch grid, got {grid.shape[0]} positions"
        )
    height, width = new_grid
    if (height, width) == (side, side):
        return pos_embedding
    rows, cols = torch_bicubic_matrix(side, height), torch_bicubic_matrix(side, width)
    dim = grid.shape[-1]
    resized = jnp.einsum(
        "hi,wj,ijd->hwd",
        jnp.asarray(rows),
        jnp.asarray(cols),
        grid.reshape(side, side, dim).astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.concatenate([prefix, resized.reshape(height * width, dim).astype(pos_embedding.dtype)], axis=0)
