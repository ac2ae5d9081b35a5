"""``FlaxPreTrainedModel``'s interface, on every transformers release line.

transformers 4.x has a ``FlaxPreTrainedModel`` (4.57 is its last release); transformers 5 removed it
with every Flax model. The package's models stand on :class:`FlaxPreTrainedModel` below, which
implements that interface itself (construction and ``params``, ``init_weights``, the dtype casts,
``from_pretrained``, ``save_pretrained``, ``push_to_hub``) on huggingface_hub and safetensors, in
transformers' Flax checkpoint format. On transformers 4.x the class also derives from transformers'
``FlaxPreTrainedModel``, so ``isinstance`` checks and transformers' Flax Auto classes accept the models;
loading and saving are this module's on both lines, so a checkpoint behaves the same whichever line
wrote or reads it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import FrozenDict, freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from . import checkpoint as ckpt

try:  # transformers 4.x
    from transformers import FlaxPreTrainedModel as _TransformersFlaxPreTrainedModel
except ImportError:  # transformers 5.x: no Flax models
    _TransformersFlaxPreTrainedModel = None

# Keyword arguments of transformers' from_pretrained that have no effect here (Auto classes pass some).
_IGNORED_LOAD_KWARGS = (
    "_from_auto",
    "_from_pipeline",
    "_commit_hash",
    "trust_remote_code",
    "proxies",
    "resume_download",
    "mirror",
    "code_revision",
    "adapter_kwargs",
)


class _FlaxPreTrainedModel:
    """The Hugging Face model interface over a linen ``module`` and its parameter tree.

    Sub-classes set ``config_class``, ``base_model_prefix``, ``main_input_name`` and implement
    ``init_weights(rng, input_shape, params=None)``.
    """

    config_class: ClassVar[type] = None
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "pixel_values"
    _auto_class = None
    _missing_keys: set = set()

    def __init__(
        self,
        config,
        module: nn.Module,
        input_shape: tuple = (1, 1),
        seed: int = 0,
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
    ):
        if config is None:
            raise ValueError("config cannot be None")
        if module is None:
            raise ValueError("module cannot be None")
        self._config = config
        self._module = module
        self.key = jax.random.PRNGKey(seed)
        self.dtype = dtype
        self.input_shape = input_shape
        self.generation_config = None
        self._is_initialized = _do_init
        if _do_init:
            random_params = self.init_weights(self.key, input_shape)
            shape_tree = jax.eval_shape(lambda params: params, random_params)
        else:
            shape_tree = jax.eval_shape(lambda rng: self.init_weights(rng, input_shape=input_shape), self.key)
        self._params_shape_tree = shape_tree
        self._required_params = set(flatten_dict(unfreeze(shape_tree)).keys())
        if _do_init:
            self.params = random_params

    # -- the interface ----------------------------------------------------------------------------------
    def init_weights(self, rng: jax.Array, input_shape: tuple, params: FrozenDict | None = None) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not implement init_weights")

    def _init_compiler_options(self) -> dict:
        """``compiler_options`` for a top-level ``jax.jit`` of ``init_weights`` (sub-classes: per model size)."""
        return {}

    @classmethod
    def _from_config(cls, config, **kwargs):
        return cls(config, **kwargs)

    @classmethod
    def can_generate(cls) -> bool:
        return False

    @property
    def framework(self) -> str:
        return "flax"

    @property
    def config(self):
        return self._config

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def params(self) -> dict:
        if not self._is_initialized:
            raise ValueError(
                "`params` cannot be accessed from a model created with `_do_init=False`: keep the parameters "
                "returned by `from_pretrained(..., _do_init=False)` or `init_weights` and pass them explicitly"
            )
        return self._params

    @params.setter
    def params(self, params: dict) -> None:
        if not self._is_initialized:
            raise ValueError("`params` cannot be set on a model created with `_do_init=False`; keep them outside")
        if isinstance(params, FrozenDict):
            params = unfreeze(params)
        missing = self._required_params - set(flatten_dict(params).keys())
        if missing:
            raise ValueError(f"some parameters are missing: {sorted('/'.join(k) for k in missing)[:12]}")
        self._params = params

    @property
    def required_params(self) -> set:
        return self._required_params

    @property
    def params_shape_tree(self) -> dict:
        return self._params_shape_tree

    def num_parameters(self, params: dict | None = None) -> int:
        """The number of parameters (of ``params``, or of the model's own, or of its shapes without them)."""
        tree = params if params is not None else (self.params if self._is_initialized else self.params_shape_tree)
        return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))

    def _cast_floating_to(self, params: dict, dtype, mask: Any = None) -> Any:
        def cast(param):
            if isinstance(param, jnp.ndarray) and jnp.issubdtype(param.dtype, jnp.floating):
                return param.astype(dtype)
            return param

        if mask is None:
            return jax.tree.map(cast, params)
        flat_params = flatten_dict(unfreeze(params))
        flat_mask, _ = jax.tree_util.tree_flatten(mask)
        for masked, key in zip(flat_mask, sorted(flat_params.keys()), strict=False):
            if masked:
                flat_params[key] = cast(flat_params[key])
        return unflatten_dict(flat_params)

    def to_bf16(self, params: dict, mask: Any = None):
        """A copy of ``params`` with floating-point leaves in bfloat16 (``mask``: a tree of booleans, True = cast)."""
        return self._cast_floating_to(params, jnp.bfloat16, mask)

    def to_fp32(self, params: dict, mask: Any = None):
        """A copy of ``params`` with floating-point leaves in float32."""
        return self._cast_floating_to(params, jnp.float32, mask)

    def to_fp16(self, params: dict, mask: Any = None):
        """A copy of ``params`` with floating-point leaves in float16."""
        return self._cast_floating_to(params, jnp.float16, mask)

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config=None,
        cache_dir: str | os.PathLike | None = None,
        ignore_mismatched_sizes: bool = False,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        subfolder: str = "",
        dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
        allow_non_finite: bool = False,
        **kwargs,
    ):
        """Load a model from a folder written by ``save_pretrained`` or from a Hub repo id.

        As transformers' ``FlaxPreTrainedModel.from_pretrained``: ``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download`` and ``subfolder`` go to huggingface_hub; ``dtype`` is the
        computation dtype (parameters keep the dtype they were saved in: cast them with ``to_bf16``);
        other keyword arguments update the config (``num_labels=10``, or ``id2label={0: "cat", 1: "dog"}``,
        which sets ``label2id`` too) or, with ``config=`` given, go to the model's constructor. With
        ``_do_init=False`` it returns ``(model, params)``.

        Loading is strict: a checkpoint whose parameter names or shapes do not match the model built
        from its config is an error, except the classification head, which may be absent (it is then
        freshly initialised) or extra (a classifier checkpoint loaded as a base model). With
        ``ignore_mismatched_sizes=True``, parameters whose shapes differ (a head for another number of
        labels) are freshly initialised instead. Weights must be floating point, and finite unless
        ``allow_non_finite=True``. Names, dtypes and shapes are checked from the shard index and the
        safetensors headers before any tensor data is read (``check_checkpoint`` makes that check alone);
        the tensors are then read one shard after the other into the model's arrays, so loading needs
        about one model's worth of memory, sharded or not.
        """
        token = kwargs.pop("use_auth_token", token)
        for name in _IGNORED_LOAD_KWARGS:
            kwargs.pop(name, None)
        if kwargs.pop("from_pt", False):
            raise ValueError(
                "from_pt=True: PyTorch checkpoints are converted with hf_vit_flax.from_timm or "
                "hf_vit_flax.from_vit_pytorch, not loaded by from_pretrained"
            )
        seed = kwargs.pop("seed", 0)
        location = ckpt.CheckpointLocation(
            os.fspath(pretrained_model_name_or_path),
            subfolder=subfolder or "",
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        if location.folder is not None:
            ckpt.recover(location.folder)  # finish a save interrupted after its commit point
        if config is None or isinstance(config, (str, os.PathLike)):
            config_path = location.require(ckpt.CONFIG_NAME, "the model's config") if config is None else config
            config, model_kwargs = cls.config_class.from_pretrained(config_path, return_unused_kwargs=True, **kwargs)
            if kwargs.get("id2label") is not None and "label2id" not in kwargs:
                # transformers sets label2id from id2label only at construction: new labels need both.
                config.label2id = {label: int(i) for i, label in config.id2label.items()}
        else:
            model_kwargs = kwargs
        state = _scan_checkpoint(location)  # names, dtypes and shapes: no tensor data read yet
        model = cls(config, *model_args, seed=seed, dtype=dtype, _do_init=False, **model_kwargs)
        params = model._params_from_checkpoint(
            state, location.describe(), ignore_mismatched_sizes, allow_non_finite=allow_non_finite
        )
        model._after_load(location)
        if not _do_init:
            return model, freeze(params) if isinstance(model.params_shape_tree, FrozenDict) else params
        model._is_initialized = True
        model.params = params
        return model

    def _checkpoint_to_model_keys(self, state: dict[tuple, Any]) -> dict[tuple, Any]:
        """Map a checkpoint's flat keys onto the model's layout (sub-classes: older layouts, prefixes).

        Keys only: the values may be tensors not read yet (:class:`~hf_vit_flax.checkpoint.StoredTensor`),
        so they are passed through as they are.
        """
        return state

    def _optional_key(self, key: tuple) -> bool:
        """Whether a parameter may be absent from a checkpoint (then random) or extra in it (then dropped)."""
        return False

    def check_checkpoint(
        self, pretrained_model_name_or_path: str | os.PathLike, *, ignore_mismatched_sizes: bool = False, **kwargs
    ) -> None:
        """Check that a checkpoint loads into this model, from its shard index and file headers alone.

        ``from_pretrained`` makes the same check before it reads any tensor data; this method makes only
        the check, so a checkpoint of many gigabytes is judged in milliseconds (safetensors files are not
        read past their headers; a msgpack file has none and is read whole). Raises ``ValueError``
        naming the missing, unexpected and mis-shaped keys, or the tensors that are not floating point;
        ``OSError`` for missing, damaged or inconsistent files (a shard that lacks a tensor its index
        places there). Keyword arguments locate the checkpoint as in ``from_pretrained``: ``subfolder``,
        ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``.
        """
        location = ckpt.CheckpointLocation(os.fspath(pretrained_model_name_or_path), **kwargs)
        if location.folder is not None:
            ckpt.recover(location.folder)
        self._match_checkpoint(_scan_checkpoint(location), location.describe(), ignore_mismatched_sizes)

    def _match_checkpoint(
        self, state: dict[tuple, Any], source: str, ignore_mismatched_sizes: bool
    ) -> tuple[dict[tuple, Any], list[tuple]]:
        """Which checkpoint tensor each parameter comes from, and which parameters are initialised afresh.

        Strict: reads only the keys and the ``shape`` of the values, which may be tensors not yet read
        (:class:`~hf_vit_flax.checkpoint.StoredTensor`), and raises ``ValueError`` naming every missing,
        unexpected and mis-shaped key.
        """
        state = self._checkpoint_to_model_keys(state)
        expected = flatten_dict(unfreeze(self.params_shape_tree))
        missing = sorted(k for k in expected if k not in state and not self._optional_key(k))
        unexpected = sorted(k for k in state if k not in expected and not self._optional_key(k))
        mismatched = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or (mismatched and not ignore_mismatched_sizes):
            shapes = [f"{'/'.join(k)} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]
            hint = (
                " Pass ignore_mismatched_sizes=True to initialise those parameters afresh (e.g. a new head)."
                if mismatched and not missing and not unexpected
                else " It was saved by another family or version; load it with the class that saved it."
            )
            raise ValueError(
                f"the checkpoint at {source} does not match {type(self).__name__} built from its config: "
                f"missing keys {_abbrev(['/'.join(k) for k in missing])}, unexpected keys "
                f"{_abbrev(['/'.join(k) for k in unexpected])}, mismatched shapes {_abbrev(shapes)}.{hint}"
            )
        tensors = {k: state[k] for k in expected if k in state and k not in mismatched}
        return tensors, [k for k in expected if k not in tensors]

    def _params_from_checkpoint(
        self, state: dict[tuple, Any], source: str, ignore_mismatched_sizes: bool, allow_non_finite: bool = False
    ) -> dict:
        """The model's parameter tree from a checkpoint's flat state, strictly checked before anything is read."""
        tensors, fresh = self._match_checkpoint(state, source, ignore_mismatched_sizes)
        params = ckpt.read_tensors(tensors, source=source, allow_non_finite=allow_non_finite)
        if fresh:
            params.update(self._fresh_params(fresh))
            import logging

            logging.getLogger(__name__).warning(
                "%s: newly initialised from %s: %s (train them before use)",
                type(self).__name__,
                source,
                ", ".join("/".join(k) for k in fresh[:12]),
            )
        self._missing_keys = set()
        return unflatten_dict(params)

    def _fresh_params(self, keys: list[tuple]) -> dict[tuple, Any]:
        """Randomly initialised values of the parameters ``keys`` (a new head), the values a full
        ``init_weights`` gives them; under ``jax.jit`` the compiler drops the rest of the initialisation,
        so a new head on a backbone of many gigabytes costs the head, not a second copy of the model."""

        def init(rng):
            flat = flatten_dict(unfreeze(self.init_weights(rng, self.input_shape)))
            return {"/".join(k): flat[k] for k in keys}

        values = jax.jit(init, compiler_options=self._init_compiler_options() or None)(self.key)
        return {k: values["/".join(k)] for k in keys}

    def _after_load(self, location: ckpt.CheckpointLocation) -> None:
        """Load what else the checkpoint holds (sub-classes: the image processor)."""

    # -- saving -----------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        params=None,
        push_to_hub: bool = False,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        token: str | bool | None = None,
        safe_serialization: bool = True,
        **kwargs,
    ) -> None:
        """Save the config, the weights and whatever else the model ships with, so ``from_pretrained`` reloads it.

        Weights go to ``model.safetensors`` (sharded with an index above ``max_shard_size``), or to
        ``flax_model.msgpack`` with ``safe_serialization=False``. The folder switches from its previous
        checkpoint to the new one as a whole (see :mod:`hf_vit_flax.checkpoint`): an interrupted save
        leaves the previous checkpoint or the new one, never a mix, and weights files of the previous
        checkpoint are removed. Other files in the folder are left alone. ``push_to_hub=True`` then
        uploads the files to ``repo_id`` (default: the folder's name).
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory} is a file; give a folder")
        repo_id = kwargs.pop("repo_id", None)
        commit_message = kwargs.pop("commit_message", None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("private", "revision", "create_pr") if k in kwargs}
        kwargs.pop("use_auth_token", None)
        if kwargs:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {sorted(kwargs)}")
        params = params if params is not None else self.params
        flat = {".".join(k): v for k, v in flatten_dict(unfreeze(params)).items()}

        # As transformers' Flax models record themselves: the class name without its "Flax" prefix.
        self.config.architectures = [type(self).__name__[4:]]

        def write(folder: str) -> None:
            ckpt.save_weights(folder, flat, safe_serialization=safe_serialization, max_shard_size=max_shard_size)
            self._save_extras(folder, repo_id=repo_id)
            self.config.save_pretrained(folder)

        written = ckpt.write_checkpoint(save_directory, write)
        if push_to_hub:
            from .hub import upload_folder

            upload_folder(
                save_directory,
                repo_id or os.path.basename(os.path.abspath(save_directory)),
                files=written,
                commit_message=commit_message,
                token=token,
                **hub_kwargs,
            )

    def _save_extras(self, folder: str, repo_id: str | None) -> None:
        """Write what the model ships with besides config and weights (sub-classes: processor, model card)."""

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        **kwargs,
    ):
        """Upload the model (as ``save_pretrained`` writes it) to the Hub repo ``repo_id``, creating it if needed."""
        from .hub import upload_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(
                tmp, safe_serialization=safe_serialization, max_shard_size=max_shard_size, repo_id=repo_id
            )
            files = sorted(n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n)))
            return upload_folder(
                tmp,
                repo_id,
                files=files,
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )


def _scan_checkpoint(location: ckpt.CheckpointLocation) -> dict[tuple, Any]:
    """A checkpoint's tensors as its index and headers describe them; non-float dtypes are refused."""
    weights = location.weights()
    state = ckpt.scan_weights(weights)
    ckpt.check_dtypes(state, source=weights.describe())
    return state


def _abbrev(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


if _TransformersFlaxPreTrainedModel is not None:

    class FlaxPreTrainedModel(_FlaxPreTrainedModel, _TransformersFlaxPreTrainedModel):
        __doc__ = _FlaxPreTrainedModel.__doc__

else:

    class FlaxPreTrainedModel(_FlaxPreTrainedModel):
        __doc__ = _FlaxPreTrainedModel.__doc__
