"""The optimiser of a fine-tuning, as timm and big_vision build it, from optax parts.

``optax.adamw`` (or SGD with momentum) under a linear-warmup + cosine schedule
(``optax.warmup_cosine_decay_schedule``), decoupled weight decay masked off norms, biases, position
embeddings and tokens, optional layer-wise learning-rate decay (one ``optax.multi_transform`` group per
depth), a frozen backbone for linear probing (``optax.set_to_zero``), ``optax.clip_by_global_norm``, and
gradient accumulation with ``optax.MultiSteps``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

from .config import TrainConfig

# Parameters that are not weights of a linear map: no weight decay (timm's ``no_weight_decay`` and 1-d rule).
_NO_DECAY_NAMES = re.compile(r"(token|pos_emb|position|rel_pos|gamma)", re.IGNORECASE)
_BLOCK_NAME = re.compile(r"^(.*?)_(\d+)$")


def _names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params) -> Any:
    """A tree of booleans: True where weight decay applies (matrices and kernels), False on norms, biases,
    position embeddings, class / register / distillation tokens and LayerScale factors."""

    def rule(path, leaf) -> bool:
        names = _names(path)
        return leaf.ndim > 1 and not any(_NO_DECAY_NAMES.search(n) for n in names)

    return jax.tree_util.tree_map_with_path(rule, params)


def module_call_order(model) -> list[tuple[str, ...]]:
    """The scope paths of ``model``'s sub-modules in the order its forward first calls them (shapes only)."""
    import flax.linen as nn
    import jax.numpy as jnp

    order: dict[tuple[str, ...], None] = {}

    def record(call, args, kwargs, context):
        if context.module.scope is not None:
            order.setdefault(tuple(context.module.scope.path), None)
        return call(*args, **kwargs)

    height, width = model.config.image_size_hw
    pixels = jax.ShapeDtypeStruct((1, height, width, model.config.channels), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda p, x: model.module.apply({"params": p}, x), model.params_shape_tree, pixels)
    return list(order)


def layer_ids(params, base_model_prefix: str, call_order: list[tuple[str, ...]] | None = None) -> tuple[Any, int]:
    """Depth of each parameter for layer-wise lr decay, and the number of depths.

    Blocks are the sub-trees named ``<name>_<i>`` (``blocks_0``, ``layers_3``) under the backbone, numbered in
    the order the forward calls them (``call_order``, from :func:`module_call_order`: CaiT's class-attention
    blocks come after its patch blocks), else by their stacks in the order of the parameter tree, then by ``i``;
    embeddings and tokens (before the first block) are depth 0, blocks 1..L, and what is outside the backbone or
    after the blocks (final norm, head) L + 1.
    """
    blocks: dict[tuple[str, ...], tuple[int, int]] = {}  # block path -> (its stack's rank, its index)
    stacks: dict[tuple[str, ...], int] = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = _names(path)
        if names[0] != base_model_prefix:
            continue
        for depth, name in enumerate(names[:-1]):
            match = _BLOCK_NAME.match(name)
            if match:
                stack = (*names[:depth], match.group(1))
                stacks.setdefault(stack, len(stacks))
                blocks[tuple(names[: depth + 1])] = (stacks[stack], int(match.group(2)))
                break
    called = {path: i for i, path in enumerate(call_order or [])}
    if call_order and all(key in called for key in blocks):
        blocks = {key: (called[key], 0) for key in blocks}
    ranked = {key: rank + 1 for rank, key in enumerate(sorted(blocks, key=blocks.get))}
    num_blocks = len(ranked)

    def rule(path, leaf) -> int:
        names = _names(path)
        if names[0] == base_model_prefix:
            for depth in range(1, len(names)):
                if tuple(names[:depth]) in ranked:
                    return ranked[tuple(names[:depth])]
            if _is_embedding(names):
                return 0
        return num_blocks + 1

    return jax.tree_util.tree_map_with_path(rule, params), num_blocks + 2


def _is_embedding(names: list[str]) -> bool:
    return any(re.search(r"(embed|token|stem|pos_)", n, re.IGNORECASE) for n in names)


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)


def make_optimizer(
    params,
    recipe: TrainConfig,
    *,
    base_model_prefix: str,
    schedule: optax.Schedule,
    call_order: list[tuple[str, ...]] | None = None,
) -> optax.GradientTransformation:
    """The optimiser of ``recipe`` (its ``optimizer``, ``weight_decay``, ``momentum``, ``layer_decay``,
    ``clip_norm``, ``freeze_backbone`` and ``grad_accum``) over ``params`` (a classifier's ``{prefix: backbone,
    head names: head}`` tree); ``call_order`` orders the blocks for ``layer_decay`` (see :func:`layer_ids`)."""

    def base(scale: float) -> optax.GradientTransformation:
        lr = schedule if scale == 1.0 else (lambda step: schedule(step) * scale)
        if recipe.optimizer == "adamw":
            return optax.adamw(lr, b1=0.9, b2=0.999, weight_decay=recipe.weight_decay, mask=decay_mask)
        if recipe.optimizer == "sgd":
            return optax.chain(
                optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask),
                optax.sgd(lr, momentum=recipe.momentum),
            )
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}: adamw or sgd")

    if recipe.layer_decay is not None or recipe.freeze_backbone:
        if recipe.layer_decay is not None:
            ids, depths = layer_ids(params, base_model_prefix, call_order)
            labels = jax.tree.map(lambda i: f"depth_{i}", ids)
            transforms = {f"depth_{i}": base(recipe.layer_decay ** (depths - 1 - i)) for i in range(depths)}
        else:
            labels = jax.tree.map(lambda _: "train", params)
            transforms = {"train": base(1.0)}
        if recipe.freeze_backbone:
            labels = {
                k: (jax.tree.map(lambda _: "frozen", v) if k == base_model_prefix else v) for k, v in labels.items()
            }
            transforms["frozen"] = optax.set_to_zero()
        used = set(jax.tree.leaves(labels))
        tx = optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)
    else:
        tx = base(1.0)
    if recipe.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(recipe.clip_norm), tx)
    if recipe.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=recipe.grad_accum)
    return tx
