"""Framework-level helpers for converters: pure numpy, no torch.

A converter is ``dict[str, np.ndarray] (foreign state dict) -> nested dict (flax params)``; it
ends with :func:`check_tree`, which compares the result with the model's expected tree
(``jax.eval_shape`` of ``init``) and names every missing, unexpected or mis-shaped key.

The readers of weights files (:func:`read_state_dict`: safetensors without torch, ``torch.save``
files with torch imported lazily and ``weights_only=True``) raise ``FileNotFoundError`` for a
missing file and ``ValueError`` naming the problem for one that is not a state dict, so every
converter and the command line report a bad file the same way.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickletools
import zipfile
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


# -- reading weights files ----------------------------------------------------------------------------

# The first pickle of torch.save's legacy (pre-zip) format: its magic number, protocol 2.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


class UnsafeCheckpointError(ValueError):
    """A ``torch.save`` file that ``torch.load(weights_only=True)`` refuses: unpickling it would run code."""


def read_state_dict(
    path: str | os.PathLike, containers: Iterable[str] = ("state_dict", "model")
) -> dict[str, np.ndarray]:
    """The state dict in a weights file, as numpy arrays: ``.safetensors`` (no torch) or a ``torch.save`` file.

    ``.pth`` / ``.pt`` / ``.bin`` are read with torch (imported here) and ``weights_only=True``; a
    training checkpoint's weights under one of ``containers`` are unwrapped. Another extension is
    recognised by its first bytes. Raises ``FileNotFoundError`` for a missing file, ``ValueError``
    naming the problem for an empty, corrupt or non-state-dict file, and ``UnsafeCheckpointError``
    (a ``ValueError``) for a pickle that would run code.
    """
    path = os.fspath(path)
    kind = "safetensors" if path.endswith(".safetensors") else "torch" if path.endswith(_TORCH_SUFFIXES) else None
    if kind is None:
        _check_file(path)
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        if _torch_format(head):
            kind = "torch"
        elif head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
            kind = "safetensors"
        else:
            raise ValueError(
                f"cannot read weights from {path}: expected a .safetensors file or a torch.save file (.pth, .pt, .bin)"
            )
    return read_safetensors(path) if kind == "safetensors" else read_torch_checkpoint(path, containers)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (bfloat16 as float32), without torch."""
    path = os.fspath(path)
    _check_file(path)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        state = load_file(path)
    except SafetensorError as err:
        if "bf16" not in str(err).lower() and "bfloat16" not in str(err).lower():
            raise ValueError(f"{path} is not a valid safetensors file, it is corrupt or truncated ({err})") from err
        from safetensors.flax import load_file as load_flax  # numpy has no bfloat16

        state = {k: np.asarray(v, dtype=np.float32) for k, v in load_flax(path).items()}
    return _checked_state_dict(state, path)


def read_torch_checkpoint(
    path: str | os.PathLike, containers: Iterable[str] = ("state_dict", "model")
) -> dict[str, np.ndarray]:
    """The state dict of a ``torch.save`` file as numpy arrays, read with ``weights_only=True`` (torch needed).

    A file that ``weights_only=True`` refuses (it pickles objects whose loading would run code) is
    never loaded otherwise: ``UnsafeCheckpointError`` says how to turn a trusted one into safetensors.
    """
    path = os.fspath(path)
    _check_file(path)
    with open(path, "rb") as f:
        fmt = _torch_format(f.read(len(_TORCH_LEGACY_MAGIC)))
    if fmt is None:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive, or a pickle in its legacy "
            f"format): the file is corrupt or of another kind"
        )
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {path} needs torch (pip install torch), or a .safetensors copy of it") from err
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _pickled_globals(path, fmt)
        if refused is None:  # not a well-formed pickle: damage, not a refusal
            raise ValueError(f"{path} is a corrupt or truncated PyTorch checkpoint (its pickle is malformed)") from err
        # Not chained: torch's message recommends weights_only=False.
        raise UnsafeCheckpointError(_unsafe_message(path, refused)) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError ... for damaged files
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is a corrupt or truncated PyTorch checkpoint ({detail})") from err
    for key in containers:  # training checkpoints wrap the weights
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return _checked_state_dict(state, path)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a weights file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again")


def _torch_format(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return "legacy" if head.startswith(_TORCH_LEGACY_MAGIC) else None


def _pickled_globals(path: str, fmt: str) -> list[str] | None:
    """The globals (``module.name``) a torch.save file's pickle names, read without unpickling anything.

    ``None`` when the pickle is malformed. pickletools only decodes opcodes: nothing is imported or run.
    """
    found: list[str] = []
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                stream, count = io.BytesIO(archive.read(name)), 1
        else:  # four pickles: magic number, protocol version, system info, the object
            stream, count = open(path, "rb"), 4
        with stream:
            for _ in range(count):
                strings: list[str] = []
                for opcode, arg, _ in pickletools.genops(stream):
                    if opcode.name in ("GLOBAL", "INST"):
                        found.append(arg.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(".".join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
    except Exception:
        return None
    return sorted({g for g in found if not g.startswith(("torch.", "collections.", "_codecs."))})


def _unsafe_message(path: str, refused: list[str]) -> str:
    folder, name = os.path.split(path)
    stem = "model" if name.startswith("pytorch_model") else os.path.splitext(name)[0]  # timm's file name
    target = os.path.join(folder, stem + ".safetensors")
    objects = f" ({', '.join(refused[:5])}{', ...' if len(refused) > 5 else ''})" if refused else ""
    return (
        f"{path} was refused for safety: it pickles objects{objects} that torch's safe loader (weights_only=True) "
        f"does not allow, since loading them can run code. If you trust the file, make a safetensors file from "
        f"it in a trusted environment and convert that (the snippet runs the file's code: only for files you "
        f"trust):\n"
        f"  import torch, safetensors.torch\n"
        f'  state = torch.load({json.dumps(path)}, map_location="cpu", weights_only=False)\n'
        f'  safetensors.torch.save_file({{k: v.contiguous() for k, v in state.get("state_dict", state.get("model", '
        f"state)).items() if torch.is_tensor(v)}}, {json.dumps(target)})"
    )


def _checked_state_dict(state: Any, path: str) -> dict[str, np.ndarray]:
    if not isinstance(state, Mapping):
        what = "a single tensor" if hasattr(state, "shape") else f"a {type(state).__name__}"
        raise ValueError(
            f"{path} holds {what}, not a state dict (a dict of parameter names to tensors, as model.state_dict())"
        )
    if not state:
        raise ValueError(f"{path} holds no tensors")
    other = [str(k) for k, v in state.items() if not hasattr(v, "shape")]
    if other:
        raise ValueError(
            f"{path} is not a state dict: {', '.join(other[:5])}{' ...' if len(other) > 5 else ''} "
            f"{'is not a tensor' if len(other) == 1 else 'are not tensors'}"
        )
    return to_numpy(state)


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


def image_size_from_patches(num_patches: int, patch_size: tuple[int, int], what: str, image_size=None):
    """The image size of a vit-pytorch module that only holds its patch count (in its position embedding).

    ``image_size`` (int or (height, width)), when given, must give ``num_patches`` patches; otherwise
    the grid must be square. Returns an int for a square image of square patches, else (height, width).
    """
    patch_h, patch_w = patch_size
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if (height // patch_h) * (width // patch_w) != num_patches:
            raise ValueError(
                f"image_size={image_size!r} gives {(height // patch_h) * (width // patch_w)} patches of "
                f"{patch_h}x{patch_w}, but this {what} has position embeddings for {num_patches}"
            )
        return height if height == width and not isinstance(image_size, (list, tuple)) else (height, width)
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"the image size of this {what} cannot be read from the module ({num_patches} patches of "
            f"{patch_h}x{patch_w}, not a square grid): pass image_size=(height, width)"
        )
    return side * patch_h if patch_h == patch_w else (side * patch_h, side * patch_w)


def same_named(source: Any, *names: str) -> dict[str, Any]:
    """``{name: source.<name>}`` (or ``source[name]`` for a mapping), JSON-ready (tuples as lists).

    The families speak vit-pytorch's vocabulary, so most constructor arguments of a reference class
    carry over under their own name: a converter lists those here and spells out only what it renames.
    """
    get = source.__getitem__ if isinstance(source, Mapping) else functools.partial(getattr, source)
    return {name: as_lists(get(name)) for name in names}


def as_lists(value: Any) -> Any:
    """``value`` with every (nested) tuple as a list, as JSON writes it."""
    return [as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def timm_normalization(pretrained_cfg: Mapping[str, Any], channels: int) -> dict[str, Any]:
    """``image_mean`` / ``image_std`` from a timm ``pretrained_cfg``, when they fit ``channels``.

    A model built with another ``in_chans`` keeps its registered architecture's 3-channel statistics,
    which do not describe its inputs: then none are taken (the config's default applies).
    """
    mean, std = pretrained_cfg.get("mean"), pretrained_cfg.get("std")
    if not mean or not std or len(mean) != channels or len(std) != channels:
        return {"image_mean": None, "image_std": None}
    return {"image_mean": list(mean), "image_std": list(std)}
