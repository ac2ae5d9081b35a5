"""Fine-tuning a timm checkpoint: ``hf_vit_flax.training.train`` against timm's own fine-tuning, same recipe.

One fixed, randomly initialised timm ViT-Ti (saved once in timm's Hub format: ``config.json`` +
``model.safetensors``, as ``timm.models.save_for_hf`` writes it) is fine-tuned on an image folder of
scikit-learn's digits (real 8x8 scans, upscaled to PNG files, a fixed stratified 20% test split) twice:

* by timm: ``timm.create_model("local-dir:...")``, timm's ``ImageFolder`` dataset and evaluation transform,
  ``create_optimizer_v2`` (AdamW, no weight decay on biases, norms, position embedding and class token),
  ``create_scheduler_v2`` (linear warmup then cosine, stepped per update), ``LabelSmoothingCrossEntropy``,
  in a plain PyTorch loop as timm's ``train.py`` runs it;
* by ``hf_vit_flax.training.train(TrainConfig(model=<that folder>, data=<that image folder>, ...))``.

Same batch size, epochs, peak learning rate, warmup, weight decay, label smoothing, no augmentation, no
gradient clipping, no dropout. Before training, the script checks that both start from the same function
(the converted model's logits against timm's on the same test images, each through its own preprocessing)
and that both learning-rate schedules agree step by step. It records the test accuracy of both and the
steady-state step time of both training loops (data loading included, the first 10 steps left out: they hold
the compilation), on one CPU core: run it under ``taskset -c 1``; torch runs with ``torch.set_num_threads(1)``
and XLA with ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``.

    taskset -c 1 python -m benchmarks.finetune_vs_timm          # ~10 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# One thread for XLA, set before jax is imported (hf_vit_flax adds its CPU settings to these).
_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _THREAD_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

ARCH = "vit_tiny_patch16_224"
SKIP_STEPS = 10  # the first steps: compilation (ours), allocator and cache warm-up (both)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_digits_folder(root: str, size: int) -> dict[str, int]:
    """scikit-learn's digits as PNG files in ``root/train/<digit>/`` and ``root/test/<digit>/`` (20% per class)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=0)
    counts = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        for i in idx:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            image = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC)
            image.save(os.path.join(folder, f"{i:04d}.png"))
        counts[split] = len(idx)
    return counts


def save_checkpoint(folder: str, size: int, patch: int, num_classes: int, seed: int) -> None:
    """The fixed starting point: a randomly initialised timm ViT-Ti at ``size`` / ``patch``, timm's Hub format."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, img_size=size, patch_size=patch, num_classes=num_classes)
    save_for_hf(
        model,
        folder,
        model_config={"label_names": [str(i) for i in range(num_classes)]},
        model_args={"img_size": size, "patch_size": patch, "num_classes": num_classes},
        data_config={"input_size": (3, size, size), "crop_pct": 1.0, "interpolation": "bicubic"},
        safe_serialization=True,
    )


def timm_schedule_lrs(optimizer_lr: float, epochs: int, steps_per_epoch: int, warmup_steps: int) -> list[float]:
    """The learning rate timm's scheduler gives each update of the run (for the check against ours)."""
    import torch
    from timm.scheduler import create_scheduler_v2

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optimizer_lr)
    scheduler = timm_scheduler(opt, epochs, steps_per_epoch, warmup_steps, create_scheduler_v2)
    lrs = []
    for step in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        scheduler.step_update(step + 1)
    return lrs


def timm_scheduler(optimizer, epochs, steps_per_epoch, warmup_steps, create_scheduler_v2):
    # Warmup as a prefix of the run (warmup_prefix: the cosine spans the rest), stepped per update, from 0 to 0.
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=epochs - warmup_steps / steps_per_epoch,
        warmup_epochs=warmup_steps / steps_per_epoch,
        warmup_prefix=True,
        warmup_lr=0.0,
        min_lr=0.0,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


def our_batches(data_root: str, train_set, args, steps: int) -> list[list[int]]:
    """The global batches ``hf_vit_flax.training`` trains on, step by step, as indices into timm's dataset
    (the same image files, matched by path)."""
    from hf_vit_flax.training.data import example_order, load_dataset

    split = load_dataset(data_root, seed=args.seed).train
    timm_index = {os.path.realpath(path): i for i, (path, _) in enumerate(train_set.reader.samples)}
    order = example_order(len(split), args.seed)
    positions = [order[p] for p in range(steps * args.batch_size)]
    indices = [timm_index[os.path.realpath(split.describe(i))] for i in positions]
    return [indices[k : k + args.batch_size] for k in range(0, len(indices), args.batch_size)]


def run_timm(checkpoint: str, data_root: str, args, warmup_steps: int) -> dict:
    """timm's fine-tuning: its model loading, dataset, transform, optimizer, scheduler and loss, a plain loop.

    With ``--data-order same`` (the default) the loop reads the batches ``hf_vit_flax.training`` reads, in
    the same order; with ``own``, timm's loader shuffles with its own generator (drop_last, as timm trains)."""
    import timm
    import torch
    from timm.data import create_dataset, create_transform, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(args.seed)
    model = timm.create_model(f"local-dir:{checkpoint}", pretrained=True)
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    train_set = create_dataset("", root=os.path.join(data_root, "train"), transform=transform)
    test_set = create_dataset("", root=os.path.join(data_root, "test"), transform=transform)
    steps_per_epoch = len(train_set) // args.batch_size
    if args.data_order == "same":
        batches = our_batches(data_root, train_set, args, args.epochs * steps_per_epoch)

        def loader_of(epoch: int):
            epoch_batches = batches[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
            return torch.utils.data.DataLoader(train_set, batch_sampler=epoch_batches, num_workers=0)
    else:
        shuffled = torch.utils.data.DataLoader(
            train_set,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(args.seed),
        )

        def loader_of(epoch: int):
            return shuffled

    optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler = timm_scheduler(optimizer, args.epochs, steps_per_epoch, warmup_steps, create_scheduler_v2)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=args.label_smoothing)

    step_times, losses, updates = [], [], 0
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        tick = time.perf_counter()
        for images, labels in loader_of(epoch):
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            losses.append(loss.item())
            now = time.perf_counter()
            step_times.append(now - tick)
            tick = now
        print(f"timm: epoch {epoch + 1}/{args.epochs}, loss {np.mean(losses[-steps_per_epoch:]):.4f}", flush=True)
    train_time = time.perf_counter() - started
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in torch.utils.data.DataLoader(test_set, batch_size=128):
            correct += int((model(images).argmax(-1) == labels).sum())
            total += len(labels)
    return {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "steps": updates,
        "steps_per_epoch": steps_per_epoch,
        "final_train_loss": float(np.mean(losses[-steps_per_epoch:])),  # replaced by main: ours' last window
        "losses": losses,
        "step_time_s": float(np.mean(step_times[SKIP_STEPS:])),
        "step_time_median_s": float(np.median(step_times[SKIP_STEPS:])),
        "first_steps_s": float(np.sum(step_times[:SKIP_STEPS])),
        "train_time_s": train_time,
    }


def run_ours(checkpoint: str, data_root: str, output_dir: str, args, warmup_steps: int, total_steps: int) -> dict:
    from hf_vit_flax.training import TrainConfig, train

    result = train(
        TrainConfig(
            data=data_root,
            model=checkpoint,
            output_dir=output_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup=warmup_steps,
            clip_norm=None,
            label_smoothing=args.label_smoothing,
            augment="none",
            seed=args.seed,
            eval_every=total_steps,  # one evaluation, at the end: no evaluation inside the timed windows
            checkpoint_every=total_steps,
            workers=1,
            progress=False,
        )
    )
    # The trainer logs images/s over windows of 10 steps; the first window holds the compilation.
    records = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8")]
    windows = [r for r in records if "images_per_s" in r and r["step"] > SKIP_STEPS]
    steady = []
    previous = SKIP_STEPS
    for r in windows:
        steps = r["step"] - previous
        previous = r["step"]
        steady.extend([args.batch_size / r["images_per_s"]] * steps)  # each step of the window, its mean time
    train_records = [r for r in records if "train_loss" in r]
    correct = int(np.trace(np.asarray(result.confusion)))
    total = int(np.sum(result.confusion))
    first = next(r for r in records if "images_per_s" in r)
    return {
        "accuracy": result.final_accuracy,
        "correct": correct,
        "total": total,
        "steps": result.steps,
        # The trainer's last record: the mean loss of the steps since the one before (its logging window).
        "final_train_loss": train_records[-1]["train_loss"],
        "final_window": [train_records[-2]["step"] if len(train_records) > 1 else 0, train_records[-1]["step"]],
        "step_time_s": float(np.mean(steady)),
        "first_steps_s": float(first["step"] * args.batch_size / first["images_per_s"]),
        "train_time_s": result.wall_time,
    }


def check_same_start(checkpoint: str, data_root: str, num_classes: int) -> float:
    """Max |logits difference| of the model our trainer starts from and timm's, on test images, each through
    its own preprocessing (our image processor, timm's evaluation transform)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from hf_vit_flax.training.models import load_model

    id2label = {i: str(i) for i in range(num_classes)}
    ours, _ = load_model(checkpoint, id2label)
    reference = timm.create_model(f"local-dir:{checkpoint}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=reference), is_training=False)
    paths = [
        os.path.join(data_root, "test", c, sorted(os.listdir(os.path.join(data_root, "test", c)))[0])
        for c in sorted(os.listdir(os.path.join(data_root, "test")))
    ]
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.inference_mode():
        expected = reference(torch.stack([transform(im) for im in images])).numpy()
    pixels = ours.image_processor([np.asarray(im) for im in images], return_tensors="np")["pixel_values"]
    got = np.asarray(ours(pixels).logits)
    return float(np.abs(got - expected).max())


def environment() -> dict:
    import jax
    import timm
    import torch

    import hf_vit_flax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "hf_vit_flax": getattr(hf_vit_flax, "__version__", None),
        },
    }


def write_markdown(path: str, results: dict) -> None:
    t, o, r = results["timm"], results["ours"], results["recipe"]
    env = results["environment"]
    lines = [
        "# Fine-tuning a timm checkpoint: hf_vit_flax.training against timm",
        "",
        f"`python -m benchmarks.finetune_vs_timm`, {results['date']}.",
        "",
        f"* Checkpoint: timm `{ARCH}` at {r['image_size']}x{r['image_size']} with {r['patch_size']}x{r['patch_size']} "
        f"patches, {r['num_classes']} classes, randomly initialised once (seed {r['seed']}) and saved in timm's Hub "
        "format; both runs start from it (max |logits difference| at the start: "
        f"{results['start_logits_max_abs_diff']:.1e}).",
        f"* Data: scikit-learn digits as an image folder of PNG files upscaled to {r['image_size']}x{r['image_size']}: "
        f"{results['data']['train']} training, {results['data']['test']} test images (fixed stratified 20% split).",
        f"* Recipe (both): AdamW, peak lr {r['lr']}, weight decay {r['weight_decay']} (not on biases, norms, position "
        f"embedding, class token), {r['warmup_steps']} warmup steps then cosine to 0 stepped per update (max "
        f"|lr difference| {results['lr_max_abs_diff']:.1e}), label smoothing {r['label_smoothing']}, batch "
        f"{r['batch_size']}, {r['epochs']} epochs ({r['steps']} steps), no augmentation, no clipping, no dropout.",
        "* Data order: "
        + (
            "the same batches in the same order for both (timm's loop reads the order of hf_vit_flax.training)."
            if r.get("data_order", "own") == "same"
            else "each loop shuffles with its own generator (timm's DataLoader, grain)."
        ),
        f"* Threads: one core (affinity {env['affinity']}), torch {env['torch_threads']} thread, XLA_FLAGS "
        f"`{env['xla_flags']}`.",
        f"* CPU: {env['cpu']}. Load before: `{results['load_before']}`; after: `{results['load_after']}`.",
        "",
        f"| | test accuracy | final train loss (steps {o['final_window'][0] + 1}-{o['final_window'][1]}) | step time (steady state) | first 10 steps | training wall time |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, x in (("timm (PyTorch eager)", t), ("hf_vit_flax.training", o)):
        lines.append(
            f"| {name} | {x['accuracy']:.2%} ({x['correct']}/{x['total']}) | {x['final_train_loss']:.4f} | "
            f"{x['step_time_s'] * 1000:.0f} ms | {x['first_steps_s']:.1f} s | {x['train_time_s']:.1f} s |"
        )
    lines += [
        "",
        f"* Accuracy difference (ours - timm): **{results['accuracy_diff_pp']:+.2f} percentage points** "
        f"(target: within 0.5; {'met' if results['accuracy_target_met'] else 'not met'}).",
        f"* Step-time ratio (timm / ours): **{results['step_time_ratio']:.2f}x** (target: >= 1.0; "
        f"{'met' if results['speed_target_met'] else 'not met'}).",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-order",
        choices=("same", "own"),
        default="same",
        help="same: timm's loop reads hf_vit_flax.training's batches in its order, so only the implementations "
        "differ; own: each loop shuffles with its own generator (adds the sampling noise of two data orders)",
    )
    parser.add_argument("--workdir", default=None, help="where the image folder, checkpoint and run go (a temp dir)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "finetune_vs_timm"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    load_before = uptime()
    workdir = args.workdir or tempfile.mkdtemp(prefix="finetune-vs-timm-")
    data_root, checkpoint = os.path.join(workdir, "digits"), os.path.join(workdir, "timm-vit-tiny")
    counts = write_digits_folder(data_root, args.image_size)
    save_checkpoint(checkpoint, args.image_size, args.patch_size, 10, args.seed)

    steps_per_epoch = counts["train"] // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch

    from hf_vit_flax.training.optim import learning_rate_schedule

    ours_schedule = learning_rate_schedule(args.lr, total_steps, warmup_steps)
    lr_diff = max(
        abs(float(ours_schedule(step)) - lr)
        for step, lr in enumerate(timm_schedule_lrs(args.lr, args.epochs, steps_per_epoch, warmup_steps))
    )
    start_diff = check_same_start(checkpoint, data_root, 10)
    print(f"same start: max |logits diff| {start_diff:.2e}; max |lr diff| {lr_diff:.2e}", flush=True)

    timm_result = run_timm(checkpoint, data_root, args, warmup_steps)
    print(f"timm: { {k: v for k, v in timm_result.items() if k != 'losses'} }", flush=True)
    ours_result = run_ours(checkpoint, data_root, os.path.join(workdir, "run"), args, warmup_steps, total_steps)
    print(f"ours: {ours_result}", flush=True)
    load_after = uptime()
    # Both final losses over the same steps: the mean of timm's per-step losses over ours' last window.
    first, last = ours_result["final_window"]
    timm_result["final_train_loss"] = float(np.mean(timm_result.pop("losses")[first:last]))

    diff_pp = 100 * (ours_result["accuracy"] - timm_result["accuracy"])
    ratio = timm_result["step_time_s"] / ours_result["step_time_s"]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "recipe": {
            "architecture": ARCH,
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "num_classes": 10,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps": total_steps,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_steps": warmup_steps,
            "label_smoothing": args.label_smoothing,
            "seed": args.seed,
            "data_order": args.data_order,
            "augmentation": "none",
            "clip_norm": None,
        },
        "data": counts,
        "start_logits_max_abs_diff": start_diff,
        "lr_max_abs_diff": lr_diff,
        "timm": timm_result,
        "ours": ours_result,
        "accuracy_diff_pp": diff_pp,
        "accuracy_target_met": abs(diff_pp) <= 0.5,
        "step_time_ratio": ratio,
        "speed_target_met": ratio >= 1.0,
        "load_before": load_before,
        "load_after": load_after,
        "environment": environment(),
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.finetune_vs_timm", *(argv or [])]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    write_markdown(args.output + ".md", results)
    print(open(args.output + ".md", encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
