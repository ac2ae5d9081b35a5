"""What ``predict`` takes: files, PIL images of every mode, arrays; thin, rotated, 16-bit and broken
images; bad ``top_k``; empty batches (every family); a model with corrupt weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from PIL import Image

import hf_vit_flax
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.predict import load_image, predict

from .helpers import TINY_CONFIGS

CORE_MODULES = {
    "vit": hf_vit_flax.ViT,
    "cait": hf_vit_flax.CaiT,
    "crossvit": hf_vit_flax.CrossViT,
    "crossformer": hf_vit_flax.CrossFormer,
}


@pytest.fixture(scope="module")
def model():
    config = hf_vit_flax.ViTConfig(**{**TINY_CONFIGS["vit"], "num_classes": 5})
    return hf_vit_flax.FlaxViTForImageClassification(config, seed=0)


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference(model, images: list[np.ndarray], top_k: int = 5) -> list[list[dict]]:
    """The ranking of RGB uint8 HWC arrays, preprocessed with the layout stated and classified by hand."""
    pixels = model.image_processor(images, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    probs = np.asarray(jax.nn.softmax(np.asarray(model(pixels).logits, np.float32), axis=-1))
    return [
        [{"label": model.config.id2label[int(i)], "score": float(row[i])} for i in np.argsort(-row, kind="stable")]
        for row in probs
    ]


def same(a, b) -> bool:
    return [[p["label"] for p in r] for r in a] == [[p["label"] for p in r] for r in b] and np.allclose(
        [[p["score"] for p in r] for r in a], [[p["score"] for p in r] for r in b], atol=1e-6
    )


# -- layout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(3, 50), (1, 40), (2, 30), (50, 3), (40, 1)])
def test_thin_images_are_read_channels_last(model, height, width, tmp_path):
    image = rgb(height, width)
    expected = reference(model, [image])
    assert same(predict(model, image), expected)
    assert same(predict(model, Image.fromarray(image)), expected)
    Image.fromarray(image).save(tmp_path / "thin.png")
    assert same(predict(model, str(tmp_path / "thin.png")), expected)


def test_a_batch_of_mixed_inputs(model, tmp_path):
    images = [rgb(3, 50, 1), rgb(40, 60, 2), rgb(1, 40, 3)]
    Image.fromarray(images[1]).save(tmp_path / "b.png")
    mixed = [images[0], tmp_path / "b.png", Image.fromarray(images[2])]
    assert same(predict(model, mixed), reference(model, images))


# -- PIL modes, EXIF, 16-bit, broken files ----------------------------------------------------------


def gray(height: int = 24, width: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def stacked(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


def pil_in_mode(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A PIL image of ``mode`` and the RGB uint8 array predict must see for it."""
    g, color = gray(), rgb(24, 20)
    if mode == "L":
        return Image.fromarray(g), stacked(g)
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(g), Image.fromarray(gray(seed=1))]), stacked(g)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([color, gray(seed=1)])), color
    if mode in ("P", "CMYK"):
        image = Image.fromarray(color).convert(mode)
        return image, np.asarray(image.convert("RGB"))
    if mode == "I;16":  # full 16-bit range, scaled (convert("RGB") would clip everything above 255 to white)
        g16 = g.astype(np.uint16) * 257
        return Image.fromarray(g16), stacked(g)
    if mode == "I":
        return Image.fromarray(g.astype(np.int32) * 257), stacked(g)
    if mode == "F":
        return Image.fromarray(g.astype(np.float32) / 255), stacked(g)
    raise AssertionError(mode)


MODES = ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"]
SAVE_AS = {"L": "png", "LA": "png", "P": "png", "RGBA": "png", "CMYK": "tiff", "I;16": "png", "I": "tiff", "F": "tiff"}


@pytest.mark.parametrize("mode", MODES)
def test_pil_images_of_every_mode(model, mode, tmp_path):
    image, expected_rgb = pil_in_mode(mode)
    assert image.mode == mode
    expected = reference(model, [expected_rgb])
    assert same(predict(model, image), expected)
    # The same image given as a file gives the same answer.
    path = tmp_path / f"image.{SAVE_AS[mode]}"
    image.save(path)
    assert Image.open(path).mode == mode
    assert same(predict(model, str(path)), expected)


def test_16_bit_png_is_scaled_not_clipped(model, tmp_path):
    ramp = np.linspace(0, 65535, 32 * 40).reshape(32, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    expected_rgb = stacked(np.round(ramp / 257).astype(np.uint8))
    assert same(predict(model, str(tmp_path / "deep.png")), reference(model, [expected_rgb]))
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "deep.png")), expected_rgb)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
@pytest.mark.parametrize("orientation, rotate", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(model, suffix, orientation, rotate, tmp_path):
    image = Image.fromarray(rgb(24, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 = rotate 90 clockwise to view, 8 = counter-clockwise, 3 = 180
    path = tmp_path / f"phone.{suffix}"
    image.save(path, exif=exif.tobytes())
    with Image.open(path) as stored:
        assert stored.getexif().get(0x0112) == orientation
        upright = np.rot90(np.asarray(stored.convert("RGB")), k=rotate)  # what the viewer shows
    assert same(predict(model, str(path)), reference(model, [np.ascontiguousarray(upright)]))
    with Image.open(path) as stored:
        assert same(predict(model, stored), reference(model, [np.ascontiguousarray(upright)]))


def test_a_decompression_bomb_is_a_value_error_naming_the_file(model, tmp_path, monkeypatch):
    Image.fromarray(rgb(64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"cannot read image .*bomb\.png.*MAX_IMAGE_PIXELS"):
        predict(model, str(tmp_path / "bomb.png"))


@pytest.mark.parametrize("content", [b"", b"not an image", "truncated"])
def test_unreadable_files_are_a_value_error_naming_the_file(model, content, tmp_path):
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.fromarray(rgb(64, 64)).save(path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        predict(model, str(path))
    with pytest.raises(ValueError, match=r"cannot read image .*missing\.png"):
        predict(model, str(tmp_path / "missing.png"))


# -- arrays -------------------------------------------------------------------------------------------


def test_arrays_of_every_accepted_kind(model):
    color, g = rgb(24, 20), gray()
    expected = reference(model, [color])
    assert same(predict(model, color.astype(np.float32) / 255), expected)  # floats in [0, 1]
    assert same(predict(model, color.astype(np.float64)), expected)  # floats in 0..255
    assert same(predict(model, color.astype(np.int64)), expected)  # 8-bit values of another integer type
    assert same(predict(model, color.astype(np.uint16) * 257), expected)  # 16-bit
    assert same(predict(model, np.dstack([color, g])), expected)  # RGBA: alpha dropped
    assert same(predict(model, g), reference(model, [stacked(g)]))  # HW grayscale
    assert same(predict(model, g[..., None]), reference(model, [stacked(g)]))  # HW1
    assert same(predict(model, np.stack([color, color])), expected + expected)  # an NHWC batch


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros(10, np.uint8), "has shape \\(10,\\): expected an HWC array"),
        (np.zeros((24, 20, 2), np.uint8), "expected an HWC array with 1, 3 or 4"),
        (np.zeros((24, 20, 5), np.uint8), "expected an HWC array with 1, 3 or 4"),
        (np.zeros((3, 24, 20), np.uint8), "channels-first"),
        (np.zeros((0, 20, 3), np.uint8), "is empty"),
        (np.full((24, 20, 3), np.nan, np.float32), "non-finite"),
        (np.full((24, 20, 3), np.inf, np.float32), "non-finite"),
        (np.full((24, 20, 3), -0.5, np.float32), "floats from -0.5"),
        (np.full((24, 20, 3), 300.0, np.float32), "floats from 300"),
        (np.full((24, 20, 3), 70000, np.int32), "integers from 70000"),
        (np.full((24, 20, 3), "a", object), "dtype object"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_arrays_are_a_clear_error(model, array, match):
    with pytest.raises(ValueError, match=match):
        predict(model, [rgb(10, 10), array])
    with pytest.raises(ValueError, match="image 1"):
        predict(model, [rgb(10, 10), array])


@pytest.mark.parametrize("top_k", [0, -1, True, 2.0, "3"])
def test_top_k_must_be_a_positive_integer(model, top_k):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        predict(model, rgb(10, 10), top_k=top_k)


def test_top_k_is_capped_at_the_number_of_labels(model):
    assert [len(r) for r in predict(model, rgb(10, 10), top_k=1)] == [1]
    assert [len(r) for r in predict(model, rgb(10, 10), top_k=np.int64(100))] == [5]


def test_non_finite_logits_are_an_error_not_a_ranking(model):
    params = model.module_params()["params"]
    params["head"]["bias"] = jnp.full_like(params["head"]["bias"], jnp.nan)
    corrupt = hf_vit_flax.FlaxViTForImageClassification.from_params(model.config, params)
    with pytest.raises(ValueError, match=r"non-finite logits .* image\(s\) \[0, 1\].* corrupt"):
        predict(corrupt, [rgb(10, 10), rgb(12, 12)])


# -- empty batches ------------------------------------------------------------------------------------

# Per family, a variant beside the tiny config whose layers flatten or regroup tokens differently.
EMPTY_BATCH_VARIANTS = {
    "vit": dict(patch_embedding="conv", pool="map", reg_tokens=1),
    "cait": dict(style="timm"),
    "crossvit": dict(
        style="timm",
        sm_enc_dim_head=8,
        lg_enc_heads=4,
        cross_attn_heads=None,
        cross_attn_dim_head=None,
        lg_image_size=48,
    ),
    "crossformer": dict(style="original", heads=(1, 1, 2, 2)),
}


@pytest.mark.parametrize("variant", ["tiny", "variant"])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_batch_gives_empty_outputs(family, variant):
    kwargs = {**TINY_CONFIGS[family], **(EMPTY_BATCH_VARIANTS[family] if variant == "variant" else {})}
    config = FAMILIES[family].config_class(**kwargs)
    # Zero weights: a random initialisation compiles the whole model, and an empty batch reads no weight.
    classifier_class = FAMILIES[family].classifier_class
    shell = classifier_class(config, _do_init=False)
    shapes_only = shell.module_params(shell.params_shape_tree)["params"]
    classifier = classifier_class.from_params(config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes_only))
    empty = np.zeros((0, 3, 32, 32), np.float32)
    assert classifier(empty).logits.shape == (0, 3)  # one real run; the other paths are traced only

    def shapes(model, **kwargs):
        return jax.eval_shape(lambda p, x: model(x, params=p, **kwargs), model.params_shape_tree, empty)

    out = shapes(classifier, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (0, 3)
    assert all(leaf.shape[0] == 0 for leaf in jax.tree.leaves((out.hidden_states, out.attentions)))
    assert shapes(classifier, train=True, dropout_rng=jax.random.key(0)).logits.shape == (0, 3)
    base = FAMILIES[family].model_class(config, _do_init=False)
    assert all(leaf.shape[0] == 0 for leaf in jax.tree.leaves(shapes(base)))
    # The core module, NHWC.
    module = CORE_MODULES[family](**config.to_module_kwargs())
    variables = classifier.module_params()
    assert jax.eval_shape(module.apply, variables, jnp.zeros((0, 32, 32, 3))).shape == (0, 3)
    assert predict(classifier, []) == []
    assert predict(classifier, np.zeros((0, 32, 32, 3), np.uint8)) == []
