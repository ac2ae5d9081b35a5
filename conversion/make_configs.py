"""Write the variant table: ``configs/<timm architecture>.json`` for every timm architecture a family converts.

For each family row of ``hf_vit_flax.families.FAMILIES`` with ``timm_prefixes``, every architecture
``timm.list_models(prefix + "*")`` is built on the meta device (no memory, no weights), its config is
read with the family's ``config_from_timm``, and

    configs/<architecture>.json = the family's config (HF ``config.json`` fields, ``model_type`` first)
                                  + "timm": {
                                      "architecture", "family",
                                      "reference_num_params": timm's parameter count of this build,
                                      "global_pool": timm's default pooling (to read exported model_args),
                                      "pretrained": {tag: {hf_hub_id, input_size, interpolation, crop_pct,
                                                           crop_mode, mean, std, num_classes, license, ...}}
                                    }

is written (``hf_vit_flax.timm_weights.load_variant_config`` reads it back). Architectures a family does
not express (``config_from_timm`` raises ``NotImplementedError``) are listed, with the reason, in
``configs/_timm_unsupported.json``. The reference parameter count is checked here against the
Flax model (``jax.eval_shape``), and again by ``tests/test_configs.py``.

    python conversion/make_configs.py              # every family's prefixes
    python conversion/make_configs.py --prefix cait_ --prefix crossvit_
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
UNSUPPORTED = CONFIGS / "_timm_unsupported.json"

# What from_timm needs of a pretrained tag (the rest of timm's pretrained_cfg stays in timm).
PRETRAINED_KEYS = (
    "hf_hub_id",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "license",
    "classifier",
    "label_names",
    "label_descriptions",
)


def _json_value(value):
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def dumps(data: dict) -> str:
    """json with short lists of numbers on one line (``"input_size": [3, 224, 224]``)."""
    import re

    text = json.dumps(data, indent=2)
    return re.sub(
        r"\[\s*([-0-9.e, \n]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text
    )


def variant_dict(config) -> dict:
    """The config as constructor arguments of its class (``model_type`` first, no per-label maps)."""
    out = {"model_type": config.model_type}
    for cls in type(config).__mro__:
        if cls.__name__ == "PretrainedConfig":
            break
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in ("self", "kwargs") or param.kind is param.VAR_KEYWORD or name in out:
                continue
            if name == "style":  # a preset: the options it expands into are written instead
                continue
            value = config.num_labels if name == "num_classes" else getattr(config, name, param.default)
            if name in ("image_mean", "image_std") and value is None:
                continue
            out[name] = _json_value(value)
    return out


def pretrained_tags(architecture: str) -> dict:
    import timm
    from timm.models import get_pretrained_cfg

    tags = {}
    for name in timm.list_pretrained(f"{architecture}.*"):
        cfg = get_pretrained_cfg(name).to_dict()
        tags[name.split(".", 1)[1]] = {k: _json_value(cfg[k]) for k in PRETRAINED_KEYS if cfg.get(k) is not None}
    return tags


def flax_num_params(family, config) -> int:
    import jax
    import numpy as np

    model_class = family.classifier_class if config.num_labels > 0 else family.model_class
    model = model_class(config, _do_init=False)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(model.params_shape_tree)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", action="append", help="only these timm prefixes (default: every family's)")
    parser.add_argument("--no-check", action="store_true", help="skip the Flax parameter-count check")
    args = parser.parse_args(argv)

    import timm
    import torch

    sys.path.insert(0, str(ROOT))
    from hf_vit_flax.families import FAMILIES

    CONFIGS.mkdir(exist_ok=True)
    unsupported = json.loads(UNSUPPORTED.read_text()) if UNSUPPORTED.is_file() else {}
    report, failures = [], []
    for family in FAMILIES.values():
        if family.config_from_timm is None:
            continue
        for prefix in family.timm_prefixes:
            if args.prefix and prefix not in args.prefix:
                continue
            archs = timm.list_models(prefix + "*")
            stats = {"archs": len(archs), "archs_ok": 0, "tags": 0, "tags_ok": 0}
            for architecture in archs:
                tags = pretrained_tags(architecture)
                stats["tags"] += len(tags)
                try:
                    with torch.device("meta"):
                        model = timm.create_model(architecture)
                    config = family.config_from_timm(model)
                except NotImplementedError as err:
                    unsupported[architecture] = str(err).split(" does not express: ", 1)[-1]
                    (CONFIGS / f"{architecture}.json").unlink(missing_ok=True)
                    continue
                except Exception as err:  # noqa: BLE001  (a build failure is recorded, not fatal)
                    unsupported[architecture] = f"timm could not build it here ({type(err).__name__}: {err})"
                    continue
                unsupported.pop(architecture, None)
                num_params = int(sum(p.numel() for p in model.parameters()))
                if not args.no_check:
                    ours = flax_num_params(family, config)
                    if ours != num_params:
                        failures.append(f"{architecture}: flax {ours:,} parameters, timm {num_params:,}")
                        continue
                data = variant_dict(config)
                default = next(iter(tags.values()), {})
                if default.get("mean") and default.get("std"):  # the default tag's normalisation
                    data["image_mean"], data["image_std"] = default["mean"], default["std"]
                data["timm"] = {
                    "architecture": architecture,
                    "family": family.name,
                    "reference_num_params": num_params,
                    "global_pool": getattr(model, "global_pool", None),
                    "pretrained": tags,
                }
                (CONFIGS / f"{architecture}.json").write_text(dumps(data) + "\n")
                stats["archs_ok"] += 1
                stats["tags_ok"] += len(tags)
            report.append((prefix, stats))
    UNSUPPORTED.write_text(json.dumps(dict(sorted(unsupported.items())), indent=2) + "\n")
    for prefix, s in report:
        print(
            f"{prefix:<10} architectures {s['archs_ok']:>4}/{s['archs']:<4} pretrained tags {s['tags_ok']:>4}/{s['tags']}"
        )
    for failure in failures:
        print("PARAMETER COUNT MISMATCH", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
