"""Test helpers: reference models with weights that exercise every mapping, and comparisons."""

from __future__ import annotations

import numpy as np

from benchmarks.readme_examples import README, seed_readme_examples  # noqa: F401 (re-exported for the tests)

PARITY_ATOL = 1e-5


def crossvit_config(shared: dict, sm: dict, lg: dict) -> dict:
    """CrossViT keyword arguments from the options both branches share and each branch's own, the latter without
    their ``sm_`` / ``lg_`` prefix (``sm=dict(dim=16)`` is ``sm_dim=16``): a configuration reads as one row per
    branch."""
    branches = {
        f"{prefix}_{key}": value for prefix, branch in (("sm", sm), ("lg", lg)) for key, value in branch.items()
    }
    return {**shared, **branches}


# A CaiT of 2 + 2 layers of width 32 on 32x32 images: parity with vit-pytorch and its weights' round trip.
CAIT_SMALL = dict(
    image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, cls_depth=2, heads=2, mlp_dim=64, dim_head=16
)


# One small valid config per family (keyword arguments of its config class): 32x32 RGB images, 3 classes.
TINY_CONFIGS = {
    "vit": dict(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=32),
    "cait": dict(
        image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, cls_depth=1, heads=2, dim_head=16, mlp_dim=32
    ),
    "crossvit": crossvit_config(
        dict(
            image_size=32,
            num_classes=3,
            depth=1,
            cross_attn_heads=2,
            cross_attn_dim_head=8,
            dropout=0.0,
            emb_dropout=0.0,
        ),
        sm=dict(dim=16, patch_size=4, enc_heads=2, enc_dim_head=8, enc_mlp_dim=32),
        lg=dict(dim=32, patch_size=8, enc_heads=2, enc_dim_head=8, enc_mlp_dim=32),
    ),
    # Stage maps 8, 4, 2, 1 at 32x32: windows that tile them.
    "crossformer": dict(
        image_size=32,
        num_classes=3,
        dim=(16, 16, 32, 32),
        depth=1,
        dim_head=8,
        local_window_size=(2, 2, 2, 1),
        global_window_size=(2, 2, 1, 1),
        cross_embed_kernel_sizes=((4, 8), (2, 4), (2, 4), (2, 4)),
    ),
}

# A small vit-pytorch CrossViT whose branches differ in width (its cross attention projects in and out): two
# multi-scale layers, the large branch two blocks deep.
CROSSVIT_DIFFERENT_WIDTHS = crossvit_config(
    dict(image_size=32, num_classes=5, depth=2, cross_attn_heads=2, cross_attn_dim_head=8),
    sm=dict(dim=16, patch_size=8, enc_heads=2, enc_mlp_dim=32, enc_dim_head=8),
    lg=dict(dim=24, patch_size=16, enc_depth=2, enc_heads=3, enc_mlp_dim=48, enc_dim_head=8),
)

# NCHW pixel_values that a wrapper configured for 32x32 RGB images must refuse, and what its error says.
BAD_PIXEL_VALUES = [
    ((2, 32, 32, 3), "NHWC"),
    ((2, 1, 32, 32), "3-channel"),
    ((2, 3, 64, 64), "configured for 32x32"),
    ((3, 32, 32), "expects pixel_values of shape"),
]


def randomize_(module, seed: int = 0):
    """Give every parameter of a torch module values that make a wrong mapping visible.

    LayerNorm scales ~ 1 + 0.2 N(0, 1) and biases ~ 0.2 N(0, 1) (a swapped scale/bias or a missing
    bias changes the output), matrices ~ N(0, 1/fan_in) so that logits stay O(1).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim <= 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(max(fan_in, 1)))
    return module.eval()


def labelled_config(name: str, **kwargs):
    """A ``ViTConfig`` whose three labels, "<name> 0" ..., say which model a checkpoint holds."""
    from hf_vit_flax import ViTConfig

    return ViTConfig(**kwargs, id2label={i: f"{name} {i}" for i in range(3)})


def which_save(folder, x, candidates: dict) -> str:
    """Load ``folder`` and tell which candidate model it is (by name, see :func:`labelled_config`); the config's
    labels must agree with the weights."""
    from hf_vit_flax import FlaxViTForImageClassification

    loaded = FlaxViTForImageClassification.from_pretrained(folder)
    label = loaded.config.id2label[0].split()[0]
    np.testing.assert_array_equal(loaded(x).logits, candidates[label](x).logits)
    return label


def torch_logits(module, images_nchw: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(torch.from_numpy(images_nchw)).float().numpy()


def assert_same_state(loaded, original, unused: tuple[str, ...] = ()) -> None:
    """The torch module ``loaded`` holds every tensor of ``original`` bit for bit, with its dtype (but those
    under the prefixes ``unused``)."""
    from hf_vit_flax.conversion_utils import to_numpy

    got, want = to_numpy(loaded.state_dict()), to_numpy(original.state_dict())
    assert sorted(got) == sorted(want)
    for key in want:
        if not key.startswith(unused):
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def timm_export_loaded(architecture: str, kwargs: dict, folder, seed: int):
    """A random-weight timm model converted with ``from_timm``, exported to ``folder`` with ``export(model,
    "timm", ...)`` and loaded back by timm itself (``local-dir:``), which must hold the same tensors:
    returns (the original, the Flax model, the loaded one)."""
    import timm

    import hf_vit_flax

    original = randomize_(timm.create_model(architecture, pretrained=False, **kwargs), seed=seed).eval()
    model = hf_vit_flax.from_timm(original)
    hf_vit_flax.export(model, "timm", folder)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert_same_state(loaded, original)
    return original, model, loaded


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def assert_parity(ours, reference, atol: float = PARITY_ATOL):
    diff = max_abs_diff(ours, reference)
    scale = float(np.max(np.abs(reference)))
    assert scale > 0.1, f"reference logits are too small to be a meaningful test (max |logit| = {scale})"
    assert diff <= atol, f"max |logits difference| {diff:.3e} > {atol:.0e} (max |logit| {scale:.2f})"
    return diff


def images(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """NCHW float32 test images."""
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(np.float32)
