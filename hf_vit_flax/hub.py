"""Model cards and uploads to the Hugging Face Hub.

transformers 4.x's ``push_to_hub`` writes a generic card (``library_name: transformers``) and
``save_pretrained(push_to_hub=True)`` uploads none, so the card is written here, with
``save_pretrained``, and uploads go through huggingface_hub directly.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import yaml

LIBRARY_NAME = "hf-vit-flax"
PROVENANCE_KEY = "hf_vit_flax_conversion"

PAPERS = {
    "vit_flax": ("An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", "2010.11929"),
    "cait_flax": ("Going deeper with Image Transformers", "2103.17239"),
    "crossvit_flax": (
        "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
        "2103.14899",
    ),
    "crossformer_flax": ("CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention", "2108.00154"),
}


def looks_like_path(name: str) -> bool:
    """Whether ``name``, which names nothing on disk, can only have meant a local file or folder.

    Hub repo ids (``timm/<name>``) and timm names (``deit_small_patch16_224.fb_in1k``) are one or two
    segments of letters, digits, ``_ - .``; a path is anything else, or ends with a weights suffix.
    """
    return (
        name.startswith((".", "~", os.sep))
        or name.lower().endswith((".safetensors", ".pth", ".pt", ".bin", ".json"))
        or re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is None
    )


def model_card(model, repo_id: str | None = None) -> str:
    """The README.md of a saved model: YAML metadata, what the model is, how to load and run it.

    ``model.card_data`` (filled by the converters) may add ``license``, ``source`` (the original
    checkpoint: its Hub name, or a local file's name, never its folders, with ``source_sha256``),
    ``citation`` (BibTeX), ``parity`` (measured max |logits difference|), ``datasets``, ``tags``,
    ``title`` and ``provenance`` (written to the metadata for the publishing pipeline); a fine-tuning adds
    ``base_model`` (a Hub repo id), ``eval_results`` (``huggingface_hub.EvalResult`` arguments, written as
    ``model-index``) and ``training`` (markdown lines describing the recipe).
    """
    config, extra = model.config, dict(getattr(model, "card_data", {}) or {})
    repo = repo_id or extra.get("repo_id") or "path/to/this/model"
    tags = ["jax", "flax", "vision", "image-classification", LIBRARY_NAME, config.model_type.replace("_flax", "")]
    tags += [t for t in extra.get("tags", []) if t not in tags]
    meta: dict[str, Any] = {"library_name": LIBRARY_NAME, "pipeline_tag": "image-classification", "tags": tags}
    if extra.get("license"):
        meta["license"] = extra["license"]
    if extra.get("datasets"):
        meta["datasets"] = list(extra["datasets"])
    if extra.get("eval_results"):
        # A fine-tuned model: its base checkpoint and evaluation in the model-index metadata the Hub displays.
        from huggingface_hub import EvalResult, ModelCardData

        index = ModelCardData(
            model_name=extra.get("title", repo.split("/")[-1]),
            base_model=extra.get("base_model"),
            eval_results=[EvalResult(**result) for result in extra["eval_results"]],
        ).to_dict()
        meta.update({k: index[k] for k in ("base_model", "model-index") if k in index})
    if extra.get("provenance"):
        # What the publishing pipeline compares to skip checkpoints already published unchanged.
        meta[PROVENANCE_KEY] = dict(extra["provenance"])
    num_params = int(
        sum(
            np.prod(x.shape)
            for x in jax.tree.leaves(model.params_shape_tree if not model._is_initialized else model.params)
        )
    )
    title, arxiv = PAPERS.get(config.model_type, (type(model).__name__, None))
    height, width = config.image_size_hw
    body = [
        f"# {extra.get('title', repo.split('/')[-1])}",
        "",
        f"A {type(model).__name__[4:]} for JAX/Flax ({LIBRARY_NAME}): the architecture of "
        + (f"[{title}](https://arxiv.org/abs/{arxiv})" if arxiv else title)
        + f", {num_params:,} parameters, {height}x{width} RGB input, {config.num_labels} classes.",
    ]
    if extra.get("source"):
        digest = f" (sha256 {extra['source_sha256']})" if extra.get("source_sha256") else ""
        body += ["", f"Weights converted from `{extra['source']}`{digest}."]
    if extra.get("parity") is not None:
        body += ["", f"Verified against the original: max |logits difference| = {extra['parity']:.2e} (float32)."]
    body += [
        "",
        "## Usage",
        "",
        "```python",
        "from hf_vit_flax import FlaxAutoModelForImageClassification  # pip install hf-vit-flax",
        f'model = FlaxAutoModelForImageClassification.from_pretrained("{repo}")',
        "",
        "from PIL import Image",
        'print(model.predict(Image.open("cat.jpg"), top_k=5))  # labels and scores',
        "```",
        "",
        "`model(pixel_values)` takes NCHW arrays as produced by the saved image processor "
        '(`transformers.AutoImageProcessor.from_pretrained(...)(images, return_tensors="np")`).',
    ]
    if extra.get("training"):
        body += ["", "## Training", "", *extra["training"]]
    if extra.get("citation"):
        body += ["", "## Citation", "", "```bibtex", extra["citation"].strip(), "```"]
    front_matter = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return "---\n" + front_matter + "---\n\n" + "\n".join(body) + "\n"


def card_metadata(card_text: str) -> dict[str, Any]:
    """The YAML front matter of a model card ({} when there is none)."""
    if not card_text.startswith("---"):
        return {}
    _, front, _ = card_text.split("---", 2)
    return yaml.safe_load(front) or {}


def write_model_card(model, folder: str, repo_id: str | None = None) -> str:
    path = os.path.join(folder, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(model_card(model, repo_id))
    return path


def upload_folder(
    folder: str,
    repo_id: str,
    *,
    files: list[str],
    commit_message: str | None = None,
    private: bool | None = None,
    token: Any = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """Create ``repo_id`` if needed and upload ``files`` of ``folder`` in one commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        allow_patterns=files,
        commit_message=commit_message or "Upload model with hf-vit-flax",
        revision=revision,
        create_pr=create_pr,
    )
