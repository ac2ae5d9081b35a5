"""The linear layer every family uses: ``flax.linen.Dense`` with its input's leading axes merged into one."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


def merged_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs) -> Any:
    """``jax.lax.dot_general`` as ``nn.Dense`` calls it, on a ``(..., in)`` input seen as ``(rows, in)``.

    The values are the same. What changes is the gradient of the kernel: autodiff contracts the input and
    the output gradient over every leading axis. Over two axes (batch, tokens), XLA:CPU first copies one of
    them into a transposed layout (a full activation per linear layer per step: ~20% of a ViT-Ti/16
    training step at batch 8); over the one merged axis, it hands the transposed operand to its matmul as
    it is (benchmarks/README.md, "Linear layers on merged rows").
    """
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
    plain = tuple(lhs_contracting) == (lhs.ndim - 1,) and tuple(rhs_contracting) == (0,)
    if lhs.ndim <= 2 or rhs.ndim != 2 or lhs_batch or rhs_batch or not plain:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type, **kwargs
        )
    out = jax.lax.dot_general(
        lhs.reshape(-1, lhs.shape[-1]),
        rhs,
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )
    return out.reshape(*lhs.shape[:-1], rhs.shape[-1])


class Dense(nn.Dense):
    """``flax.linen.Dense`` (same parameters, same values) whose kernel gradient XLA computes without
    transposing the activations: see :func:`merged_dot_general`."""

    dot_general: Any = merged_dot_general
