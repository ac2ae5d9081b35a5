"""Checkpoint sources as the command line and the publishing pipeline name them.

``timm:<name>[.<tag>]``   a timm model on the Hub (``timm/<name>``), converted without torch
``transformers:<repo-or-path>``  a checkpoint in transformers' own format (``google/vit-base-patch16-224``,
                          ``facebook/deit-base-distilled-patch16-224``, or a local folder of one)
``crossformer:<path>``    an original CrossFormer release checkpoint (``.pth``), with a variant t|s|b|l
                          or a config (a JSON file: the release's constructor arguments, or our config.json)
``<path>``                a local timm-format folder (config.json + weights) or weights file; a local folder
                          whose config.json is transformers' (model_type ``vit``, ``deit``) is a transformers source
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .modeling_utils import FlaxVisionPreTrainedModel

# The prefixes that name a source's format: ``timm:<name>``, ``transformers:<repo>``, ``crossformer:<path>``.
PREFIXES = ("timm", "transformers", "crossformer")


def is_prefixed(spec: str) -> bool:
    """Whether ``spec`` names its format with one of :data:`PREFIXES` (``timm:vit_tiny_patch16_224`` ...)."""
    kind, sep, _ = spec.partition(":")
    return bool(sep) and kind in PREFIXES


@dataclass(frozen=True)
class Source:
    kind: str  # "timm" | "transformers" | "crossformer" | "local"
    location: str
    variant: str | None = None
    architecture: str | None = None
    image_size: int | None = None
    config: str | None = None  # CrossFormer: a JSON config file instead of a released variant

    @classmethod
    def parse(cls, spec: str, *, variant=None, architecture=None, image_size=None, config=None) -> Source:
        kind, _, rest = spec.partition(":")
        if is_prefixed(spec):
            if kind == "crossformer" and not (variant or config):
                raise ValueError(
                    "a crossformer: source needs --variant t|s|b|l (CrossFormer-T/S/B/L) or --config CONFIG.json"
                )
            return cls(kind, rest, variant, architecture, image_size, config)
        kind = "transformers" if _is_transformers_folder(spec) else "local"
        return cls(kind, spec, variant, architecture, image_size, config)

    def convert(self) -> FlaxVisionPreTrainedModel:
        if self.kind == "crossformer":
            from . import from_crossformer_checkpoint

            if self.image_size is not None:
                raise ValueError("--image-size applies to timm ViT-family checkpoints, not to CrossFormer")
            return from_crossformer_checkpoint(self.location, self._crossformer_config())
        if self.kind == "transformers":
            from .transformers_weights import from_transformers

            if self.image_size is not None or self.architecture:
                raise ValueError(
                    "--image-size and --architecture apply to timm checkpoints; a transformers checkpoint's "
                    "config.json says both"
                )
            return from_transformers(self.location)
        from .timm_weights import from_timm

        if self.kind == "local" and not os.path.exists(self.location):
            raise FileNotFoundError(
                f"{self.location} does not exist (a local timm checkpoint folder or weights file); "
                f"a timm checkpoint on the Hub is written timm:<name>[.<tag>]"
            )
        kwargs: dict[str, Any] = {}
        if self.image_size is not None:
            kwargs["image_size"] = self.image_size
        if self.architecture:
            kwargs["architecture"] = self.architecture
        return from_timm(self.location, **kwargs)

    def _crossformer_config(self):
        if self.config is None:
            return f"crossformer-{self.variant.lower()}"
        from . import CrossFormerConfig
        from .checkpoint import read_json

        if not os.path.isfile(self.config):
            raise FileNotFoundError(f"the CrossFormer config {self.config} does not exist")
        data = read_json(self.config, "the CrossFormer config")
        if not isinstance(data, dict):
            raise ValueError(
                f"the CrossFormer config {self.config} holds a JSON {type(data).__name__}, not an object: expected an "
                f"object of the release's constructor arguments, or a config.json written by save_pretrained"
            )
        # Our config.json names its model_type; anything else is the release's constructor arguments.
        return CrossFormerConfig.from_dict(data) if "model_type" in data else data

    def local_files(self) -> list[str]:
        """The local files and folders this source reads (none for a Hub source)."""
        if self.kind == "timm" or (self.kind == "transformers" and not os.path.exists(self.location)):
            return []
        return [self.location] + ([self.config] if self.config else [])

    def verify(self, model: FlaxVisionPreTrainedModel) -> float:
        """Max |logits difference| against the original (timm needs torch and timm installed)."""
        if self.kind == "crossformer":
            raise NotImplementedError(
                "the original CrossFormer code is not an installable package, so it cannot be run here; "
                "the converter's parity is established by the test suite against recorded reference outputs"
            )
        if self.kind == "transformers":
            from .verify import verify_transformers

            return verify_transformers(model, self.location)
        from .verify import verify_timm

        return verify_timm(model, self.location, architecture=self.architecture, image_size=self.image_size)

    def revision(self) -> str | None:
        """An identifier of the source's current contents (Hub commit or file hash), to skip unchanged work."""
        import hashlib

        if self.kind == "timm":
            from huggingface_hub import HfApi

            from .timm_weights import timm_hub_source

            repo_id = timm_hub_source(self.location)[1]
            return HfApi().model_info(repo_id).sha
        if self.kind == "transformers" and not os.path.exists(self.location):
            from huggingface_hub import HfApi

            return HfApi().model_info(self.location).sha
        path = self.location
        files = [os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
        digest = hashlib.sha256()
        for name in files:
            if os.path.isfile(name):
                with open(name, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()


def _is_transformers_folder(path: str) -> bool:
    """A local folder whose config.json is transformers' own, of a model type a family converts."""
    from .checkpoint import folder_model_type
    from .families import FAMILIES

    converted = {t for family in FAMILIES.values() for t in family.transformers_model_types}
    return folder_model_type(path) in converted
