"""Checkpoint files: finding them (a local folder or a Hub repo), reading them strictly, writing them atomically.

Framework code with no model in it, shared by ``from_pretrained`` and ``save_pretrained`` on both
transformers lines. The formats are transformers' Flax ones, so checkpoints move freely between this
package, transformers 4.x's Flax classes and the Hub:

* ``model.safetensors`` (parameter paths joined with "."), or shards ``model-00001-of-0000N.safetensors``
  with ``model.safetensors.index.json``;
* ``flax_model.msgpack`` (read and written) and its sharded form (read).

Reading is in two steps, so that a wrong or damaged checkpoint of many gigabytes fails before any of
it is read: :func:`scan_weights` takes every tensor's name, dtype and shape from the shard index and
the safetensors headers alone (and checks that the two agree); the caller compares them with the
model; :func:`read_tensors` then reads the tensors it needs, file by file and one tensor at a time,
straight into the final arrays, so loading holds about one copy of the model. A msgpack file has no
header: it is read whole at the first step.

A save switches a folder from one checkpoint to the next as a whole. Every file is written into a
``.tmp-save-*`` folder inside the target; a journal listing the moves (config last) and the weights
files of the previous checkpoint to delete is then written atomically, and that write is the commit
point. Applying the journal is idempotent: a save interrupted before the commit leaves the previous
checkpoint untouched (its temporary folder is removed by the next save), one interrupted after it is
completed by the next save or load. Saves into one folder are serialised with a lock file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
# In the order ``from_pretrained`` looks for them: (weights or index file, is an index).
WEIGHTS_CANDIDATES = (
    (SAFE_WEIGHTS_NAME, False),
    (SAFE_WEIGHTS_INDEX_NAME, True),
    (FLAX_WEIGHTS_NAME, False),
    (FLAX_WEIGHTS_INDEX_NAME, True),
)
_SHARD = re.compile(r"(model|flax_model)-\d{5}-of-\d{5}\.(safetensors|msgpack)")

TMP_PREFIX = ".tmp-save-"
JOURNAL_NAME = "JOURNAL.json"
# Under .cache/huggingface, which huggingface_hub's upload_folder never uploads.
LOCK_PATH = os.path.join(".cache", "huggingface", "hf-vit-flax-save.lock")
DEFAULT_MAX_SHARD_SIZE = "10GB"  # transformers' default


def is_weights_file(name: str) -> bool:
    """A file of a checkpoint's weights (any format, sharded or not), by its name."""
    return name in {n for n, _ in WEIGHTS_CANDIDATES} or bool(_SHARD.fullmatch(name))


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON value in the file ``path``; a ValueError naming the file (as ``what``, when given) if it is not
    valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise ValueError(f"{what + ' ' if what else ''}{os.fspath(path)} is not valid JSON: {err}") from err


def folder_model_type(path: str | os.PathLike) -> Any:
    """The ``model_type`` in the ``config.json`` of the local folder ``path``; None when it has none or it
    cannot be read (then the folder is no checkpoint of ours nor of transformers)."""
    config = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config):
        return None
    try:
        return read_json(config).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


# -- finding files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointLocation:
    """Where a checkpoint lives: a local folder, or a Hub repo with huggingface_hub's download options."""

    name_or_path: str
    subfolder: str = ""
    revision: str | None = None
    cache_dir: str | None = None
    token: Any = None
    local_files_only: bool = False
    force_download: bool = False

    @property
    def folder(self) -> str | None:
        """The local folder, or None for a Hub repo."""
        path = os.path.join(os.fspath(self.name_or_path), self.subfolder or "")
        return path if os.path.isdir(path) else None

    def describe(self) -> str:
        where = self.folder or f"Hub repo '{self.name_or_path}'"
        return f"{where}{f' (subfolder {self.subfolder})' if self.subfolder and not self.folder else ''}"

    def get(self, filename: str) -> str | None:
        """Path of ``filename`` (downloaded if needed), or None when the checkpoint has no such file.

        Any other failure (a server error, a timeout, a missing repo) is an ``OSError`` that names the
        file and what went wrong: it is never taken for an absent file.
        """
        folder = self.folder
        if folder is not None:
            path = os.path.join(folder, filename)
            return path if os.path.isfile(path) else None
        check_repo_id(self.name_or_path)
        from huggingface_hub import hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        url = hf_hub_url(self.name_or_path, filename, subfolder=self.subfolder or None, revision=self.revision)
        try:
            return hf_hub_download(
                self.name_or_path,
                filename,
                subfolder=self.subfolder or None,
                revision=self.revision,
                cache_dir=self.cache_dir,
                token=self.token,
                local_files_only=self.local_files_only,
                force_download=self.force_download,
            )
        except LocalEntryNotFoundError as err:
            # Not in the cache, and either offline (the file may simply not exist) or the Hub could not
            # be reached. Tested before EntryNotFoundError, which it derives from.
            if self.local_files_only or _hub_offline():
                return None
            cause = err.__cause__ or err.__context__ or err
            raise OSError(f"could not download {url}: {_describe_error(cause)}") from err
        except EntryNotFoundError:
            return None
        except Exception as err:  # a server error, a timeout, no such repo or revision
            raise OSError(f"could not download {url}: {_describe_error(err)}") from err

    def require(self, filename: str, what: str) -> str:
        path = self.get(filename)
        if path is None:
            hint = " (offline: only files already in the cache can be used)" if self._offline else ""
            raise OSError(f"{self.describe()} has no {filename} ({what}){hint}")
        return path

    @property
    def _offline(self) -> bool:
        return self.folder is None and (self.local_files_only or _hub_offline())

    def weights(self) -> CheckpointWeights:
        """The weights files of the checkpoint (one file, or every shard its index names) and the index."""
        for name, is_index in WEIGHTS_CANDIDATES:
            path = self.get(name)
            if path is None:
                continue
            if not is_index:
                return CheckpointWeights([path])
            weight_map = _read_index(path)
            files = [self.require(shard, f"a shard listed in {name}") for shard in sorted(set(weight_map.values()))]
            return CheckpointWeights(files, index=path, weight_map=weight_map)
        names = ", ".join(n for n, _ in WEIGHTS_CANDIDATES)
        offline = " in the local cache (offline mode)" if self._offline else ""
        raise OSError(f"{self.describe()} has no weights{offline}: none of {names}")

    def weights_files(self) -> list[str]:
        """The weights files of the checkpoint: one file, or every shard named by its index."""
        return self.weights().files


@dataclass(frozen=True)
class CheckpointWeights:
    """A checkpoint's weights files (local paths) and, for a sharded one, its index and weight map."""

    files: list[str]
    index: str | None = None
    weight_map: dict[str, str] | None = field(default=None, repr=False)  # key in the index -> shard name

    def describe(self) -> str:
        return ", ".join(os.path.basename(f) for f in self.files)


def _read_index(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError("weight_map is not a mapping of tensor names to file names")
    except (ValueError, KeyError, TypeError) as err:
        raise OSError(f"the shard index {path} is not valid JSON with a weight_map ({err})") from err
    outside = sorted({v for v in weight_map.values() if os.path.isabs(v) or ".." in re.split(r"[\\/]", v)})
    if outside:
        raise OSError(f"the shard index {path} names shards outside its folder ({', '.join(outside[:3])}): refused")
    return weight_map


def check_repo_id(value) -> None:
    """A name that is not an existing folder must be a Hub repo id; say that a mistyped path does not exist."""
    text = os.fspath(value)
    if os.path.isfile(text):
        raise OSError(f"{text} is a file: give the folder that holds config.json and the weights, or a Hub repo id")
    looks_like_path = text.startswith((os.sep, ".", "~")) or os.sep in text.replace("/", "", 1) or "\\" in text
    if looks_like_path or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
        raise OSError(f"{text} does not exist: give an existing folder or a Hub repo id (org/name)")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _describe_error(err: Exception) -> str:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if status is not None and str(status) not in text:
        text = f"HTTP {status}: {text}"
    if "timeout" in type(err).__name__.lower() or "timed out" in text.lower():
        text = f"timed out ({text})"
    return text


# -- reading ------------------------------------------------------------------------------------------
# safetensors' dtype names; ml_dtypes (a jax dependency) holds the ones numpy lacks.
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype)
    for name, dtype in {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U64": np.uint64,
        "U32": np.uint32,
        "U16": np.uint16,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }.items()
}


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a safetensors file as the file's header describes it; :func:`read_tensors` reads it."""

    path: str
    name: str  # its key in the file
    dtype: np.dtype | str  # safetensors' name of the dtype where numpy has none
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file
    nbytes: int


def scan_weights(weights: CheckpointWeights) -> dict[tuple[str, ...], Any]:
    """Every tensor of a checkpoint by its key path, without reading safetensors data.

    A safetensors tensor is a :class:`StoredTensor` (name, dtype and shape from the file's header, which
    safetensors validates); a msgpack file has no header, so its arrays are read. The shard index of a
    sharded checkpoint must agree with its shards: a tensor the index places in a shard that does not
    hold it, or one a shard holds that the index places elsewhere or nowhere, is an ``OSError`` naming it.
    """
    state: dict[tuple[str, ...], Any] = {}
    held: dict[str, dict[tuple[str, ...], Any]] = {}
    for path in weights.files:
        held[path] = read_header(path) if path.endswith(".safetensors") else _read_msgpack(path)
        state.update(held[path])
    if weights.weight_map is not None:
        _check_index(weights, held)
    return state


def _check_index(weights: CheckpointWeights, held: dict[str, dict]) -> None:
    sep = "/" if weights.index.endswith(FLAX_WEIGHTS_INDEX_NAME) else "."  # as transformers writes each
    problems = []
    for shard, path in zip(sorted(set(weights.weight_map.values())), weights.files, strict=True):
        listed = {k for k, v in weights.weight_map.items() if v == shard}
        holds = {sep.join(k) for k in held[path]}
        if listed - holds:
            problems.append(f"{shard} lacks {_listing(listed - holds)}, which the index places there")
        if holds - listed:
            problems.append(f"{shard} holds {_listing(holds - listed)}, which the index does not place there")
    if problems:
        raise OSError(
            f"the shard index {weights.index} does not agree with its shards: {'; '.join(problems)}. The index and "
            f"the shards come from different saves, or a file is incomplete: save the model again or download "
            f"the files again (force_download=True for a cached download)"
        )


def _listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_header(path: str) -> dict[tuple[str, ...], StoredTensor]:
    """The tensors of a safetensors file as its header describes them; no tensor data is read."""
    from safetensors import SafetensorError, safe_open

    try:
        # safetensors validates the header: offsets that tile the data, sizes that fit dtype and shape, and a
        # file exactly as long as its data (a truncated download fails here, before anything is read).
        with safe_open(path, framework="numpy"):
            pass
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (SafetensorError, OSError, ValueError) as err:
        raise OSError(_unreadable_message(path, err)) from err
    start = 8 + size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"])
        tensors[tuple(name.split("."))] = StoredTensor(
            path, name, dtype, tuple(info["shape"]), start + begin, end - begin
        )
    return tensors


def _read_msgpack(path: str) -> dict[tuple[str, ...], Any]:
    from flax.serialization import msgpack_restore
    from flax.traverse_util import flatten_dict

    with open(path, "rb") as f:
        data = f.read()
    try:
        restored = msgpack_restore(data)
    except Exception as err:  # msgpack raises its own exception types for every kind of damage
        raise OSError(_unreadable_message(path, err, data[:32])) from err
    if not isinstance(restored, dict):
        raise OSError(corrupt_message(path, "it does not hold a parameter tree"))
    return flatten_dict(restored)


def _unreadable_message(path: str, err, start: bytes | None = None) -> str:
    if start is None:
        try:
            with open(path, "rb") as f:
                start = f.read(32)
        except OSError:
            start = b""
    if start.startswith(b"version https://git-lfs"):
        return f"{path} is a git-lfs pointer, not the weights: run `git lfs pull` in its folder"
    return corrupt_message(path, err)


def read_tensors(
    tensors: dict[Any, Any], *, source: str | None = None, allow_non_finite: bool = False
) -> dict[Any, Any]:
    """The arrays of ``tensors`` ({key: StoredTensor, or an array already read}), in the same order.

    Stored tensors are read file by file, each straight into an array of its own (no file mapping and no
    copy of a whole file), so the peak memory is the result plus one tensor. Every value must be finite
    unless ``allow_non_finite``: weights that would give NaN logits are an error at load, not at first use.
    """
    stored = sorted(
        ((key, value) for key, value in tensors.items() if isinstance(value, StoredTensor)),
        key=lambda item: (item[1].path, item[1].offset),
    )
    arrays: dict[Any, Any] = {}
    bad: list[str] = []
    for path, group in itertools.groupby(stored, key=lambda item: item[1].path):
        with open(path, "rb", buffering=0) as f:
            for key, tensor in group:
                array = _read_tensor(f, tensor)
                if not allow_non_finite and not _finite(array):
                    bad.append(tensor.name)
                arrays[key] = jnp.asarray(array)
                del array
    for key, value in tensors.items():
        if not isinstance(value, StoredTensor):
            if not allow_non_finite and not _finite(value):
                bad.append("/".join(key) if isinstance(key, tuple) else str(key))
            arrays[key] = value
    if bad:
        if source is None:
            files = sorted({os.path.basename(v.path) for v in tensors.values() if isinstance(v, StoredTensor)})
            source = ", ".join(files) or "the checkpoint"
        listed = ", ".join(k.replace(".", "/") for k in bad[:5])
        raise ValueError(
            f"{source} holds NaN or infinite values in {len(bad)} tensors ({listed}{', ...' if len(bad) > 5 else ''}): "
            f"the model would output NaN. Use the checkpoint it was made from, or pass allow_non_finite=True "
            f"to load it anyway"
        )
    return {key: arrays[key] for key in tensors}


def _read_tensor(f, tensor: StoredTensor) -> np.ndarray:
    array = np.empty(tensor.shape, dtype=tensor.dtype)
    if array.nbytes != tensor.nbytes:
        raise OSError(corrupt_message(tensor.path, f"{tensor.name} has {tensor.nbytes} bytes for {array.nbytes}"))
    view = memoryview(array.reshape(-1).view(np.uint8))
    f.seek(tensor.offset)
    done = 0
    while done < tensor.nbytes:  # a large read may return less than asked
        got = f.readinto(view[done:])
        if not got:
            raise OSError(corrupt_message(tensor.path, f"it ends inside {tensor.name} (was it changed while loading?)"))
        done += got
    return array


def _finite(array) -> bool:
    return bool(np.isfinite(np.asarray(array, dtype=np.float32)).all())


def check_dtypes(state: dict[tuple[str, ...], Any], *, source: str) -> None:
    """Refuse a checkpoint with tensors that are not floating point (dtypes from the headers: nothing read)."""
    # jnp.issubdtype, not np's: bfloat16 (an ml_dtypes extension type) is floating point to JAX only.
    not_float = [
        (k, v.dtype) for k, v in state.items() if isinstance(v.dtype, str) or not jnp.issubdtype(v.dtype, jnp.floating)
    ]
    if not_float:
        listed = ", ".join(f"{'/'.join(k)} ({dtype})" for k, dtype in not_float[:5])
        raise ValueError(
            f"{source} holds {len(not_float)} non-float tensors ({listed}{', ...' if len(not_float) > 5 else ''}): "
            f"model weights are floating point, so this is not a checkpoint of this model (or it is quantised, "
            f"which this package does not read)"
        )


def read_weights(files: Iterable[str], *, allow_non_finite: bool = False) -> dict[tuple[str, ...], Any]:
    """All parameters in ``files``, as a flat ``{path tuple: array}`` dict (floats, finite unless allowed)."""
    weights = CheckpointWeights(list(files))
    state = scan_weights(weights)
    check_dtypes(state, source=weights.describe())
    return read_tensors(state, source=weights.describe(), allow_non_finite=allow_non_finite)


def corrupt_message(path: str, err) -> str:
    cached = os.sep + "snapshots" + os.sep in os.path.abspath(path)
    fix = (
        "it is a cached download: load it again with force_download=True"
        if cached
        else "save the model again or download the file again"
    )
    return f"could not read the weights file {path}: it is corrupt or truncated ({err}); {fix}"


# -- writing ------------------------------------------------------------------------------------------
def save_weights(folder: str, flat: dict[str, Any], *, safe_serialization: bool, max_shard_size) -> list[str]:
    """Write ``flat`` ({"a.b.c": array}) as safetensors (sharded above ``max_shard_size``) or msgpack."""
    if not safe_serialization:
        from flax.serialization import msgpack_serialize
        from flax.traverse_util import unflatten_dict

        if max_shard_size is not None and sum(map(nbytes, flat.values())) > _parse_size(max_shard_size):
            raise ValueError("sharded checkpoints are written as safetensors: pass safe_serialization=True")
        tree = unflatten_dict({tuple(k.split(".")): np.asarray(v) for k, v in flat.items()})
        _write_bytes(os.path.join(folder, FLAX_WEIGHTS_NAME), msgpack_serialize(tree))
        return [FLAX_WEIGHTS_NAME]
    from safetensors.flax import save_file

    plan = plan_shards(flat, max_shard_size)
    for filename, keys in plan.files.items():
        save_file({k: flat[k] for k in keys}, os.path.join(folder, filename), metadata={"format": "flax"})
    if plan.index is None:
        return list(plan.files)
    write_index(folder, plan)
    return [SAFE_WEIGHTS_INDEX_NAME, *plan.files]


@dataclass(frozen=True)
class ShardPlan:
    """How a state is split into safetensors files: each file's keys, and the index (None for one file)."""

    files: dict[str, list[str]]
    index: dict | None


def plan_shards(flat: dict[str, Any], max_shard_size) -> ShardPlan:
    """The files ``save_pretrained`` writes ``flat`` ({"a.b.c": array}) into, at most ``max_shard_size`` each.

    Only the values' shapes and dtypes are read, so ``flat`` may hold ``jax.ShapeDtypeStruct`` (from
    ``jax.eval_shape``): a model of many gigabytes is planned without its arrays. As transformers does,
    a tensor larger than ``max_shard_size`` gets a file of its own; ``None`` means the default, 10GB.
    """
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory(
        flat,
        get_storage_size=nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=_parse_size(max_shard_size if max_shard_size is not None else DEFAULT_MAX_SHARD_SIZE),
    )
    index = (
        {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)} if split.is_sharded else None
    )
    return ShardPlan({name: list(keys) for name, keys in split.filename_to_tensors.items()}, index)


def write_index(folder: str, plan: ShardPlan) -> None:
    """Write ``plan``'s shard index (``model.safetensors.index.json``) into ``folder``."""
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(plan.index, f, indent=2, sort_keys=True)


def nbytes(array) -> int:
    """Bytes of an array, or of an array of that shape and dtype (a ``jax.ShapeDtypeStruct``)."""
    return math.prod(array.shape) * np.dtype(array.dtype).itemsize


_BINARY_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(size) -> int:
    """Bytes in ``size``: an int, or "10GB" / "150kB" (powers of 1000) or "5GiB" / "150kiB" (powers of
    1024), the units transformers' ``save_pretrained`` takes (huggingface_hub's parser has no binary ones)."""
    from huggingface_hub.serialization._base import parse_size_to_int

    if isinstance(size, int):
        return size
    unit = size.strip()[-3:].upper()
    if unit in _BINARY_UNITS:
        return int(float(size.strip()[:-3]) * _BINARY_UNITS[unit])
    return parse_size_to_int(size)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_checkpoint(folder: str, write: Callable[[str], None]) -> list[str]:
    """Replace the checkpoint in ``folder`` by the files ``write(tmp_folder)`` creates, as a whole.

    Files of ``folder`` that are not weights and that ``write`` does not create are left alone; weights
    files of the previous checkpoint that ``write`` does not create are deleted (``from_pretrained``
    would otherwise find an old index or format). Returns the names written.
    """
    os.makedirs(folder, exist_ok=True)
    with _lock(folder):
        recover(folder, locked=True)
        tmp = tempfile.mkdtemp(dir=folder, prefix=TMP_PREFIX)
        try:
            write(tmp)
            written = sorted(os.listdir(tmp))
            for name in written:
                _fsync(os.path.join(tmp, name))
            stale = sorted(n for n in os.listdir(folder) if is_weights_file(n) and n not in written)
            # Weights first and the config last: the config names the model the weights belong to.
            moves = sorted(written, key=lambda n: (not is_weights_file(n), n == CONFIG_NAME, n))
            journal = os.path.join(tmp, JOURNAL_NAME)
            with open(journal + ".part", "w", encoding="utf-8") as f:
                json.dump({"move": moves, "delete": stale}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(journal + ".part", journal)  # the commit point
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _apply_journal(folder, tmp)
    return written


def recover(folder: str, *, locked: bool = False) -> None:
    """Finish a save that was interrupted after its commit point; drop the leftovers of one before it."""
    pending = _temporary_folders(folder)
    if not pending:
        return
    if not locked:
        try:
            with _lock(folder):
                return recover(folder, locked=True)
        except OSError as err:
            if any(os.path.isfile(os.path.join(tmp, JOURNAL_NAME)) for tmp in pending):
                raise OSError(
                    f"{folder} holds a save that was interrupted while switching files, and it cannot be "
                    f"completed here ({err}): save the model again into a writable folder"
                ) from err
            return
    for tmp in pending:
        if os.path.isfile(os.path.join(tmp, JOURNAL_NAME)):
            _apply_journal(folder, tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _lock(folder: str):
    from filelock import FileLock

    path = os.path.join(folder, LOCK_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return FileLock(path)


def _temporary_folders(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in sorted(names) if n.startswith(TMP_PREFIX)]


def _apply_journal(folder: str, tmp: str) -> None:
    with open(os.path.join(tmp, JOURNAL_NAME), encoding="utf-8") as f:
        journal = json.load(f)
    for name in journal["move"]:
        source = os.path.join(tmp, name)
        if os.path.exists(source):  # moved already by an earlier, interrupted attempt
            os.replace(source, os.path.join(folder, name))
    for name in journal["delete"]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
    _fsync(folder)
    shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # folders cannot be fsynced on every platform
    finally:
        os.close(fd)
