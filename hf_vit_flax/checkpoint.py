"""Checkpoint files: finding them (a local folder or a Hub repo), reading them strictly, writing them atomically.

Framework code with no model in it, shared by ``from_pretrained`` and ``save_pretrained`` on both
transformers lines. The formats are transformers' Flax ones, so checkpoints move freely between this
package, transformers 4.x's Flax classes and the Hub:

* ``model.safetensors`` (parameter paths joined with "."), or shards ``model-00001-of-0000N.safetensors``
  with ``model.safetensors.index.json``;
* ``flax_model.msgpack`` (read and written) and its sharded form (read).

A save switches a folder from one checkpoint to the next as a whole. Every file is written into a
``.tmp-save-*`` folder inside the target; a journal listing the moves (config last) and the weights
files of the previous checkpoint to delete is then written atomically, and that write is the commit
point. Applying the journal is idempotent: a save interrupted before the commit leaves the previous
checkpoint untouched (its temporary folder is removed by the next save), one interrupted after it is
completed by the next save or load. Saves into one folder are serialised with a lock file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
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

    def weights_files(self) -> list[str]:
        """The weights files of the checkpoint: one file, or every shard named by its index."""
        for name, is_index in WEIGHTS_CANDIDATES:
            path = self.get(name)
            if path is None:
                continue
            if not is_index:
                return [path]
            try:
                with open(path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError) as err:
                raise OSError(f"the shard index {path} is not valid JSON with a weight_map ({err})") from err
            return [self.require(shard, f"a shard listed in {name}") for shard in shards]
        names = ", ".join(n for n, _ in WEIGHTS_CANDIDATES)
        offline = " in the local cache (offline mode)" if self._offline else ""
        raise OSError(f"{self.describe()} has no weights{offline}: none of {names}")


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
def read_weights(files: Iterable[str], *, allow_non_finite: bool = False) -> dict[tuple[str, ...], Any]:
    """All parameters of a checkpoint, as a flat ``{path tuple: array}`` dict.

    Every tensor must be a float (a checkpoint of integers or booleans is refused), and finite unless
    ``allow_non_finite``: weights that would give NaN logits are an error at load, not at first use.
    """
    state: dict[tuple[str, ...], Any] = {}
    for path in files:
        state.update(_read_file(path))
    check_weights(state, source=", ".join(os.path.basename(f) for f in files), allow_non_finite=allow_non_finite)
    return state


def _read_file(path: str) -> dict[tuple[str, ...], Any]:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.flax import load_file

        try:
            return {tuple(key.split(".")): value for key, value in load_file(path).items()}
        except (SafetensorError, OSError, ValueError) as err:
            raise OSError(corrupt_message(path, err)) from err
    from flax.serialization import msgpack_restore
    from flax.traverse_util import flatten_dict

    with open(path, "rb") as f:
        data = f.read()
    try:
        restored = msgpack_restore(data)
    except Exception as err:  # msgpack raises its own exception types for every kind of damage
        if data.startswith(b"version https://git-lfs"):
            raise OSError(f"{path} is a git-lfs pointer, not the weights: run `git lfs pull` in its folder") from err
        raise OSError(corrupt_message(path, err)) from err
    if not isinstance(restored, dict):
        raise OSError(corrupt_message(path, "it does not hold a parameter tree"))
    return flatten_dict(restored)


def corrupt_message(path: str, err) -> str:
    cached = os.sep + "snapshots" + os.sep in os.path.abspath(path)
    fix = (
        "it is a cached download: load it again with force_download=True"
        if cached
        else "save the model again or download the file again"
    )
    return f"could not read the weights file {path}: it is corrupt or truncated ({err}); {fix}"


def check_weights(state: dict[tuple[str, ...], Any], *, source: str, allow_non_finite: bool = False) -> None:
    # jnp.issubdtype, not np's: bfloat16 (an ml_dtypes extension type) is floating point to JAX only.
    not_float = [(k, v.dtype) for k, v in state.items() if not jnp.issubdtype(v.dtype, jnp.floating)]
    if not_float:
        listed = ", ".join(f"{'/'.join(k)} ({dtype})" for k, dtype in not_float[:5])
        raise ValueError(
            f"{source} holds {len(not_float)} non-float tensors ({listed}{', ...' if len(not_float) > 5 else ''}): "
            f"model weights are floating point, so this is not a checkpoint of this model (or it is quantised, "
            f"which this package does not read)"
        )
    if allow_non_finite:
        return
    bad = [k for k, v in state.items() if not bool(np.isfinite(np.asarray(v, dtype=np.float32)).all())]
    if bad:
        listed = ", ".join("/".join(k) for k in bad[:5])
        raise ValueError(
            f"{source} holds NaN or infinite values in {len(bad)} tensors ({listed}{', ...' if len(bad) > 5 else ''}): "
            f"the model would output NaN. Use the checkpoint it was made from, or pass allow_non_finite=True "
            f"to load it anyway"
        )


# -- writing ------------------------------------------------------------------------------------------
def save_weights(folder: str, flat: dict[str, Any], *, safe_serialization: bool, max_shard_size) -> list[str]:
    """Write ``flat`` ({"a.b.c": array}) as safetensors (sharded above ``max_shard_size``) or msgpack."""
    if not safe_serialization:
        from flax.serialization import msgpack_serialize
        from flax.traverse_util import unflatten_dict

        if max_shard_size is not None and _total_bytes(flat) > _parse_size(max_shard_size):
            raise ValueError("sharded checkpoints are written as safetensors: pass safe_serialization=True")
        tree = unflatten_dict({tuple(k.split(".")): np.asarray(v) for k, v in flat.items()})
        _write_bytes(os.path.join(folder, FLAX_WEIGHTS_NAME), msgpack_serialize(tree))
        return [FLAX_WEIGHTS_NAME]
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.flax import save_file

    split = split_state_dict_into_shards_factory(
        flat,
        get_storage_size=lambda array: int(array.nbytes),
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=_parse_size(max_shard_size if max_shard_size is not None else DEFAULT_MAX_SHARD_SIZE),
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: flat[k] for k in keys}, os.path.join(folder, filename), metadata={"format": "flax"})
    if not split.is_sharded:
        return list(split.filename_to_tensors)
    index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return [SAFE_WEIGHTS_INDEX_NAME, *split.filename_to_tensors]


def _total_bytes(flat: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for v in flat.values())


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
