"""Where the named variants live: one ``<name>.json`` per variant in the ``configs/`` folder.

In a source checkout the folder is ``<repo>/configs``; an installed wheel carries the same files as
``hf_vit_flax/configs`` (the packaging maps one to the other). Every family that ships variant files
(timm architectures, ``crossformer-*`` ...) finds them through :func:`variant_config_path`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """The folder of variant files: ``hf_vit_flax/configs`` when installed, else ``<repo>/configs``."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no configs folder next to the package ({_PACKAGE_DIR / 'configs'}) or in the source tree "
        f"({_PACKAGE_DIR.parent / 'configs'}); reinstall hf-vit-flax"
    )


def variant_names(prefix: str = "") -> list[str]:
    """Names (file names without ``.json``) of the shipped variants starting with ``prefix``, sorted."""
    return sorted(p.stem for p in configs_dir().glob(f"{prefix}*.json"))


def variant_config_path(name: str) -> Path:
    """The json file of variant ``name`` (e.g. ``"deit3_small_patch16_224"``, ``"crossformer-tiny"``).

    Raises ``FileNotFoundError`` naming the closest shipped variants when there is none.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid variant name {name!r}")
    path = configs_dir() / f"{name.removesuffix('.json')}.json"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(name, variant_names(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FileNotFoundError(f"no variant named {name!r} in {configs_dir()}{hint}")
    return path


def read_variant(name: str) -> dict[str, Any]:
    """The parsed json of variant ``name``."""
    with open(variant_config_path(name), encoding="utf-8") as f:
        return json.load(f)


def variant_config(name: str, **overrides: Any):
    """The config of variant ``name``, of the family its ``model_type`` names; ``overrides`` are config
    arguments. The file's other sections (``timm``: the reference's tags, ``architectures``) are not config."""
    from .families import FAMILIES

    data = read_variant(name)
    model_type = data.pop("model_type", None)
    fields = {k: v for k, v in data.items() if k not in ("timm", "architectures")}
    for family in FAMILIES.values():
        if family.config_class.model_type == model_type:
            return family.config_class.from_dict({**fields, **overrides})
    raise ValueError(f"{variant_config_path(name)} has model_type {model_type!r}, of no family of hf_vit_flax")
