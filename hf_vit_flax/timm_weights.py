"""timm checkpoints -> the Flax classes, for every family that registers timm support.

A family's row in ``families.FAMILIES`` names the timm architecture prefixes it converts
(``timm_prefixes``), reads a config off a live timm model (``config_from_timm``) and maps a timm
state dict to its params (``convert_timm``). This module only dispatches over those three fields,
so it never imports a family's module, nor torch or timm (except lazily, for a live module or a
``.pth`` file).

Without torch, the config of an architecture comes from the shipped variant table
(``configs/<architecture>.json``, written by ``conversion/make_configs.py`` from timm itself): its
family's config, plus a ``"timm"`` section with the reference parameter count and the pretrained
tags (Hub repo, input size, mean, std, crop_pct, interpolation, license).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import read_json
from .configuration_utils import VisionTransformerConfig, positive_size
from .conversion_utils import read_state_dict, timm_normalization, to_numpy
from .families import FAMILIES, Family
from .hub import looks_like_path
from .modeling_utils import FlaxVisionPreTrainedModel
from .variants import read_variant, variant_config, variant_names
from .weight_tables import WeightMismatchError

__all__ = ["from_timm", "imagenet_labels", "list_timm_models", "load_variant_config", "timm_variant_info"]

HUB_ORG = "timm"
UNSUPPORTED_FILE = "_timm_unsupported"  # configs/_timm_unsupported.json: {architecture: why}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")
_ASSETS = Path(__file__).resolve().parent / "assets"

# timm's ImageNet subsets by head size (timm.data.imagenet_info); the lists are in assets/.
IMAGENET_SUBSETS = {
    1000: "imagenet-1k",
    11221: "imagenet-21k-miil",
    11821: "imagenet-12k",
    21841: "imagenet-22k",
    21842: "imagenet-22k-ms",
    21843: "imagenet-21k-goog",
}

_TIMM_BIBTEX = """@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""

# The paper of each architecture prefix (the model cards cite it next to timm).
CITATIONS = {
    "vit_": """@inproceedings{dosovitskiy2021an,
  title = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author = {Alexey Dosovitskiy and Lucas Beyer and Alexander Kolesnikov and Dirk Weissenborn and Xiaohua Zhai and
            Thomas Unterthiner and Mostafa Dehghani and Matthias Minderer and Georg Heigold and Sylvain Gelly and
            Jakob Uszkoreit and Neil Houlsby},
  booktitle = {International Conference on Learning Representations},
  year = {2021}
}""",
    "deit_": """@inproceedings{touvron2021training,
  title = {Training data-efficient image transformers \\& distillation through attention},
  author = {Hugo Touvron and Matthieu Cord and Matthijs Douze and Francisco Massa and Alexandre Sablayrolles and
            Herv\\'e J\\'egou},
  booktitle = {International Conference on Machine Learning},
  year = {2021}
}""",
    "deit3_": """@inproceedings{touvron2022deit,
  title = {DeiT III: Revenge of the ViT},
  author = {Hugo Touvron and Matthieu Cord and Herv\\'e J\\'egou},
  booktitle = {European Conference on Computer Vision},
  year = {2022}
}""",
    "cait_": """@inproceedings{touvron2021going,
  title = {Going deeper with Image Transformers},
  author = {Hugo Touvron and Matthieu Cord and Alexandre Sablayrolles and Gabriel Synnaeve and Herv\\'e J\\'egou},
  booktitle = {IEEE/CVF International Conference on Computer Vision},
  year = {2021}
}""",
    "crossvit_": """@inproceedings{chen2021crossvit,
  title = {CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification},
  author = {Chun-Fu Chen and Quanfu Fan and Rameswar Panda},
  booktitle = {IEEE/CVF International Conference on Computer Vision},
  year = {2021}
}""",
}


# -- the variant table ------------------------------------------------------------------------------


def timm_family(architecture: str) -> Family:
    """The family whose ``timm_prefixes`` match ``architecture`` (the longest prefix wins)."""
    best: tuple[int, Family] | None = None
    for family in FAMILIES.values():
        for prefix in family.timm_prefixes:
            if architecture.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), family)
    if best is None:
        prefixes = sorted(p for f in FAMILIES.values() for p in f.timm_prefixes)
        raise NotImplementedError(
            f"timm architecture {architecture!r} belongs to no hf_vit_flax family (converted prefixes: "
            f"{', '.join(prefixes)}); see hf_vit_flax.list_timm_models()"
        )
    if best[1].config_from_timm is None or best[1].convert_timm is None:
        raise NotImplementedError(f"the {best[1].name} family does not convert timm checkpoints yet")
    return best[1]


@functools.lru_cache(maxsize=1)
def _unsupported() -> dict[str, str]:
    try:
        return read_variant(UNSUPPORTED_FILE)
    except FileNotFoundError:
        return {}


def timm_variant_info(architecture: str) -> dict[str, Any]:
    """The ``"timm"`` section of ``configs/<architecture>.json``: ``reference_num_params``, ``pretrained`` tags ...

    Raises ``NotImplementedError`` for an architecture the table does not hold, naming why when
    the table generator recorded a reason (e.g. "attention pooling 'map'").
    """
    architecture = architecture.split(".", 1)[0]
    try:
        data = read_variant(architecture)
    except (FileNotFoundError, ValueError):
        data = None
    if data is None or "timm" not in data:
        reason = _unsupported().get(architecture)
        if reason:
            raise NotImplementedError(f"timm {architecture} is not supported: {reason}") from None
        timm_family(architecture)  # raises for a prefix no family converts
        raise NotImplementedError(
            f"timm architecture {architecture!r} is not in the variant table (configs/); convert a live timm "
            f"module instead (hf_vit_flax.from_timm(timm.create_model(...))) or see hf_vit_flax.list_timm_models()"
        ) from None
    return data["timm"]


def load_variant_config(architecture: str, **overrides: Any) -> VisionTransformerConfig:
    """The config of timm ``architecture`` (a name such as ``"deit3_small_patch16_224"``; a ``.tag`` is ignored).

    Built from ``configs/<architecture>.json`` with the family's config class; ``overrides`` are
    config arguments (e.g. ``image_size=384``).
    """
    architecture = architecture.split(".", 1)[0]
    timm_variant_info(architecture)
    return variant_config(architecture, **overrides)


def list_timm_models(pretrained: bool = False, prefix: str = "") -> list[str]:
    """The timm architectures ``from_timm`` converts without torch (the variant table), sorted.

    With ``pretrained=True``: one ``"<architecture>.<tag>"`` per pretrained tag timm lists for them.
    """
    names = []
    for architecture in _timm_architectures():
        if not architecture.startswith(prefix):
            continue
        if pretrained:
            names += [f"{architecture}.{tag}" for tag in timm_variant_info(architecture).get("pretrained", {})]
        else:
            names.append(architecture)
    return names


@functools.lru_cache(maxsize=1)
def _timm_architectures() -> tuple[str, ...]:
    prefixes = tuple(p for f in FAMILIES.values() for p in f.timm_prefixes)
    return tuple(n for n in variant_names() if n.startswith(prefixes) and "timm" in read_variant(n))


# -- labels and preprocessing -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _imagenet_rows(subset: str) -> tuple[tuple[str, str], ...]:
    with gzip.open(_ASSETS / f"{subset}.tsv.gz", "rt", encoding="utf-8") as f:
        return tuple(tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip())


def imagenet_labels(num_classes: int) -> list[str] | None:
    """Class names (WordNet lemmas, ``"tench, Tinca tinca"``) of timm's ImageNet subset with ``num_classes``
    classes (1k, 12k, 21k/22k variants), or ``None`` for another head size."""
    subset = IMAGENET_SUBSETS.get(int(num_classes))
    return [description for _, description in _imagenet_rows(subset)] if subset else None


def _labels(num_classes: int, label_names=None, label_descriptions=None) -> list[str] | None:
    """Labels of a head: the checkpoint's own names when it has them, else timm's ImageNet lists."""
    if label_names is not None:
        names = (
            [label_names[i] for i in sorted(label_names, key=int)]
            if isinstance(label_names, dict)
            else list(label_names)
        )
        if len(names) == num_classes:
            if label_descriptions:
                return [label_descriptions.get(n, n) for n in names]
            # Synsets of a known ImageNet subset read better as their lemmas.
            subset = IMAGENET_SUBSETS.get(num_classes)
            if subset and [s for s, _ in _imagenet_rows(subset)] == names:
                return imagenet_labels(num_classes)
            return [str(n) for n in names]
    return imagenet_labels(num_classes)


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def image_processor_from_pretrained_cfg(pretrained_cfg: Mapping[str, Any], image_size=None):
    """timm's evaluation transform as a transformers image processor.

    timm resizes to ``floor(size / crop_pct)`` and center-crops to ``size`` (``crop_mode='center'``:
    the shortest edge, keeping the aspect ratio; ``'squash'``: both edges), with ``interpolation``,
    then normalises with ``mean`` / ``std``. ``ViTImageProcessor`` cannot crop, so the processor is
    transformers' ``BitImageProcessor`` (shortest edge, then center crop) or, for ``'squash'`` and
    non-square inputs, ``DeiTImageProcessor`` (both edges, then center crop); ``image_size``
    overrides the input size.
    """
    from .image_processing import image_processor_class

    height, width = (
        _hw(image_size) if image_size is not None else tuple(pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    )
    crop_pct = float(pretrained_cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    interpolation = pretrained_cfg.get("interpolation") or "bicubic"
    common = dict(
        do_resize=True,
        resample=_RESAMPLE.get(interpolation, 3),
        do_center_crop=True,
        crop_size={"height": int(height), "width": int(width)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(pretrained_cfg.get("mean") or (0.485, 0.456, 0.406)),
        image_std=list(pretrained_cfg.get("std") or (0.229, 0.224, 0.225)),
    )
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if pretrained_cfg.get("crop_mode", "center") == "center" and scale[0] == scale[1]:
        return image_processor_class("BitImageProcessor")(
            size={"shortest_edge": scale[0]}, do_convert_rgb=True, **common
        )
    return image_processor_class("DeiTImageProcessor")(size={"height": scale[0], "width": scale[1]}, **common)


def _check_image_size(size) -> None:
    pair = size if isinstance(size, (list, tuple)) else (size, size)
    if len(pair) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"image_size must be a positive integer or a (height, width) pair of them, got {size!r}")


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


# -- reading checkpoints --------------------------------------------------------------------------------


def _read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A timm state dict from ``.safetensors`` (no torch) or ``.pth`` / ``.bin`` / ``.pt`` (torch, weights only)."""
    return {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}


def _read_local(path: Path) -> tuple[dict, dict[str, np.ndarray], str]:
    """(timm config.json or {}, state dict, weights file) of a local folder or file."""
    if path.is_dir():
        config_path = path / "config.json"
        weights = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not weights:
            found = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(f"{path} holds no timm weights ({', '.join(WEIGHT_FILES)}); found {found}")
        weights_path = weights[0]
    else:
        config_path, weights_path = path.parent / "config.json", path
    hub_config = {}
    if config_path.is_file():
        candidate = read_json(config_path)
        if isinstance(candidate, dict) and "architecture" in candidate:  # a timm config, not e.g. a transformers one
            hub_config = candidate
    return hub_config, _read_weights(weights_path), str(weights_path)


def fetch_json(repo_id: str, filename: str, hub_kwargs: dict) -> dict:
    """A JSON object file of a Hub repo (``config.json`` ...), through huggingface_hub (its cache, offline
    mode, ``revision``, ``token`` ... in ``hub_kwargs``)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, filename, **hub_kwargs)
    except Exception as err:  # huggingface_hub's errors do not always name the repo
        raise OSError(
            f"could not fetch {filename} of the Hub repo {repo_id} (offline, it must be cached): {err}"
        ) from err
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"the {filename} of the Hub repo {repo_id} ({path}) is not a JSON object")
    return data


def fetch_first(repo_id: str, names: tuple[str, ...], hub_kwargs: dict, what: str = "weights") -> tuple[str, str]:
    """``(name, local path)`` of the first of ``names`` that the Hub repo has (or, offline, that is cached).

    Raises ``FileNotFoundError`` saying why each one could not be fetched.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    errors = []
    for name in names:
        try:
            return name, hf_hub_download(repo_id, name, **hub_kwargs)
        except EntryNotFoundError as err:  # includes "not in the local cache" when offline
            errors.append(f"{name}: {str(err).splitlines()[0]}")
    raise FileNotFoundError(f"no {what} of the Hub repo {repo_id} could be found: " + "; ".join(errors))


def _download(repo_id: str, hub_kwargs: dict) -> tuple[dict, dict[str, np.ndarray], str]:
    hub_config = fetch_json(repo_id, "config.json", hub_kwargs)
    _, weights_path = fetch_first(repo_id, WEIGHT_FILES, hub_kwargs)
    return hub_config, _read_weights(weights_path), repo_id


def timm_hub_source(source: str) -> tuple[str, str]:
    """(architecture, Hub repo id) of a timm source on the Hub: a repo id (``"timm/arch.tag"``) or a name,
    ``"arch"`` or ``"arch.tag"`` (the default tag is timm's first). Every timm source resolves here."""
    if "/" in source:
        return source.split("/", 1)[1].split(".")[0], source
    architecture, _, tag = source.partition(".")
    tags = timm_variant_info(architecture).get("pretrained", {})
    if not tag:
        if not tags:
            raise ValueError(f"timm lists no pretrained weights for {architecture}; give a local checkpoint")
        tag = next(iter(tags))
    elif tag not in tags:
        raise ValueError(f"timm has no pretrained tag {tag!r} for {architecture}; tags: {', '.join(tags) or 'none'}")
    hub_id = (tags[tag].get("hf_hub_id") or f"{HUB_ORG}/").rstrip("/")
    repo_id = hub_id if "/" in hub_id else f"{hub_id}/{architecture}.{tag}"
    return architecture, repo_id


def is_torch_module(source: Any) -> bool:
    return hasattr(source, "state_dict") and hasattr(source, "named_parameters") and not isinstance(source, Mapping)


def _module_family(module: Any) -> tuple[str | None, Family]:
    """(architecture name or None, family) of a live timm model.

    The name comes from the model's ``pretrained_cfg`` (set by ``timm.create_model``); a model built
    from its class directly has none, and its family is that of the architectures timm registers
    in the file its class comes from (``timm.models.deit`` -> ``deit_*`` ...).
    """
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    if cfg.get("architecture"):
        return cfg["architecture"], timm_family(cfg["architecture"])
    import timm  # a live timm module: timm is installed

    module_name = type(module).__module__.rsplit(".", 1)[-1]
    for architecture in timm.list_models(module=module_name):
        try:
            return None, timm_family(architecture)
        except NotImplementedError:
            continue
    raise NotImplementedError(
        f"{type(module).__module__}.{type(module).__name__} is not a model of a family hf_vit_flax converts; "
        f"pass architecture= if it is one"
    )


# -- the entry point ------------------------------------------------------------------------------------


def from_timm(source: Any, **overrides: Any) -> FlaxVisionPreTrainedModel:
    """Convert a timm model to the matching ``Flax<Family>ForImageClassification`` (no torch needed for (a), (b)).

    Args:
        source: one of
            (a) a timm model name with or without a pretrained tag,
                ``"deit3_small_patch16_224.fb_in22k_ft_in1k"``: the Hub repo ``timm/<name>``
                (``config.json`` + ``model.safetensors``) is fetched with ``huggingface_hub``
                (the offline cache is honoured) and converted with the architecture's config from
                the shipped variant table;
            (b) a local folder in that format, or a weights file (``.safetensors``; ``.pth`` /
                ``.bin`` with torch installed), with ``architecture=`` when no timm ``config.json``
                sits next to it;
            (c) a live timm ``torch.nn.Module`` (its config is read off the module).
        overrides: ``architecture=`` (for (b)); ``image_size=`` (a new resolution: the absolute
            position embeddings are resampled as timm does, bicubic with antialiasing);
            ``num_classes=0`` (drop the classifier, return the backbone); ``revision=``,
            ``cache_dir=``, ``token=``, ``local_files_only=`` (Hub); any other keyword is a
            config attribute (e.g. ``drop_path_rate=0.1``).

    Returns the model with ``config.id2label`` (the checkpoint's label names, else timm's ImageNet
    class names for 1k / 12k / 21k / 22k heads), ``model.image_processor`` (timm's evaluation
    transform: resize to size / crop_pct, center crop, mean / std) and ``model.card_data``.

    Raises ``NotImplementedError`` (naming what is missing) for an architecture no family
    expresses, and ``ValueError`` (naming the keys) for a checkpoint that does not match it.
    """
    architecture = overrides.pop("architecture", None)
    image_size = overrides.pop("image_size", None)
    if image_size is not None:  # before any download; the config checks it again with the rest
        positive_size("image_size", image_size)
    num_classes_override = overrides.pop("num_classes", None)
    hub_kwargs = {k: overrides.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in overrides}

    if image_size is not None:
        _check_image_size(image_size)
    if isinstance(source, os.PathLike | str) and not os.path.exists(source) and looks_like_path(os.fspath(source)):
        raise FileNotFoundError(f"{os.fspath(source)} does not exist (no such local file or folder)")

    pretrained_cfg: dict[str, Any] = {}
    hub_config: dict[str, Any] = {}
    local_file = None
    if is_torch_module(source):
        if architecture:
            family = timm_family(architecture)
        else:
            architecture, family = _module_family(source)
        config = family.config_from_timm(source)
        pretrained_cfg = dict(getattr(source, "pretrained_cfg", None) or {})
        state_dict = to_numpy(source.state_dict())
        tag = f".{pretrained_cfg['tag']}" if pretrained_cfg.get("tag") else ""
        origin = f"timm {architecture or type(source).__name__}{tag} (a live timm module)"
    elif isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        hub_config, state_dict, origin = _read_local(Path(source))
        local_file = origin
        architecture = architecture or hub_config.get("architecture")
        if not architecture:
            raise ValueError(
                f"{source} does not say which timm architecture it holds (no timm config.json next to it): "
                f"pass architecture=, e.g. from_timm({str(source)!r}, architecture='deit_small_patch16_224')"
            )
        family, config = timm_family(architecture), load_variant_config(architecture)
    elif isinstance(source, str):
        # Not a local path: a Hub repo id or a timm name, whose errors also say that no such path exists
        # (what a mistyped relative path, such as "ckpt/vit", would be).
        not_local = f" (and no local file or folder {source!r} exists)"
        if "/" in source:  # "timm/<name>" or a full Hub id of a timm-format repo: its config.json says what
            repo_id = source
            try:
                hub_config, state_dict, origin = _download(repo_id, hub_kwargs)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{err}{not_local}") from err
            except OSError as err:
                raise OSError(f"{err}{not_local}") from err
            architecture = architecture or hub_config.get("architecture") or timm_hub_source(source)[0]
            family, config = timm_family(architecture), load_variant_config(architecture)
        else:
            # The requested architecture wins over the repo's: timm shares one repo between
            # architectures that differ only in what config.json does not record (e.g. QuickGELU).
            try:
                architecture, repo_id = timm_hub_source(source)
            except NotImplementedError as err:
                raise NotImplementedError(f"{err}{not_local}") from err
            family, config = timm_family(architecture), load_variant_config(architecture)
            hub_config, state_dict, origin = _download(repo_id, hub_kwargs)
    else:
        raise TypeError(
            f"from_timm takes a timm model name, a local folder or file, or a timm nn.Module; got {type(source).__name__}"
        )

    if hub_config:
        # Older exports keep the pretrained_cfg fields at the top level (timm reads both).
        legacy = {k: v for k, v in hub_config.items() if k not in ("architecture", "num_features", "model_args")}
        pretrained_cfg = {**(hub_config.get("pretrained_cfg") or legacy), "architecture": architecture}
        if "labels" in pretrained_cfg:
            pretrained_cfg.setdefault("label_names", pretrained_cfg.pop("labels"))
        config = _apply_hub_config(family, architecture, config, hub_config, state_dict)
    elif not is_torch_module(source):
        config = _with_head_from_weights(config, state_dict)
        pretrained_cfg = _default_pretrained_cfg(architecture)

    if num_classes_override is not None:
        check_num_classes_override(num_classes_override)
        classifier = pretrained_cfg.get("classifier") or "head"
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(tuple(f"{c}." for c in classifier))}
        config = replace_config(config, num_classes=0)
    if image_size is not None:
        config = replace_config(config, image_size=image_size)
    config = apply_overrides(config, overrides, "from_timm")

    labels = _labels(
        config.num_labels,
        hub_config.get("label_names") or pretrained_cfg.get("label_names"),
        hub_config.get("label_descriptions") or pretrained_cfg.get("label_descriptions"),
    )
    if labels and config.num_labels > 0:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    normalization = timm_normalization(pretrained_cfg, config.channels)
    if normalization["image_mean"] is not None:
        config.image_mean, config.image_std = normalization["image_mean"], normalization["image_std"]

    model = model_from_weights(
        family,
        family.convert_timm,
        state_dict,
        config,
        f"{origin} does not match timm {architecture}",
        hint=". Is it a checkpoint of another architecture? Pass architecture= to say which.",
    )
    # timm's evaluation transform at the size the model takes (timm's defaults where nothing is recorded).
    # The statistics the config holds: timm's when they fit the input channels, else the config's default.
    processor_kwargs = config.image_processor_kwargs()
    statistics = {"mean": processor_kwargs["image_mean"], "std": processor_kwargs["image_std"]}
    model.image_processor = image_processor_from_pretrained_cfg({**pretrained_cfg, **statistics}, config.image_size_hw)
    model.card_data = _card_data(architecture, pretrained_cfg, origin, local_file)
    return model


def model_from_weights(
    family: Family,
    convert,
    state_dict: Mapping[str, np.ndarray],
    config: VisionTransformerConfig,
    mismatch: str,
    hint: str = "",
) -> FlaxVisionPreTrainedModel:
    """``family``'s classifier (its base model when ``config.num_labels == 0``) holding ``convert(state_dict,
    config)``; weights that do not fit raise a ValueError: ``mismatch``, the converter's reason, ``hint``."""
    try:
        params = convert(state_dict, config)
    except (KeyError, WeightMismatchError) as err:
        raise ValueError(f"{mismatch}: {str(err.args[0] if err.args else err).rstrip('.')}{hint}") from err
    model_class = family.classifier_class if config.num_labels > 0 else family.model_class
    return model_class.from_params(config, params)


def check_num_classes_override(num_classes: Any) -> None:
    """``num_classes=`` of a conversion drops the classifier; any other head would be new weights."""
    if int(num_classes) != 0:
        raise ValueError("num_classes= can only be 0 (drop the classifier); a new head is not a conversion")


def apply_overrides(config: VisionTransformerConfig, overrides: Mapping[str, Any], caller: str):
    """``config`` with the config attributes a conversion's caller passed; a TypeError names the others."""
    if not overrides:
        return config
    unknown = [k for k in overrides if not hasattr(config, k)]
    if unknown:
        raise TypeError(f"{caller} got unknown keyword arguments {unknown} (not attributes of {type(config).__name__})")
    return replace_config(config, **overrides)


def replace_config(config: VisionTransformerConfig, **changes: Any) -> VisionTransformerConfig:
    """A copy of ``config`` with ``changes``, validated again (rebuilt through the constructor)."""
    data = config.to_dict()
    for key in ("id2label", "label2id", "num_labels"):
        data.pop(key, None)
    if "num_classes" not in changes:
        changes = {"num_classes": config.num_labels, **changes}
    return type(config).from_dict({**data, **changes})


def _apply_hub_config(
    family: Family, architecture: str, config: VisionTransformerConfig, hub_config: Mapping, state_dict: Mapping
) -> VisionTransformerConfig:
    """The config of a timm-format ``config.json``: its head size and ``model_args`` on top of the variant's.

    ``num_classes``, ``img_size`` and ``in_chans`` are applied to the variant config (dropout rates
    only matter in training and are left out). Other ``model_args`` (a different depth, width,
    pooling ...) change the architecture: timm is then asked to build the model on the meta device
    and the family reads the config off it (this needs timm and torch).
    """
    model_args = dict(hub_config.get("model_args") or {})
    if hub_config.get("num_classes") is not None:
        model_args.setdefault("num_classes", hub_config["num_classes"])
    simple = {"num_classes": "num_classes", "img_size": "image_size", "in_chans": "channels"}
    # timm exports record e.g. global_pool even when it is the architecture's default.
    defaults = {"global_pool": timm_variant_info(architecture).get("global_pool")}
    structural = sorted(
        k
        for k in model_args
        if k not in simple and not k.endswith("drop_rate") and not (k in defaults and model_args[k] == defaults[k])
    )
    if structural:
        return _config_from_model_args(family, architecture, model_args, structural)
    changes = {ours: model_args[theirs] for theirs, ours in simple.items() if theirs in model_args}
    if "num_classes" not in changes:
        return _with_head_from_weights(replace_config(config, **changes) if changes else config, state_dict)
    return replace_config(config, **changes)


def _config_from_model_args(family: Family, architecture: str, model_args: dict, structural: list[str]):
    try:
        import timm
        import torch
    except ImportError as err:
        raise NotImplementedError(
            f"this {architecture} checkpoint was saved with timm model_args {structural}, which change the "
            f"architecture; reading them needs timm (pip install timm torch)"
        ) from err
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, **model_args)
    except Exception as err:  # an unknown argument (TypeError) or a value timm rejects
        raise ValueError(
            f"the checkpoint's timm config.json has model_args that timm {architecture} cannot be built with "
            f"({type(err).__name__}: {err}); fix or remove them"
        ) from err
    return family.config_from_timm(model)


def _with_head_from_weights(config: VisionTransformerConfig, state_dict: Mapping) -> VisionTransformerConfig:
    """The head size of the weights (``head.weight``), or no head when they have none."""
    head = state_dict.get("head.weight")
    if head is None:
        head = state_dict.get("head.0.weight")  # e.g. CrossViT's per-branch heads
    num_classes = int(np.shape(head)[0]) if head is not None else 0
    return config if num_classes == config.num_labels else replace_config(config, num_classes=num_classes)


def _default_pretrained_cfg(architecture: str) -> dict[str, Any]:
    tags = timm_variant_info(architecture).get("pretrained", {})
    return dict(next(iter(tags.values()))) if tags else {}


def _card_data(
    architecture: str | None, pretrained_cfg: Mapping[str, Any], origin: str, local_file: str | None = None
) -> dict[str, Any]:
    """What the model card says of a conversion (see ``hub.model_card``).

    A local weights file is named by its file name and sha256 only: the card is published, and the
    folders above the file are the converting user's own.
    """
    tag = pretrained_cfg.get("tag") or ""
    citation = next(
        (
            c
            for p, c in sorted(CITATIONS.items(), key=lambda i: -len(i[0]))
            if architecture and architecture.startswith(p)
        ),
        None,
    )
    data: dict[str, Any] = {
        "source": os.path.basename(local_file) if local_file else origin,
        "tags": ["timm"] + ([architecture] if architecture else []),
        "citation": "\n\n".join(c for c in (citation, _TIMM_BIBTEX) if c),
        "title": f"{architecture}.{tag}" if tag else architecture,
    }
    if local_file:
        data["source_sha256"] = file_sha256(local_file)
    if pretrained_cfg.get("license"):
        data["license"] = pretrained_cfg["license"]
    datasets = [
        name
        for key, name in (
            ("in1k", "imagenet-1k"),
            ("in21k", "imagenet-21k"),
            ("in22k", "imagenet-22k"),
            ("in12k", "imagenet-12k"),
        )
        if key in tag
    ]
    if datasets:
        data["datasets"] = datasets
    return data


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing a timm checkpoint ----------------------------------------------------------------------------


def _pretrained_cfg(model: FlaxVisionPreTrainedModel) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for the model's own preprocessing (size, resize ratio, filter, mean, std)."""
    config, processor = model.config, model.image_processor
    height, width = config.image_size_hw
    resize = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    if getattr(processor, "do_center_crop", False) and "shortest_edge" in resize:
        crop_pct, crop_mode = crop.get("height", height) / resize["shortest_edge"], "center"
    elif getattr(processor, "do_center_crop", False) and "height" in resize:
        crop_pct, crop_mode = crop.get("height", height) / resize["height"], "squash"
    else:
        crop_pct, crop_mode = 1.0, "squash"  # a plain resize to the input size
    filters = {v: k for k, v in _RESAMPLE.items()}
    return {
        "input_size": [config.channels, height, width],
        "interpolation": filters.get(int(getattr(processor, "resample", 3)), "bicubic"),
        "crop_pct": round(crop_pct, 4),
        "crop_mode": crop_mode,
        "mean": list(getattr(processor, "image_mean", None) or config.image_mean or [0.5] * config.channels),
        "std": list(getattr(processor, "image_std", None) or config.image_std or [0.5] * config.channels),
        "num_classes": config.num_labels,
    }


def save_timm(model: FlaxVisionPreTrainedModel, folder: str | os.PathLike) -> None:
    """Write ``model`` into ``folder`` as a timm checkpoint: ``config.json`` (architecture, ``model_args``,
    ``pretrained_cfg``, label names) and ``model.safetensors``, the layout timm's ``push_to_hf_hub``
    uploads, so ``timm.create_model("local-dir:" + folder, pretrained=True)`` (or ``hf-hub:`` once
    uploaded) builds the same model with these weights. The ``"timm"`` target of ``hf_vit_flax.export``,
    which writes the folder as a whole. Raises ``NotImplementedError`` naming what timm cannot express.
    """
    from safetensors.numpy import save_file

    from .families import family_of_config

    config = model.config
    family = family_of_config(config)
    if family.export_timm is None or family.timm_architecture is None:
        raise NotImplementedError(f"the {family.name} family has no timm counterpart to export to")
    architecture, model_args = family.timm_architecture(config)
    state_dict = family.export_timm(model.module_params()["params"], config)
    hub_config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": config.num_labels,
        "num_features": int(getattr(config, "dim", 0) or 0) or None,
        "global_pool": model_args.get("global_pool"),
        "model_args": model_args,
        "pretrained_cfg": _pretrained_cfg(model),
    }
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.num_labels > 0 else []
    if labels and any(label != f"LABEL_{i}" for i, label in enumerate(labels)):
        hub_config["label_names"] = labels
    hub_config = {k: v for k, v in hub_config.items() if v is not None}

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state_dict.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hub_config, f, indent=2)
