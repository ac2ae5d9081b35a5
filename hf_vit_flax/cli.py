"""``hf-vit-flax``: the command line.

  hf-vit-flax convert SOURCE --output-dir DIR [--image-size N] [--push-to-hub REPO_ID] [--verify]
  hf-vit-flax export MODEL --to transformers --output-dir DIR [--overwrite]
  hf-vit-flax predict MODEL IMAGE [IMAGE ...] [--top-k K]
  hf-vit-flax train [MODEL] --data DATA --output-dir DIR [--epochs N | --steps N] [--batch-size B] [--lr LR] ...
  hf-vit-flax demo [--output-dir DIR]

SOURCE is ``timm:<name>[.<tag>]`` (a timm checkpoint on the Hub), a local timm-format folder or
weights file (with ``--architecture`` when no timm config.json is next to it),
``transformers:<repo-or-path>`` (a checkpoint in transformers' own format, e.g.
``transformers:google/vit-base-patch16-224``), or ``crossformer:<path>`` with ``--variant t|s|b|l`` or
``--config CONFIG.json`` (the original CrossFormer release).

``export`` writes MODEL (a saved folder or Hub repo id, or a ``timm:`` / ``transformers:`` source) in a
PyTorch library's own format: ``--to transformers`` gives a folder that transformers'
``ViTForImageClassification.from_pretrained`` (or the DeiT / ViTModel class its config.json names) loads.

A user error (a missing or unreadable file, a bad argument, a full disk) is one ``error:`` line on
stderr and exit status 2; ``--debug`` adds the traceback. Anything else is a bug: traceback, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import shutil
import sys
import traceback

# What a user can cause: bad files and arguments (ValueError, OSError), an architecture or option
# not supported (NotImplementedError), an optional dependency missing (ImportError).
USER_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)


def _convert(args: argparse.Namespace) -> int:
    from hf_vit_flax.sources import Source
    from hf_vit_flax.verify import PUSH_TOLERANCE

    source = Source.parse(
        args.source,
        variant=args.variant,
        architecture=args.architecture,
        image_size=args.image_size,
        config=args.config,
    )
    _refuse_overwriting_source(source, args.output_dir)
    model = source.convert()
    print(f"converted {args.source} -> {type(model).__name__} ({model.num_parameters_exact:,} parameters)")
    parity = None
    if args.verify:
        parity = source.verify(model)
        model.card_data["parity"] = parity
        print(f"max |logits difference| against the original: {parity:.3e}")
    _save(model, args.output_dir, repo_id=args.push_to_hub)
    print(f"saved to {args.output_dir}")
    if args.push_to_hub:
        if parity is not None and parity > PUSH_TOLERANCE:
            print(
                f"not pushing to {args.push_to_hub}: the difference {parity:.3e} exceeds {PUSH_TOLERANCE:.0e}",
                file=sys.stderr,
            )
            return 1
        model.push_to_hub(args.push_to_hub)
        print(f"pushed to {args.push_to_hub}")
    return 0


def _refuse_overwriting_source(source, output_dir: str) -> None:
    """The converted files (config.json, model.safetensors ...) must not land in the folder of the files read."""
    out = os.path.realpath(output_dir)
    for path in source.local_files():
        real = os.path.realpath(path)
        if real == out:
            raise ValueError(
                f"--output-dir {output_dir} is the source folder: saving would overwrite it; choose another folder"
            )
        if os.path.dirname(real) == out:
            raise ValueError(
                f"--output-dir {output_dir} holds the source {path}, which saving could overwrite; choose another folder"
            )


def _save(model, output_dir: str, repo_id: str | None) -> None:
    """``save_pretrained``, leaving nothing half-written when it fails (e.g. on a full disk).

    A folder the save created is removed, and so is anything it added to an existing folder.
    """
    existed = os.path.exists(output_dir)
    before = set(os.listdir(output_dir)) if os.path.isdir(output_dir) else set()
    try:
        model.save_pretrained(output_dir, repo_id=repo_id)
    except BaseException as err:
        added = set(os.listdir(output_dir)) - before if existed and os.path.isdir(output_dir) else set()
        for name in added:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)
        if not existed:
            shutil.rmtree(output_dir, ignore_errors=True)
        # safetensors reports a write error as SafetensorError("... StorageFull ..."), not as an OSError.
        if not isinstance(err, OSError) and "No space left on device" in str(err):
            raise OSError(errno.ENOSPC, "No space left on device", output_dir) from err
        raise


def _export(args: argparse.Namespace) -> int:
    from hf_vit_flax.exporters import export

    model = _load_model(args.model)
    model_dir = args.model if os.path.isdir(args.model) else None
    if model_dir and os.path.realpath(model_dir) == os.path.realpath(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir} is the model's own folder; choose another folder")
    path = export(model, to=args.to, output_dir=args.output_dir, overwrite=args.overwrite)
    print(f"exported {type(model).__name__} ({model.num_parameters_exact:,} parameters) to {args.to}: {path}")
    return 0


def _load_model(spec: str):
    """A saved folder or Hub repo id (with its head when it has one), or a ``timm:`` / ``transformers:`` source."""
    from transformers import AutoConfig

    from hf_vit_flax import FlaxAutoModel, FlaxAutoModelForImageClassification
    from hf_vit_flax.hub import looks_like_path
    from hf_vit_flax.sources import Source

    if spec.startswith(("timm:", "transformers:")):
        return Source.parse(spec).convert()
    if not os.path.exists(spec) and looks_like_path(spec):
        raise FileNotFoundError(f"{spec} does not exist (a folder written by save_pretrained, or a Hub repo id)")
    config = AutoConfig.from_pretrained(spec)
    architectures = getattr(config, "architectures", None) or []
    has_head = getattr(config, "num_labels", 0) > 0 and (
        not architectures or any(a.endswith("ForImageClassification") for a in architectures)
    )
    return (FlaxAutoModelForImageClassification if has_head else FlaxAutoModel).from_pretrained(spec)


def _predict(args: argparse.Namespace) -> int:
    import hf_vit_flax  # noqa: F401  (registers the Auto classes)
    from hf_vit_flax import FlaxAutoModelForImageClassification
    from hf_vit_flax.predict import format_predictions, load_image

    images = [load_image(path) for path in args.images]
    _require_classifier(args.model)
    model = FlaxAutoModelForImageClassification.from_pretrained(args.model)
    print(format_predictions(args.images, model.predict(images, top_k=args.top_k)))
    return 0


def _require_classifier(name_or_path: str) -> None:
    """A checkpoint saved without a classification head would predict from a random one: refuse it."""
    from transformers import AutoConfig

    import hf_vit_flax  # noqa: F401  (registers the Auto classes)
    from hf_vit_flax.hub import looks_like_path

    if not os.path.exists(name_or_path) and looks_like_path(name_or_path):
        raise FileNotFoundError(f"{name_or_path} does not exist (a folder written by save_pretrained)")
    config = AutoConfig.from_pretrained(name_or_path)
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "num_labels", 0) <= 0 or (
        architectures and not any(a.endswith("ForImageClassification") for a in architectures)
    ):
        saved_as = f" (saved from Flax{architectures[0]})" if architectures else ""
        raise ValueError(
            f"{name_or_path} has no classification head{saved_as}: predict needs a model saved from a "
            f"Flax...ForImageClassification"
        )


def sample_image(path: str, size: int = 256) -> str:
    """Write a synthetic RGB test picture (gradients and a disc) to ``path``; no download needed."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((xx - 0.6) ** 2 + (yy - 0.4) ** 2 < 0.05).astype(float)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * disc], axis=-1)
    Image.fromarray((rgb * 255).astype("uint8")).save(path)
    return path


def _demo(args: argparse.Namespace) -> int:
    """Convert a checkpoint offline, save it, reload it through the Auto classes, classify a sample image.

    With timm installed, the checkpoint is timm's DeiT-Tiny built locally (random weights: nothing is
    downloaded), written in the timm Hub format and converted like any timm checkpoint, with the
    converted model verified against timm. Without timm, the small ViT of the ``vit-finetune-tiny`` variant
    is built instead.
    """
    import numpy as np

    import hf_vit_flax
    from hf_vit_flax import FlaxAutoModelForImageClassification
    from hf_vit_flax.predict import format_predictions, load_image

    os.makedirs(args.output_dir, exist_ok=True)
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None:
        from hf_vit_flax.sources import Source
        from hf_vit_flax.verify import save_timm_checkpoint

        checkpoint = save_timm_checkpoint(
            timm.create_model("deit_tiny_patch16_224", pretrained=False),
            os.path.join(args.output_dir, "timm-deit-tiny"),
        )
        print(f"wrote a timm checkpoint (deit_tiny_patch16_224, random weights) to {checkpoint}")
        source = Source.parse(str(checkpoint))
        model = source.convert()
        model.card_data["parity"] = parity = source.verify(model)
        print(f"converted to {type(model).__name__}; max |logits difference| against timm: {parity:.2e}")
    else:
        from hf_vit_flax.variants import variant_config

        print("timm is not installed (pip install -e '.[torch]'): building the small ViT vit-finetune-tiny instead")
        config = variant_config("vit-finetune-tiny", id2label={i: f"class_{i}" for i in range(10)})
        model = hf_vit_flax.FlaxViTForImageClassification(config, seed=0)
    model_dir = os.path.join(args.output_dir, "model")
    model.save_pretrained(model_dir)
    print(f"saved {model.num_parameters_exact:,} parameters to {model_dir}")
    reloaded = FlaxAutoModelForImageClassification.from_pretrained(model_dir)
    image = sample_image(os.path.join(args.output_dir, "sample.png"))
    predictions = reloaded.predict(image, top_k=3)
    print(f"reloaded as {type(reloaded).__name__} through FlaxAutoModelForImageClassification")
    print(format_predictions([image], predictions))
    x = reloaded.image_processor(load_image(image), return_tensors="np")["pixel_values"]
    same = np.array_equal(np.asarray(model(x).logits), np.asarray(reloaded(x).logits))
    print(f"logits identical after the round trip: {same}")
    return 0 if same else 1


def _train(args: argparse.Namespace) -> int:
    from hf_vit_flax.training import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.precision is None:
        values.pop("precision", None)
    result = train(TrainConfig(**values))
    print(result.summary())
    print(f"model: hf-vit-flax predict {result.output_dir} IMAGE")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-vit-flax", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    # Also accepted after the subcommand; SUPPRESS keeps a --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", parents=[debug], help="convert a timm, transformers or CrossFormer checkpoint to a Flax model folder"
    )
    convert.add_argument(
        "source",
        help="timm:<name>[.<tag>], a local timm folder/file, transformers:<repo-or-path>, or crossformer:<path>",
    )
    convert.add_argument("--output-dir", required=True)
    convert.add_argument(
        "--image-size", type=_positive_int, default=None, help="resample position embeddings to this size"
    )
    convert.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    convert.add_argument("--verify", action="store_true", help="compare with the original (needs torch and timm)")
    convert.add_argument("--variant", choices=["t", "s", "b", "l"], default=None, help="CrossFormer release variant")
    convert.add_argument("--config", default=None, help="CrossFormer: JSON config instead of --variant")
    convert.add_argument("--architecture", default=None, help="timm architecture of a local checkpoint")
    convert.set_defaults(run=_convert)

    from hf_vit_flax.exporters import EXPORTERS

    export = commands.add_parser(
        "export", parents=[debug], help="write a model in a PyTorch library's own format (e.g. transformers')"
    )
    export.add_argument(
        "model", help="a folder written by save_pretrained, a Hub repo id, timm:<name> or transformers:<id>"
    )
    export.add_argument("--to", required=True, choices=sorted(EXPORTERS), help="the target library's format")
    export.add_argument("--output-dir", required=True, help="written atomically: complete, or not at all")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", parents=[debug], help="classify images with a saved model or a Hub repo")
    predict.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top-k", type=_positive_int, default=5)
    predict.set_defaults(run=_predict)

    train = commands.add_parser(
        "train",
        parents=[debug],
        help="fine-tune a model on an image folder, a Hugging Face dataset or digits",
        description="Fine-tune MODEL on DATA; the best model by validation accuracy is saved to --output-dir "
        "(save_pretrained), with checkpoints that a re-run of the same command resumes from.",
    )
    train.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a saved folder or Hub repo, timm:<name>, transformers:<repo-or-path>, crossformer:<path>, "
        "or a variant of configs/ (default: a small ViT suited to the data)",
    )
    train.add_argument(
        "--data", required=True, help="digits, an image folder, or a Hugging Face dataset (name or folder)"
    )
    train.add_argument("--output-dir", required=True)
    train.add_argument(
        "--epochs", type=_positive_int, default=None, help="default 10 (30 for digits without MODEL), or --steps"
    )
    train.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (instead of --epochs)")
    train.add_argument("--batch-size", type=_positive_int, default=None, help="global batch (default 64)")
    train.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 2e-3 without MODEL, else 5e-4)"
    )
    train.add_argument("--weight-decay", type=_fraction, default=None, help="default 0.05")
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default=None)
    train.add_argument("--momentum", type=_fraction, default=None, help="SGD momentum (default 0.9)")
    train.add_argument(
        "--warmup", type=_fraction, default=None, help="steps, or a fraction of the run < 1 (default 0.1)"
    )
    train.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay (e.g. 0.75)")
    train.add_argument("--clip-norm", type=float, default=None, help="gradient clipping (default 1.0)")
    train.add_argument("--label-smoothing", type=_fraction, default=None, help="default 0.1")
    train.add_argument("--grad-accum", type=_positive_int, default=None, help="micro-batches per step (default 1)")
    train.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="computation dtype (default fp32)")
    train.add_argument("--gradient-checkpointing", action="store_true", default=None)
    train.add_argument(
        "--freeze-backbone", action="store_true", default=None, help="linear probing: train the head only"
    )
    train.add_argument(
        "--augment",
        choices=["crop-flip", "crop", "none"],
        default=None,
        help="training augmentation (default: crop-flip; crop for digits: they are not mirror-symmetric)",
    )
    train.add_argument("--val-fraction", type=float, default=None, help="held out when the data has no split (0.1)")
    train.add_argument("--image-size", type=_positive_int, default=None, help="input size of a variant or timm model")
    train.add_argument(
        "--variant",
        dest="crossformer_variant",
        choices=["t", "s", "b", "l"],
        default=None,
        help="CrossFormer release variant of a crossformer: MODEL",
    )
    train.add_argument("--eval-every", type=_positive_int, default=None, help="steps (default: each epoch)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps (default: each evaluation)")
    train.add_argument("--keep-checkpoints", type=_positive_int, default=None, help="default 2")
    train.add_argument(
        "--on-bad-image", choices=["skip", "error"], default=None, help="unreadable images (default skip)"
    )
    train.add_argument("--fsdp", action="store_true", default=None, help="shard parameters and optimizer state too")
    train.add_argument("--workers", type=_positive_int, default=None, help="image reading threads (default 2)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    train.add_argument("--coordinator-address", default=None, help="multi-host: host:port of process 0")
    train.add_argument("--num-processes", type=_positive_int, default=None, help="multi-host: number of processes")
    train.add_argument("--process-id", type=int, default=None, help="multi-host: this process's id")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    train.set_defaults(run=_train)

    demo = commands.add_parser("demo", parents=[debug], help="offline end-to-end run: build, save, reload, classify")
    demo.add_argument("--output-dir", default="hf-vit-flax-demo")
    demo.set_defaults(run=_demo)
    return parser


def _describe(err: BaseException, args: argparse.Namespace) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        output_dir = getattr(args, "output_dir", None)
        where = output_dir or err.filename
        return f"the disk is full{f' at {where}' if where else ''}; free space" + (
            " or choose another --output-dir" if output_dir else ""
        )
    if isinstance(err, OSError) and err.strerror and err.filename:  # "[Errno 13] Permission denied: 'x'"
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"hf-vit-flax {args.command}: error: {_describe(err, args)}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(
            f"hf-vit-flax {args.command}: internal error (a bug in hf-vit-flax): please report it with the command "
            f"and the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
