"""What a person looks at during and after a run: a tqdm bar, metrics as JSON lines, matplotlib plots,
and the model card's record of the recipe and its evaluation."""

from __future__ import annotations

import json
import os
from typing import Any

PLOTS = ("curves.png", "confusion_matrix.png")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (training records and evaluations, each with its step).

    A resumed run first drops the records after the step it resumes from (they are written again)."""

    def __init__(self, path: str, enabled: bool = True, truncate_after: int = 0):
        self.path, self.enabled = path, enabled
        if enabled and os.path.exists(path):
            kept = [r for r in read_metrics(path) if truncate_after and r.get("step", 0) <= truncate_after]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
    """tqdm over optimizer steps: epoch, loss, learning rate, images/s; tqdm adds the ETA."""

    def __init__(self, total: int, initial: int, steps_per_epoch: int, enabled: bool = True):
        self.steps_per_epoch = steps_per_epoch
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                epoch=f"{step / self.steps_per_epoch:.1f}",
                loss=f"{record['train_loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                img_s=f"{record['images_per_s']:.0f}",
                refresh=False,
            )

    def set_step(self, step: int) -> None:
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_plots(output_dir: str, class_names: list[str], confusion: list[list[int]]) -> list[str]:
    """``curves.png`` (training and validation loss and accuracy) and ``confusion_matrix.png`` (of the best model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_metrics(os.path.join(output_dir, "metrics.jsonl"))
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot([r["step"] for r in train], [r[f"train_{key}"] for r in train], label="train")
        ax.plot([r["step"] for r in val], [r[f"val_{key}"] for r in val], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths = [os.path.join(output_dir, PLOTS[0]), os.path.join(output_dir, PLOTS[1])]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    matrix = np.asarray(confusion)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 10 else 0)
    ax.set_yticks(ticks, class_names)
    if len(class_names) <= 30:
        for i in ticks:
            for j in ticks:
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.2%})")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def _hub_id(spec: str) -> str | None:
    """The Hub repo id a model was fine-tuned from, when it has one (not a local path or a variant)."""
    if spec.startswith("timm:"):
        name = spec[5:]
        return name if "/" in name else f"timm/{name}"
    if os.path.exists(spec) or spec.startswith("crossformer:") or "/" not in spec:
        return None
    return spec


def card_data(
    config, dataset, base_model: str, evaluation: dict, step: int, total_steps: int, steps_per_epoch: int, augment: str
) -> dict[str, Any]:
    """The model card's record of a fine-tuning (see :func:`hf_vit_flax.hub.model_card`)."""
    split = "test" if dataset.val_is_test else "validation"
    result = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset.name,
        "dataset_name": dataset.name,
        "dataset_split": split,
        "metric_type": "accuracy",
        "metric_name": "Accuracy",
        "metric_value": round(evaluation["accuracy"], 6),
    }
    recipe = (
        f"{config.optimizer} lr {config.peak_lr:g} (warmup {config.warmup:g}, cosine), weight decay {config.weight_decay:g}, "
        f"batch {config.batch_size}"
        + (f" ({config.grad_accum} accumulated micro-batches)" if config.grad_accum > 1 else "")
        + f", label smoothing {config.label_smoothing:g}, {config.precision}, seed {config.seed}"
        + (f", layer decay {config.layer_decay:g}" if config.layer_decay else "")
        + (f", gradient clipping {config.clip_norm:g}" if config.clip_norm else "")
        + (", backbone frozen (linear probe)" if config.freeze_backbone else "")
        + {"crop-flip": ", random resized crop + flip", "crop": ", random resized crop"}.get(augment, "")
    )
    hub_id = _hub_id(base_model)
    data: dict[str, Any] = {
        "eval_results": [result],
        "title": os.path.basename(os.path.abspath(config.output_dir)),
        "training": [
            f"Fine-tuned from `{base_model}` on {dataset.name} ({len(dataset.train)} training images, "
            f"{len(dataset.class_names)} classes) with `hf-vit-flax train`.",
            "",
            f"- recipe: {recipe}",
            f"- {step} of {total_steps} steps ({step / steps_per_epoch:.1f} epochs) at this checkpoint",
            f"- {split} accuracy: {evaluation['accuracy']:.2%} ({sum(map(sum, evaluation['confusion']))} images)",
        ],
    }
    if hub_id:
        data["base_model"] = hub_id
    return data
