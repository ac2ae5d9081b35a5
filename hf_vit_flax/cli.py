"""``hf-vit-flax``: the command line.

  hf-vit-flax convert SOURCE --output-dir DIR [--image-size N] [--push-to-hub REPO_ID] [--verify]
  hf-vit-flax predict MODEL IMAGE [IMAGE ...] [--top-k K]
  hf-vit-flax demo [--output-dir DIR]

SOURCE is ``timm:<name>[.<tag>]`` (a timm checkpoint on the Hub), a local timm-format folder or
weights file (with ``--architecture`` when no timm config.json is next to it), or
``crossformer:<path>`` with ``--variant t|s|b|l`` or ``--config CONFIG.json`` (the original
CrossFormer release).
"""

from __future__ import annotations

import argparse
import os
import sys


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
    model = source.convert()
    print(f"converted {args.source} -> {type(model).__name__} ({model.num_parameters_exact:,} parameters)")
    parity = None
    if args.verify:
        parity = source.verify(model)
        model.card_data["parity"] = parity
        print(f"max |logits difference| against the original: {parity:.3e}")
    model.save_pretrained(args.output_dir, repo_id=args.push_to_hub)
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


def _predict(args: argparse.Namespace) -> int:
    import hf_vit_flax  # noqa: F401  (registers the Auto classes)
    from hf_vit_flax import FlaxAutoModelForImageClassification
    from hf_vit_flax.predict import format_predictions, load_image

    images = [load_image(path) for path in args.images]
    model = FlaxAutoModelForImageClassification.from_pretrained(args.model)
    print(format_predictions(args.images, model.predict(images, top_k=args.top_k)))
    return 0


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
    converted model verified against timm. Without timm, a small ViT is built from a config instead.
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
        print("timm is not installed (pip install -e '.[torch]'): building a small ViT from a config instead")
        config = hf_vit_flax.ViTConfig(
            image_size=224, patch_size=16, num_classes=10, dim=192, depth=4, heads=3, mlp_dim=768,
            id2label={i: f"class_{i}" for i in range(10)},
        )  # fmt: skip
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-vit-flax", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a timm or CrossFormer checkpoint to a Flax model folder")
    convert.add_argument("source", help="timm:<name>[.<tag>], a local timm folder/file, or crossformer:<path>")
    convert.add_argument("--output-dir", required=True)
    convert.add_argument("--image-size", type=int, default=None, help="resample position embeddings to this size")
    convert.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    convert.add_argument("--verify", action="store_true", help="compare with the original (needs torch and timm)")
    convert.add_argument("--variant", choices=["t", "s", "b", "l"], default=None, help="CrossFormer release variant")
    convert.add_argument("--config", default=None, help="CrossFormer: JSON config instead of --variant")
    convert.add_argument("--architecture", default=None, help="timm architecture of a local checkpoint")
    convert.set_defaults(run=_convert)

    predict = commands.add_parser("predict", help="classify images with a saved model or a Hub repo")
    predict.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="offline end-to-end run: build, save, reload, classify")
    demo.add_argument("--output-dir", default="hf-vit-flax-demo")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, NotImplementedError, ImportError) as err:
        print(f"hf-vit-flax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
