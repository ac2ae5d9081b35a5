"""Framework-level helpers for converters: pure numpy, no torch.

A converter is ``dict[str, np.ndarray] (foreign state dict) -> nested dict (flax params)``; it
ends with :func:`check_tree`, which compares the result with the model's expected tree
(``jax.eval_shape`` of ``init``) and names every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict of torch tensors (or arrays) as float32/int numpy arrays, without importing torch."""
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu()
            if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
                value = value.float()
            value = value.numpy()
        out[key] = np.asarray(value)
    return out


def linear(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight ``(out, in)`` -> flax Dense kernel ``(in, out)``."""
    return np.ascontiguousarray(weight.T)


def conv(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d weight ``(O, I, kh, kw)`` -> flax Conv kernel ``(kh, kw, I, O)``."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


class StateDictReader:
    """Pops keys from a foreign state dict so that whatever a converter did not use can be reported."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], ignore: Iterable[str] = ()):
        self.remaining = dict(state_dict)
        self.ignored = sorted(k for k in self.remaining if any(k.endswith(s) or k == s for s in ignore))
        for key in self.ignored:
            del self.remaining[key]

    def __contains__(self, key: str) -> bool:
        return key in self.remaining

    def pop(self, key: str) -> np.ndarray:
        if key not in self.remaining:
            raise KeyError(f"the checkpoint has no key '{key}'")
        return self.remaining.pop(key)

    def linear(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
        out = {"kernel": linear(self.pop(f"{prefix}.weight"))}
        if bias:
            out["bias"] = self.pop(f"{prefix}.bias")
        return out

    def conv(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
        out = {"kernel": conv(self.pop(f"{prefix}.weight"))}
        if bias:
            out["bias"] = self.pop(f"{prefix}.bias")
        return out

    def layer_norm(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
        out = {"scale": self.pop(f"{prefix}.weight")}
        if bias:
            out["bias"] = self.pop(f"{prefix}.bias")
        return out

    def finish(self, what: str) -> None:
        """Raise if any key of the foreign state dict was not used (and not deliberately ignored)."""
        if self.remaining:
            raise ValueError(
                f"{what}: {len(self.remaining)} checkpoint keys were not converted: "
                f"{sorted(self.remaining)[:20]}. The checkpoint does not match the configuration "
                f"(another architecture or options)."
            )


def check_tree(params: Mapping, expected: Mapping, what: str) -> dict:
    """Strict comparison of a converted tree with the model's expected tree (shapes).

    ``expected`` is ``jax.eval_shape(model.init, ...)['params']`` (or any tree of objects with
    ``.shape``). Raises ValueError naming every missing, unexpected and mis-shaped key.
    """
    got = flatten_dict(dict(params), sep="/")
    want = flatten_dict(dict(expected), sep="/")
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = sorted(
        f"{k}: {tuple(np.shape(got[k]))} vs expected {tuple(want[k].shape)}"
        for k in set(got) & set(want)
        if tuple(np.shape(got[k])) != tuple(want[k].shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{what}: converted weights do not match the model"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))
    return unflatten_dict({tuple(k.split("/")): np.asarray(v, dtype=np.float32) for k, v in got.items()})


def resample_abs_pos_embed(
    posemb: np.ndarray,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> np.ndarray:
    """Resample absolute position embeddings to a new patch grid, as timm's ``resample_abs_pos_embed``.

    ``posemb`` is ``(tokens, dim)`` or ``(1, tokens, dim)``: ``num_prefix_tokens`` embeddings (class,
    register, distillation tokens), kept as they are, then a row-major ``old_size`` grid (square when
    not given), which is resized to ``new_size`` with bicubic interpolation and antialiasing
    (timm's default; JAX's bicubic kernel and PyTorch's antialiased one are the same, a = -0.5).
    Returns an array of the input's rank, float32.
    """
    import math

    import jax
    import jax.numpy as jnp

    squeeze = posemb.ndim == 3
    tokens = np.asarray(posemb[0] if squeeze else posemb, dtype=np.float32)
    prefix, grid = tokens[:num_prefix_tokens], tokens[num_prefix_tokens:]
    if old_size is None:
        side = math.isqrt(grid.shape[0])
        if side * side != grid.shape[0]:
            raise ValueError(
                f"{grid.shape[0]} position embeddings (after {num_prefix_tokens} prefix tokens) are not a square "
                f"grid: give the old grid size (height, width)"
            )
        old_size = (side, side)
    old_size, new_size = tuple(int(s) for s in old_size), tuple(int(s) for s in new_size)
    if old_size[0] * old_size[1] != grid.shape[0]:
        raise ValueError(f"{grid.shape[0]} position embeddings do not form a {old_size[0]}x{old_size[1]} grid")
    if old_size != new_size:
        dim = grid.shape[-1]
        resized = jax.image.resize(
            jnp.asarray(grid.reshape(*old_size, dim)), (*new_size, dim), method="bicubic", antialias=True
        )
        grid = np.asarray(resized, dtype=np.float32).reshape(-1, dim)
    out = np.concatenate([prefix, grid], axis=0)
    return out[None] if squeeze else out
