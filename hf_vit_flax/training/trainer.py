"""The fine-tuning loop: one mesh over every device and host, a jitted step, orbax checkpoints that resume.

Data parallel by default: parameters and optimiser state replicated, each batch split along the ``data``
axis of a ``jax.sharding.Mesh`` over all devices of all hosts. With ``fsdp=True`` parameters and
optimiser state are split along the same axis too (each array along its largest dimension the device
count divides), and XLA gathers them where the step needs them. Hosts join through
``jax.distributed.initialize``. A checkpoint (orbax ``CheckpointManager``: atomic, the last N kept,
sharded across hosts) holds parameters, optimiser state, step and the grain iterator's position, so a
killed run started again with the same command continues where its last checkpoint left it and ends
with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import TrainConfig

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainResult:
    """What a run produced: where, how long, how well."""

    output_dir: str
    steps: int
    epochs: float
    best_accuracy: float
    best_step: int
    final_accuracy: float
    final_loss: float
    wall_time: float
    skipped_images: int
    resumed_from: int | None
    confusion: list[list[int]]
    class_names: list[str]
    sharded_arrays: int = 0  # parameter arrays split over the devices (FSDP)
    params: Any = dataclasses.field(default=None, repr=False)  # final parameters (host numpy arrays)

    def summary(self) -> str:
        rows = [
            ("output", self.output_dir),
            (
                "steps",
                f"{self.steps} ({self.epochs:.1f} epochs)"
                + (f", resumed at {self.resumed_from}" if self.resumed_from else ""),
            ),
            ("final val accuracy", f"{self.final_accuracy:.2%}"),
            ("best val accuracy", f"{self.best_accuracy:.2%} (step {self.best_step})"),
            ("final val loss", f"{self.final_loss:.4f}"),
            ("wall time", f"{self.wall_time:.1f} s"),
            ("unreadable images skipped", str(self.skipped_images)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def init_distributed(config: TrainConfig) -> None:
    """``jax.distributed.initialize`` when the run spans several processes (options, variables, or a cluster).

    On CPU the processes exchange data through gloo.
    """
    import jax

    env = os.environ
    address = config.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes if config.num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else env.get("JAX_PROCESS_ID")
    cluster = int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if address is None and num is None and pid is None and not cluster:
        return
    if jax.distributed.is_initialized():
        return
    # Collectives between CPU devices of several processes need an implementation (GPUs and TPUs have their own).
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is not None or num is not None or pid is not None:
        missing = [
            n for n, v in (("coordinator address", address), ("process count", num), ("process id", pid)) if v is None
        ]
        if missing:
            raise ValueError(
                f"a multi-host run needs the coordinator address, the process count and this process's id; missing: "
                f"{', '.join(missing)} (--coordinator-address / --num-processes / --process-id, or JAX_COORDINATOR_ADDRESS"
                f" / JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
            )
        jax.distributed.initialize(address, int(num), int(pid))
    else:
        jax.distributed.initialize()


# -- the run folder -------------------------------------------------------------------------------------------
def check_run_folder(output_dir: str, recipe: dict[str, Any]) -> bool:
    """Whether ``output_dir`` holds this run already (then it resumes). A folder holding anything else is refused."""
    if os.path.isfile(output_dir):
        raise ValueError(f"--output-dir {output_dir} is a file; give a folder")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return False
    run_file = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(run_file):
        raise ValueError(
            f"--output-dir {output_dir} already holds files that are not a fine-tuning run of hf-vit-flax; nothing was "
            f"changed: choose a new or empty folder"
        )
    with open(run_file, encoding="utf-8") as f:
        saved = json.load(f).get("recipe", {})
    differ = {k: (saved.get(k), v) for k, v in recipe.items() if saved.get(k) != v}
    if differ:
        changes = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in sorted(differ.items()))
        raise ValueError(
            f"--output-dir {output_dir} holds another run ({changes}); it cannot resume with another model or recipe. "
            f"Nothing was changed: choose another --output-dir, or repeat that run's options to resume it"
        )
    return True


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


# -- sharding ------------------------------------------------------------------------------------------------
def fsdp_spec(shape: tuple[int, ...], num_devices: int, min_size: int = 2**10):
    """FSDP: an array split along its largest dimension that ``num_devices`` divides (small ones replicated)."""
    from jax.sharding import PartitionSpec as P

    if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_devices == 0:
            return P(*[("data" if a == axis else None) for a in range(len(shape))])
    return P()


def to_host(x) -> np.ndarray:
    """A (replicated or sharded, possibly multi-host) array as one numpy array on this host."""
    import jax
    from jax.experimental import multihost_utils

    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# -- the run ------------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data``; resume when ``config.output_dir`` holds this run."""
    from . import require_dependencies

    require_dependencies()
    init_distributed(config)

    import jax
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from . import data as data_lib
    from .models import load_model
    from .optim import learning_rate_schedule, make_optimizer, module_call_order
    from .report import MetricsLog, ProgressBar, card_data, write_plots

    started = time.time()
    is_main = jax.process_index() == 0
    output_dir = os.path.abspath(config.output_dir)
    recipe = config.recipe()
    resuming = check_run_folder(output_dir, recipe)

    devices = jax.devices()
    num_devices, num_hosts = len(devices), jax.process_count()
    _check_batch_divides(config, num_devices)

    dataset = data_lib.load_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    model, base_model = load_model(
        config.model,
        dataset.id2label,
        small_images=config.data == "digits",
        image_size=config.image_size,
        precision=config.precision,
        gradient_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        crossformer_variant=config.crossformer_variant,
    )
    processor = model.image_processor
    prefix, num_classes = model.base_model_prefix, len(dataset.class_names)
    augment = config.augment or ("crop" if config.data == "digits" else "crop-flip")
    bad = data_lib.BadImages(config.on_bad_image)
    train_pre = data_lib.Preprocess(dataset.train, processor, bad, augment)
    val_pre = data_lib.Preprocess(dataset.val, processor, bad, augment="none")
    _check_model_takes(model, train_pre, dataset)

    steps_per_epoch = max(len(dataset.train) // config.batch_size, 1)
    total_steps = config.steps or config.num_epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup * total_steps)) if config.warmup < 1 else int(config.warmup)
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint_every or eval_every
    schedule = learning_rate_schedule(config.peak_lr, total_steps, warmup_steps)
    tx = make_optimizer(
        model.params,
        config,
        base_model_prefix=prefix,
        schedule=schedule,
        call_order=module_call_order(model) if config.layer_decay is not None else None,
    )

    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    state, abstract_state, state_shardings = _state_on_mesh(model.params, tx, mesh, fsdp=config.fsdp)
    sharded_arrays = sum(not s.is_fully_replicated for s in jax.tree.leaves(state_shardings["params"]))
    train_step, eval_step = _step_functions(model, tx, config, num_classes, state_shardings, replicated)

    def to_global(batch: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v)) for k, v in batch.items()}

    micro_per_host = config.micro_batch_size // num_hosts
    eval_per_host = max(micro_per_host, num_devices // num_hosts)

    def evaluate(params) -> dict[str, Any]:
        batches, _ = data_lib.eval_pipeline(val_pre, host_batch=eval_per_host, workers=config.workers)
        return _evaluate(eval_step, params, (to_global(batch) for batch in batches), num_classes)

    # -- checkpoints, and where a resumed run stands
    pipeline = data_lib.train_pipeline(train_pre, seed=config.seed, host_batch=micro_per_host, workers=config.workers)
    iterator = iter(pipeline)
    manager = ocp.CheckpointManager(
        os.path.join(output_dir, CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
    progress: dict[str, Any] = {"best_accuracy": -1.0, "best_step": 0, "evaluations": []}
    resumed_from = None
    if resuming and manager.latest_step() is not None:
        import grain

        resumed_from = manager.latest_step()
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
        )
        restored = manager.restore(
            resumed_from,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=grain.checkpoint.CheckpointRestore(iterator),  # the iterator continues where it stood
                progress=ocp.args.JsonRestore(),
            ),
        )
        state, progress = restored["state"], dict(restored["progress"])
    multihost_utils.sync_global_devices("hf_vit_flax.train: run folder checked")
    if is_main:
        _write_json(
            os.path.join(output_dir, RUN_FILE),
            {"recipe": recipe, "model": type(model).__name__, "base_model": base_model, "classes": dataset.class_names},
        )
    metrics_log = MetricsLog(os.path.join(output_dir, METRICS_FILE), enabled=is_main, truncate_after=resumed_from or 0)

    def save_checkpoint(micro_step: int) -> None:
        import grain

        manager.save(
            micro_step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                progress=ocp.args.JsonSave(progress),
            ),
        )

    def save_best(params_host, evaluation, step) -> None:
        model.params = params_host
        model.card_data.update(
            card_data(config, dataset, base_model, evaluation, step, total_steps, steps_per_epoch, augment)
        )
        model.save_pretrained(output_dir)

    # -- the loop (steps counted in micro-batches; an optimizer step is grad_accum of them)
    accum = config.grad_accum
    micro_total = total_steps * accum
    micro_step = int(to_host(state["step"]))
    bar = ProgressBar(total_steps, micro_step // accum, steps_per_epoch, enabled=is_main and config.progress)
    last_eval: dict[str, Any] | None = None
    window: list[dict] = []
    tick = time.time()
    try:
        while micro_step < micro_total:
            batch = to_global(next(iterator))
            state, metrics = train_step(state, batch)
            micro_step += 1
            window.append(metrics)
            if micro_step % accum:
                continue
            step = micro_step // accum
            if step % 10 == 0 or step == total_steps or step % eval_every == 0:
                now = time.time()
                record = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "lr": float(schedule(step - 1)),
                    **_train_metrics(window),
                    "images_per_s": len(window) * config.micro_batch_size / max(now - tick, 1e-9),
                }
                metrics_log.write(record)
                bar.update(step, record)
                window, tick = [], now
            if step % eval_every == 0 or step == total_steps:
                last_eval = evaluate(state["params"])
                record = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "val_loss": last_eval["loss"],
                    "val_accuracy": last_eval["accuracy"],
                }
                metrics_log.write(record)
                progress["evaluations"].append(record)
                bar.write(f"step {step}: val accuracy {last_eval['accuracy']:.2%}, val loss {last_eval['loss']:.4f}")
                if last_eval["accuracy"] > progress["best_accuracy"]:
                    progress.update(
                        best_accuracy=last_eval["accuracy"], best_step=step, best_confusion=last_eval["confusion"]
                    )
                    params_host = jax.tree.map(to_host, state["params"])
                    if is_main:
                        save_best(params_host, last_eval, step)
                    multihost_utils.sync_global_devices("hf_vit_flax.train: best model saved")
            if step % checkpoint_every == 0 or step == total_steps:
                save_checkpoint(micro_step)
            bar.set_step(step)
    finally:
        bar.close()
        manager.wait_until_finished()
    if last_eval is None:  # a finished run started again: evaluate what it holds
        last_eval = evaluate(state["params"])
    final_params = jax.tree.map(to_host, state["params"])
    manager.close()
    if is_main:
        write_plots(output_dir, dataset.class_names, progress.get("best_confusion") or last_eval["confusion"])
    result = TrainResult(
        output_dir=output_dir,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        best_accuracy=progress["best_accuracy"],
        best_step=progress["best_step"],
        final_accuracy=last_eval["accuracy"],
        final_loss=last_eval["loss"],
        wall_time=time.time() - started,
        skipped_images=bad.count,
        resumed_from=resumed_from // accum if resumed_from else None,
        confusion=last_eval["confusion"],
        class_names=dataset.class_names,
        sharded_arrays=sharded_arrays,
        params=final_params,
    )
    if config.push_to_hub and is_main:
        _push_to_hub(output_dir, config.push_to_hub)
    multihost_utils.sync_global_devices("hf_vit_flax.train: done")
    return result


def _check_batch_divides(config: TrainConfig, num_devices: int) -> None:
    if config.micro_batch_size % num_devices:
        what = f"batch size {config.batch_size}" + (
            f" / grad accumulation {config.grad_accum} = {config.micro_batch_size}" if config.grad_accum > 1 else ""
        )
        raise ValueError(
            f"the {what} is not divisible by the {num_devices} devices: each device takes an equal part of a batch; "
            f"use a multiple of {num_devices}"
        )


def _push_to_hub(output_dir: str, repo_id: str) -> None:
    """Upload the saved best model (its files, not the checkpoints or the run's own record)."""
    from ..hub import upload_folder

    files = sorted(n for n in os.listdir(output_dir) if os.path.isfile(os.path.join(output_dir, n)) and n != RUN_FILE)
    upload_folder(output_dir, repo_id, files=files, commit_message="Fine-tuned with hf-vit-flax train")


def _state_on_mesh(params, tx, mesh, *, fsdp: bool):
    """The train state ``{"params", "opt_state", "step"}`` placed on ``mesh``: replicated, or with FSDP each
    array split along the ``data`` axis (``fsdp_spec``). Returns the state, its abstract shape (what a
    checkpoint restores into) and its shardings."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    num_devices = mesh.devices.size

    def sharding_of(leaf) -> NamedSharding:
        return NamedSharding(mesh, fsdp_spec(leaf.shape, num_devices) if fsdp else P())

    def initial_state(p):
        return {"params": p, "opt_state": tx.init(p), "step": jnp.zeros((), jnp.int32)}

    host_params = jax.tree.map(np.asarray, params)
    abstract_state = jax.eval_shape(initial_state, host_params)
    state_shardings = jax.tree.map(sharding_of, abstract_state)
    placed = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
        host_params,
        state_shardings["params"],
    )
    state = jax.jit(initial_state, out_shardings=state_shardings)(placed)
    return state, abstract_state, state_shardings


def _step_functions(model, tx, config: TrainConfig, num_classes: int, state_shardings, replicated):
    """The jitted ``train_step(state, batch) -> (state, metrics)`` (the state's buffers donated) and
    ``eval_step(params, batch) -> {"loss", "confusion"}``; a batch holds NCHW ``pixel_values``, ``label``
    and ``weight`` (0 for the padding of a last, short batch)."""
    import jax
    import jax.numpy as jnp
    import optax

    module, prefix, rng = model.module, model.base_model_prefix, jax.random.key(config.seed)

    def forward(params, pixel_values, train: bool, dropout_rng=None):
        # As FlaxVisionPreTrainedModel.__call__: NCHW in, transposed once to the modules' NHWC.
        return module.apply(
            {"params": params},
            jnp.transpose(pixel_values, (0, 2, 3, 1)),
            deterministic=not train,
            rngs={"dropout": dropout_rng} if train else {},
        ).logits.astype(jnp.float32)

    def train_step(state, batch):
        step = state["step"]

        def loss_fn(params):
            if config.freeze_backbone:  # linear probing: no gradient into the backbone at all
                params = {**params, prefix: jax.lax.stop_gradient(params[prefix])}
            logits = forward(params, batch["pixel_values"], True, jax.random.fold_in(rng, step))
            targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), config.label_smoothing)
            weight = batch["weight"]
            loss = jnp.sum(optax.softmax_cross_entropy(logits, targets) * weight) / jnp.maximum(weight.sum(), 1.0)
            correct = jnp.sum((logits.argmax(-1) == batch["label"]) * weight)
            return loss, (correct, weight.sum())

        (loss, (correct, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "correct": correct, "count": count, "grad_norm": optax.global_norm(grads)}
        return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics

    train_step = jax.jit(train_step, donate_argnums=0, out_shardings=(state_shardings, replicated))

    def eval_step(params, batch):
        logits = forward(params, batch["pixel_values"], False)
        weight = batch["weight"]
        targets = jax.nn.one_hot(batch["label"], num_classes)
        loss = jnp.sum(optax.softmax_cross_entropy(logits, targets) * weight)
        predicted = jax.nn.one_hot(logits.argmax(-1), num_classes)
        confusion = jnp.einsum("bi,bj->ij", targets * weight[:, None], predicted)
        return {"loss": loss, "confusion": confusion}

    eval_step = jax.jit(eval_step, out_shardings=replicated)
    return train_step, eval_step


def _evaluate(eval_step, params, batches, num_classes: int) -> dict[str, Any]:
    """Accuracy, mean loss and confusion matrix (rows: true class) of ``params`` over ``batches``."""
    confusion, loss = np.zeros((num_classes, num_classes)), 0.0
    for batch in batches:
        out = eval_step(params, batch)
        confusion += to_host(out["confusion"])
        loss += float(to_host(out["loss"]))
    total = confusion.sum()
    return {
        "accuracy": float(np.trace(confusion) / max(total, 1)),
        "loss": loss / max(total, 1),
        "confusion": confusion.astype(int).tolist(),
    }


def _train_metrics(window: list[dict]) -> dict[str, float]:
    """Mean loss and gradient norm, and the accuracy, over the steps since the last record."""
    seen = sum(float(to_host(m["count"])) for m in window)
    return {
        "train_loss": float(np.mean([to_host(m["loss"]) for m in window])),
        "train_accuracy": sum(float(to_host(m["correct"])) for m in window) / max(seen, 1),
        "grad_norm": float(np.mean([to_host(m["grad_norm"]) for m in window])),
    }


def _check_model_takes(model, preprocess, dataset) -> None:
    """The processed images must fit the model: a clear error before any compilation otherwise."""
    try:
        model.check_pixel_values(preprocess.blank()[None])
    except ValueError as err:
        raise ValueError(
            f"the images of {dataset.name}, through the model's image processor, do not fit the model: {err}"
        ) from err
