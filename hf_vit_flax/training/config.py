"""The recipe of a fine-tuning run, as one dataclass (no jax import: the command line builds it first)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The fields that define a run: a checkpoint written under one value of these does not resume under another.
RECIPE_FIELDS = (
    "model",
    "data",
    "image_size",
    "epochs",
    "steps",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "warmup",
    "layer_decay",
    "clip_norm",
    "label_smoothing",
    "grad_accum",
    "precision",
    "freeze_backbone",
    "seed",
    "augment",
    "val_fraction",
    "fsdp",
    "crossformer_variant",
)


@dataclass
class TrainConfig:
    """How to fine-tune a model: data, model, optimisation, scale, checkpoints and output.

    Attributes:
        data: ``"digits"`` (scikit-learn's digits, no download), an image folder (one sub-folder per class,
            optionally under ``train/`` and ``val/`` or ``test/``), or a Hugging Face ``datasets`` dataset (a Hub
            name or a local folder written by ``save_to_disk``) with ``image`` and ``label`` columns.
        output_dir: where checkpoints, metrics, plots and the best model (``save_pretrained``) go.
        model: anything the package loads: a folder written by ``save_pretrained`` or a Hub repo id,
            ``timm:<name>[.<tag>]``, a local timm checkpoint, ``crossformer:<path>`` (with ``crossformer_variant``),
            or a named variant of ``configs/`` (randomly initialised); ``None``: a small ViT suited to the data.
        image_size: the input size of a model built from a variant or the default (default: its own).
        epochs / steps: the length of the run (optimizer steps; ``steps`` wins when both are set). Default: 30
            epochs for the default model on digits (trained from scratch), 10 otherwise.
        batch_size: the global batch (all devices and hosts together) of one optimizer step.
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``).
        lr: peak learning rate, reached after ``warmup`` steps (an int) or that fraction of the run (a float < 1),
            then cosine decay to 0. Default: 2e-3 for the default model (trained from scratch), 5e-4 to fine-tune
            a given one.
        weight_decay: decoupled weight decay; never on norms, biases, position embeddings and tokens.
        layer_decay: layer-wise learning-rate decay (BEiT / timm): block ``i`` of ``L`` gets ``lr * layer_decay **
            (L + 1 - i)``; ``None`` for one rate everywhere.
        clip_norm: clip the global gradient norm to this (``None``: no clipping).
        label_smoothing: label smoothing of the cross-entropy.
        grad_accum: micro-batches per optimizer step (``optax.MultiSteps``); ``batch_size`` is split into them.
        precision: ``"bf16"`` (bfloat16 computation, float32 parameters) or ``"fp32"``.
        gradient_checkpointing: rematerialise each block in the backward pass.
        freeze_backbone: linear probing: only the classification head is trained.
        augment: training augmentation: ``"crop-flip"`` (random resized crop and horizontal flip), ``"crop"``
            (the crop only: for images that are not mirror-symmetric in meaning, such as digits) or ``"none"``;
            ``None``: ``"crop"`` for digits, ``"crop-flip"`` otherwise.
        val_fraction: the fraction of an image folder / dataset held out for validation when it has no split.
        eval_every: evaluate (and keep the best model) every this many steps (``None``: once per epoch).
        checkpoint_every: write a checkpoint every this many steps (``None``: at each evaluation).
        keep_checkpoints: how many checkpoints to keep.
        on_bad_image: ``"skip"`` (skip and count unreadable images) or ``"error"`` (stop, naming the file).
        fsdp: shard parameters and optimiser state over the devices too (FSDP style), not only the batch.
        workers: threads that read and preprocess images.
        push_to_hub: a Hub repo id to upload the best model to at the end.
        coordinator_address / num_processes / process_id: multi-host setup for ``jax.distributed.initialize``
            (default: the ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` variables, or a
            SLURM / Open MPI / TPU environment's own).
        progress: show a progress bar.
    """

    data: str = "digits"
    output_dir: str = "hf-vit-flax-train"
    model: str | None = None
    crossformer_variant: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup: float = 0.1
    layer_decay: float | None = None
    clip_norm: float | None = 1.0
    label_smoothing: float = 0.1
    grad_accum: int = 1
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    freeze_backbone: bool = False
    seed: int = 0
    augment: str | None = None
    val_fraction: float = 0.1
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    on_bad_image: str = "skip"
    fsdp: bool = False
    workers: int = 2
    push_to_hub: str | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def positive(name: str, value, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive("batch_size", self.batch_size)
        positive("grad_accum", self.grad_accum)
        positive("epochs", self.epochs, allow_none=True)
        positive("steps", self.steps, allow_none=True)
        positive("eval_every", self.eval_every, allow_none=True)
        positive("checkpoint_every", self.checkpoint_every, allow_none=True)
        positive("keep_checkpoints", self.keep_checkpoints)
        positive("workers", self.workers)
        positive("image_size", self.image_size, allow_none=True)
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}: each optimizer step "
                f"is grad_accum micro-batches of batch_size / grad_accum images"
            )
        choices = {
            "optimizer": ("adamw", "sgd"),
            "precision": ("bf16", "fp32"),
            "on_bad_image": ("skip", "error"),
            "augment": (None, "crop-flip", "crop", "none"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 (steps, or a fraction of the run below 1), got {self.warmup!r}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive (or None for no clipping), got {self.clip_norm!r}")

    @property
    def from_scratch(self) -> bool:
        """Whether the run trains the default model from a random start (then it has its own defaults)."""
        return self.model is None

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (2e-3 if self.from_scratch else 5e-4)

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (30 if self.from_scratch and self.data == "digits" else 10)

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    def recipe(self) -> dict[str, Any]:
        """The fields that define the run (what a checkpoint must match to resume), JSON-ready."""
        values = dataclasses.asdict(self)
        return {name: values[name] for name in RECIPE_FIELDS}
