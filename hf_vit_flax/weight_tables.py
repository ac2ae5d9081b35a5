"""Declarative weight maps between PyTorch state dicts and Flax parameter trees, in both directions.

A table is a list of :class:`Entry` rows, one per tensor: the PyTorch key, the Flax path and how the
array changes on the way (a transpose for a ``Linear``, a layout change for a ``Conv2d`` ...). The
same table reads a checkpoint (:func:`to_flax`) and writes one (:func:`to_torch`), so an import and an
export can never disagree. Tables are built from small per-layer pieces that live beside the layer
they describe (``hf_vit_flax.layers``: ``linear``, ``norm``, the transformer block, the patch
embeddings ...), and a family's converter composes them, so its key map reads at a glance::

    table = [
        *conv("patch_embed.proj", "patch_embed/proj"),
        Entry("cls_token", "cls_token", TOKEN),
        *block_table("blocks.0", "transformer/blocks_0", TIMM_BLOCK),
        *linear("head", "head"),
    ]
    params = to_flax(state_dict, table, what="timm vit_base_patch16_224")
    state_dict = to_torch(params, table)

Pure numpy: no jax or torch import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict


class WeightMismatchError(ValueError):
    """A state dict or params tree that does not fit the table (another architecture or other options)."""


@dataclass(frozen=True)
class Transform:
    """How an array changes from PyTorch's layout to Flax's (``forward``) and back (``inverse``)."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


COPY = Transform("copy", _same, _same)
# torch Linear weight (out, in) <-> flax Dense kernel (in, out)
LINEAR = Transform("linear", lambda w: np.ascontiguousarray(w.T), lambda k: np.ascontiguousarray(k.T))
# torch Conv2d weight (O, I, kh, kw) <-> flax Conv kernel (kh, kw, I, O)
CONV = Transform(
    "conv",
    lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
    lambda k: np.ascontiguousarray(k.transpose(3, 2, 0, 1)),
)
# timm's tokens and position embeddings (1, n, dim) <-> ours (n, dim)
TOKEN = Transform("token", lambda t: t.reshape(t.shape[1:]), lambda t: t[None])


def flatten_to(shape: tuple[int, ...]) -> Transform:
    """A tensor stored with extra unit axes (e.g. vit-pytorch's LayerScale ``(1, 1, dim)``) <-> flat."""
    return Transform(f"flatten{shape}", lambda t: t.reshape(-1), lambda t: t.reshape(shape))


@dataclass(frozen=True)
class Entry:
    """One tensor: PyTorch state-dict key, Flax path (``/``-separated), and the transform between them."""

    torch: str
    flax: str
    transform: Transform = COPY


Table = list[Entry]


def join(prefix: str, name: str, sep: str) -> str:
    return f"{prefix}{sep}{name}" if prefix and name else prefix or name


def param(torch: str, flax: str, transform: Transform = COPY) -> Table:
    return [Entry(torch, flax, transform)]


def linear(torch: str, flax: str, bias: bool = True) -> Table:
    """``torch.nn.Linear`` <-> ``flax.linen.Dense``."""
    table = [Entry(f"{torch}.weight", f"{flax}/kernel", LINEAR)]
    return table + ([Entry(f"{torch}.bias", f"{flax}/bias")] if bias else [])


def conv(torch: str, flax: str, bias: bool = True) -> Table:
    """``torch.nn.Conv2d`` <-> ``flax.linen.Conv`` (NHWC)."""
    table = [Entry(f"{torch}.weight", f"{flax}/kernel", CONV)]
    return table + ([Entry(f"{torch}.bias", f"{flax}/bias")] if bias else [])


def norm(torch: str, flax: str, bias: bool = True, weight: str = "weight", bias_name: str = "bias") -> Table:
    """``torch.nn.LayerNorm`` (or a norm with other tensor names) <-> :class:`hf_vit_flax.layers.LayerNorm`."""
    table = [Entry(f"{torch}.{weight}", f"{flax}/scale")]
    return table + ([Entry(f"{torch}.{bias_name}", f"{flax}/bias")] if bias else [])


def prefixed(table: Iterable[Entry], torch: str, flax: str) -> Table:
    """The same table under a PyTorch module prefix and a Flax scope."""
    return [Entry(join(torch, e.torch, "."), join(flax, e.flax, "/"), e.transform) for e in table]


def to_flax(state_dict: Mapping[str, Any], table: Iterable[Entry], *, what: str, ignore: Iterable[str] = ()) -> dict:
    """Read ``state_dict`` (numpy arrays) through ``table`` into a nested Flax params dict.

    Strict both ways: a key of the table missing from the state dict, or a key of the state dict the
    table does not use (other than those in ``ignore``), raises :class:`WeightMismatchError` (a ``ValueError``) naming them, so a
    checkpoint of another architecture or other options never half-loads.
    """
    state = dict(state_dict)
    for key in ignore:
        state.pop(key, None)
    table = list(table)
    missing = [e.torch for e in table if e.torch not in state]
    if missing:
        raise WeightMismatchError(
            f"{what}: the checkpoint has no key{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(k) for k in missing[:10])}{f' and {len(missing) - 10} more' if len(missing) > 10 else ''}. "
            f"It does not match "
            f"the configuration (another architecture or other options)."
        )
    flat = {}
    for entry in table:
        flat[tuple(entry.flax.split("/"))] = entry.transform.forward(np.asarray(state.pop(entry.torch)))
    if state:
        raise WeightMismatchError(
            f"{what}: {len(state)} checkpoint keys were not converted: {sorted(state)[:20]}. The checkpoint does "
            f"not match the configuration (another architecture or other options)."
        )
    return unflatten_dict(flat)


def to_torch(params: Mapping, table: Iterable[Entry], *, what: str = "the model") -> dict[str, np.ndarray]:
    """Write a Flax params tree through ``table`` as a PyTorch-style state dict of numpy arrays.

    Every parameter must be named by the table: one left over raises ``ValueError``, as does a row
    whose parameter the tree lacks.
    """
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(dict(params)).items()}
    table = list(table)
    missing = [e.flax for e in table if e.flax not in flat]
    if missing:
        raise WeightMismatchError(f"{what}: the parameters have no {', '.join(missing[:10])} ({len(missing)} missing)")
    out = {e.torch: np.ascontiguousarray(e.transform.inverse(flat.pop(e.flax))) for e in table}
    if flat:
        raise WeightMismatchError(f"{what}: {len(flat)} parameters have no PyTorch name: {sorted(flat)[:20]}")
    return out
