"""hf_vit_flax.from_timm: the variant table, Hub and local sources, labels, preprocessing, errors.

The per-feature parity of the ViT family lives in tests/models/test_vit_timm.py; here the
dispatcher itself is tested, including the torch-free path: a Hub repo served from an offline cache
is converted in a subprocess in which ``import torch`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import hf_vit_flax
from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel, ViTConfig
from hf_vit_flax.timm_weights import (
    _labels,
    image_processor_from_pretrained_cfg,
    imagenet_labels,
    list_timm_models,
    load_variant_config,
    timm_variant_info,
)
from hf_vit_flax.variants import configs_dir, variant_config_path
from tests.helpers import assert_parity, images, randomize_, torch_logits

ROOT = Path(__file__).resolve().parent.parent

# -- the variant table ---------------------------------------------------------------------------------


def test_list_timm_models():
    names = list_timm_models()
    assert {"vit_base_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224"} <= set(names)
    assert names == sorted(names) and all(
        n.startswith(("vit_", "deit_", "deit3_", "cait_", "crossvit_")) for n in names
    )
    tagged = list_timm_models(pretrained=True, prefix="deit3_")
    assert "deit3_small_patch16_224.fb_in22k_ft_in1k" in tagged
    assert all(name.split(".")[0] in names for name in tagged)
    # Every DeiT and DeiT III pretrained tag timm knows is supported.
    for prefix in ("deit_", "deit3_"):
        assert set(list_timm_models(pretrained=True, prefix=prefix)) == set(timm.list_pretrained(prefix + "*"))


def test_load_variant_config():
    config = load_variant_config("deit3_small_patch16_224.fb_in1k")
    assert isinstance(config, ViTConfig)
    assert (config.dim, config.depth, config.heads, config.layer_norm_eps) == (384, 12, 6, 1e-6)
    assert config.no_embed_class and config.layer_scale_init == 1e-6 and config.patch_embedding == "conv"
    assert load_variant_config("deit3_small_patch16_224", image_size=384).image_size == 384
    info = timm_variant_info("deit3_small_patch16_224")
    assert info["reference_num_params"] == 22_059_496  # timm's count of DeiT III-S
    assert info["pretrained"]["fb_in1k"]["license"] == "apache-2.0"


def test_variant_lookup_errors():
    assert variant_config_path("deit_tiny_patch16_224").parent == configs_dir()
    with pytest.raises(FileNotFoundError, match="did you mean"):
        variant_config_path("deit_tiny_patch16_225")
    with pytest.raises(ValueError, match="invalid variant name"):
        variant_config_path("../pyproject")


@pytest.mark.parametrize(
    "name, match",
    [
        ("vit_small_r26_s32_224.augreg_in21k_ft_in1k", "HybridEmbed"),  # recorded by the table generator
        ("vit_base_patch16_rope_224", "Eva"),
        ("vit_relpos_base_patch16_224", "VisionTransformerRelPos"),
        ("resnet50.a1_in1k", "belongs to no hf_vit_flax family"),
    ],
)
def test_unsupported_architectures_by_name(name, match):
    with pytest.raises(NotImplementedError, match=match):
        hf_vit_flax.from_timm(name)


def test_unknown_tag_and_bad_arguments():
    with pytest.raises(ValueError, match="no pretrained tag 'nope'.*fb_in1k"):
        hf_vit_flax.from_timm("deit_tiny_patch16_224.nope")
    with pytest.raises(TypeError, match="timm model name"):
        hf_vit_flax.from_timm(123)
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    with pytest.raises(TypeError, match="unknown keyword arguments"):
        hf_vit_flax.from_timm(module, not_an_option=1)
    with pytest.raises(ValueError, match="num_classes= can only be 0"):
        hf_vit_flax.from_timm(module, num_classes=5)


# -- labels and preprocessing ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1000, 11221, 11821, 21841, 21842, 21843])
def test_imagenet_labels_are_timms(num_classes):
    from timm.data import ImageNetInfo, infer_imagenet_subset

    info = ImageNetInfo(infer_imagenet_subset({"num_classes": num_classes}))
    labels = imagenet_labels(num_classes)
    assert labels == info.label_descriptions()
    assert len(labels) == num_classes


def test_label_choice():
    assert imagenet_labels(1000)[0] == "tench, Tinca tinca"
    assert imagenet_labels(10) is None
    synsets = timm.data.ImageNetInfo("imagenet-1k").label_names()
    assert _labels(1000, label_names=synsets)[1] == "goldfish, Carassius auratus"
    assert _labels(2, label_names=["cat", "dog"], label_descriptions={"cat": "a cat"}) == ["a cat", "dog"]
    assert _labels(2, label_names={"1": "dog", "0": "cat"}) == ["cat", "dog"]


@pytest.mark.parametrize(
    "pretrained, size",
    [
        ("deit3_small_patch16_224.fb_in1k", (300, 260)),  # crop_pct 0.9, bicubic
        ("deit_base_patch16_384.fb_in1k", (500, 420)),  # crop_pct 1.0
        ("vit_base_patch16_clip_224.openai_ft_in1k", (260, 300)),  # CLIP mean / std, crop_pct 1.0
        ("vit_medium_patch16_gap_384.sw_in12k_ft_in1k", (520, 440)),  # crop_mode 'squash': both edges to size / 0.95
        # bilinear, crop_pct 0.875. (An odd crop margin is split one pixel differently: transformers rounds
        # down, torchvision to nearest; these sizes give even margins.)
        ("vit_base_patch16_224_miil.in21k_ft_in1k", (300, 256)),
    ],
)
def test_image_processor_matches_timm_eval_transform(pretrained, size):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(pretrained).to_dict()
    processor = image_processor_from_pretrained_cfg(cfg)
    reference = create_transform(**resolve_data_config({}, pretrained_cfg=cfg))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = processor(image, return_tensors="np")["pixel_values"][0]
    expected = reference(image).numpy()
    assert ours.shape == expected.shape == (3, *cfg["input_size"][1:])
    np.testing.assert_allclose(ours, expected, atol=1e-5)


# -- sources --------------------------------------------------------------------------------------------


def test_live_module_built_from_its_class():
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    for cls in (VisionTransformer, VisionTransformerDistilled):
        module = randomize_(cls(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=7))
        assert not getattr(module, "pretrained_cfg", None)
        model = hf_vit_flax.from_timm(module)
        x = images(2, 32, 32)
        assert_parity(model(x).logits, torch_logits(module, x))
        assert model.config.id2label[0] == "LABEL_0"  # no ImageNet labels for a 7-class head


def test_headless_and_card(tmp_path):
    module = randomize_(
        timm.create_model(
            "deit3_small_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            embed_dim=48,
            depth=1,
            num_heads=3,
            num_classes=1000,
        )
    )
    model = hf_vit_flax.from_timm(module)
    assert model.config.id2label[0] == "tench, Tinca tinca"
    card = model.card_data
    assert card["license"] == "apache-2.0" and "Touvron" in card["citation"] and "Wightman" in card["citation"]
    assert card["tags"] == ["timm", "deit3_small_patch16_224"] and card["datasets"] == ["imagenet-1k"]
    model.save_pretrained(tmp_path / "m")
    readme = (tmp_path / "m" / "README.md").read_text()
    assert "license: apache-2.0" in readme and "DeiT III" in readme

    backbone = hf_vit_flax.from_timm(module, num_classes=0)
    assert isinstance(backbone, FlaxViTModel) and "head" not in backbone.params
    x = images(2, 32, 32)
    with torch.inference_mode():
        tokens = module.forward_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backbone(x).last_hidden_state, tokens, atol=1e-5)


def test_saved_image_processor_reloads_with_auto_class(tmp_path):
    from transformers import AutoImageProcessor

    module = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    model = hf_vit_flax.from_timm(module)
    assert type(model.image_processor).__name__.removesuffix("Pil") == "BitImageProcessor"
    assert dict(model.image_processor.size) == {"shortest_edge": 35} and model.image_processor.crop_size["height"] == 32
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoImageProcessor.from_pretrained(tmp_path / "m")
    assert (
        type(reloaded).__name__.removesuffix("Pil") == "BitImageProcessor"
        and reloaded.crop_size == model.image_processor.crop_size
    )
    from hf_vit_flax import FlaxAutoModelForImageClassification

    again = FlaxAutoModelForImageClassification.from_pretrained(tmp_path / "m")
    assert again.image_processor.to_dict() == model.image_processor.to_dict()
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    assert again.predict(image, top_k=2) == model.predict(image, top_k=2)


# -- the torch-free path: Hub repos from an offline cache, in a subprocess without torch -------------------

# (architecture, tag, input size): real timm architectures, random weights, the config.json of a timm
# Hub repo without model_args (as most are).
HUB_MODELS = [
    ("deit_tiny_distilled_patch16_224", "fb_in1k", 224),  # distilled head
    ("vit_xsmall_patch16_clip_224", "tinyclip_yfcc15m", 224),  # CLIP pre-norm, eps 1e-5, a 512-wide projection
    ("vit_wee_patch16_reg1_gap_256", "sbb_in1k", 256),  # register token, no_embed_class, LayerScale, avg + fc_norm
]

SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    try:
        import torch  # noqa: F401
        raise SystemExit("torch is importable in the torch-free environment")
    except ImportError:
        pass
    import numpy as np
    import hf_vit_flax
    out, models = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for name, size in models:
        model = hf_vit_flax.from_timm(name)
        x = np.load(f"{out}/{name}.npy")
        np.save(f"{out}/{name}.flax.npy", model(x).logits)
        results[name] = dict(
            cls=type(model).__name__, label0=model.config.id2label.get(0), card=model.card_data,
            processor=type(model.image_processor).__name__.removesuffix("Pil"), crop=dict(model.image_processor.crop_size),
        )
    try:
        hf_vit_flax.from_timm("deit_tiny_patch16_224.fb_in1k")  # its config.json has model_args
    except NotImplementedError as err:
        results["model_args_error"] = str(err)
    results["torch_imported"] = "torch" in sys.modules or "timm" in sys.modules
    json.dump(results, open(f"{out}/results.json", "w"))
    """
)


def site_packages_without_torch(folder: Path) -> Path:
    """A folder of links to this interpreter's site-packages, minus torch, torchvision, timm and vit-pytorch."""
    import sysconfig

    hidden = ("torch", "torchvision", "torchgen", "functorch", "timm", "vit_pytorch", "triton", "nvidia")
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top not in hidden and not entry.name.endswith(".pth"):
            (folder / entry.name).symlink_to(entry)
    return folder


def _hub_config(architecture: str, tag: str, num_classes: int, num_features: int, **extra) -> dict:
    pretrained = dict(timm_variant_info(architecture)["pretrained"][tag], tag=tag)
    pretrained.pop("hf_hub_id", None)
    return {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": num_features,
        "pretrained_cfg": pretrained,
        **extra,
    }


def _cache_repo(cache: Path, repo_id: str, files: dict) -> None:
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)


def test_hub_repos_from_offline_cache_without_torch(tmp_path):
    from safetensors.torch import save_file

    cache, work = tmp_path / "home" / "hub", tmp_path / "work"
    work.mkdir()
    expected, names = {}, []
    for i, (architecture, tag, size) in enumerate(HUB_MODELS):
        module = randomize_(timm.create_model(architecture, pretrained=False), seed=i)
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        config = _hub_config(architecture, tag, module.num_classes, module.num_features)
        _cache_repo(
            cache,
            f"timm/{architecture}.{tag}",
            {
                "config.json": lambda p, c=config: p.write_text(json.dumps(c)),
                "model.safetensors": lambda p, s=state: save_file(s, p),
            },
        )
        x = images(1, size, size, seed=i)
        np.save(work / f"{architecture}.{tag}.npy", x)
        expected[f"{architecture}.{tag}"] = torch_logits(module, x)
        names.append([f"{architecture}.{tag}", size])
    # A repo saved with architecture-changing model_args (needs timm to read).
    small = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2)
    config = _hub_config("deit_tiny_patch16_224", "fb_in1k", 1000, 192, model_args={"depth": 2})
    _cache_repo(
        cache,
        "timm/deit_tiny_patch16_224.fb_in1k",
        {
            "config.json": lambda p: p.write_text(json.dumps(config)),
            "model.safetensors": lambda p: save_file(dict(small.state_dict()), p),
        },
    )

    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "home"),
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=f"{site_packages_without_torch(tmp_path / 'site')}{os.pathsep}{ROOT}",
        JAX_PLATFORMS="cpu",
        JAX_DEFAULT_MATMUL_PRECISION="highest",
    )
    # -S: no site-packages but the shadow copy, in which torch, torchvision and timm do not exist.
    proc = subprocess.run(
        [sys.executable, "-S", "-c", SUBPROCESS, str(work), json.dumps(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    assert results["torch_imported"] is False
    assert "model_args" in results["model_args_error"] and "depth" in results["model_args_error"]
    for name, _ in names:
        assert_parity(np.load(work / f"{name}.flax.npy"), expected[name])
        assert results[name]["card"]["source"] == f"timm/{name}"
    assert results["deit_tiny_distilled_patch16_224.fb_in1k"]["label0"] == "tench, Tinca tinca"
    assert results["deit_tiny_distilled_patch16_224.fb_in1k"]["processor"] == "BitImageProcessor"
    assert results["vit_xsmall_patch16_clip_224.tinyclip_yfcc15m"]["label0"] == "LABEL_0"  # 512 outputs
    assert results["vit_wee_patch16_reg1_gap_256.sbb_in1k"]["crop"] == {"height": 256, "width": 256}


def test_default_tag_and_missing_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # Without a tag, timm's default (first) tag is used: its repo is not cached here.
    with pytest.raises(OSError, match="timm/deit_tiny_patch16_224.fb_in1k"):
        hf_vit_flax.from_timm("deit_tiny_patch16_224")


def test_legacy_config_layout(tmp_path):
    from safetensors.torch import save_file

    module = randomize_(timm.create_model("deit_tiny_patch16_224", pretrained=False), seed=8)
    save_file(dict(module.state_dict()), tmp_path / "model.safetensors")
    legacy = {
        "architecture": "deit_tiny_patch16_224",
        "num_classes": 1000,
        "input_size": [3, 224, 224],
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    model = hf_vit_flax.from_timm(tmp_path)
    assert (
        dict(model.image_processor.size) == {"shortest_edge": 256}
        and list(model.image_processor.image_mean) == [0.5] * 3
    )
    x = images(1, 224, 224)
    assert_parity(model(x).logits, torch_logits(module, x))


def test_local_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "deit_tiny_patch16_224"}))
    with pytest.raises(FileNotFoundError, match="holds no timm weights"):
        hf_vit_flax.from_timm(tmp_path)


def test_pretrained_classifier_is_the_flax_classifier():
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    assert isinstance(hf_vit_flax.from_timm(module), FlaxViTForImageClassification)


# -- every family that registers timm support goes through the same dispatcher ------------------------------


def _smallest_variant(family_name: str) -> str | None:
    sizes = {}
    for name in list_timm_models():
        info = timm_variant_info(name)
        if info["family"] == family_name and info.get("pretrained"):
            sizes[name] = info["reference_num_params"]
    return min(sizes, key=sizes.get) if sizes else None


@pytest.mark.parametrize("family", [name for name, f in hf_vit_flax.FAMILIES.items() if f.timm_prefixes])
def test_every_timm_family_through_the_dispatcher(family, tmp_path):
    from timm.models._hub import save_for_hf

    architecture = _smallest_variant(family)
    assert architecture is not None, f"no {family} variant in the table (run conversion/make_configs.py)"
    module = randomize_(timm.create_model(architecture, pretrained=False), seed=7)
    size = module.pretrained_cfg["input_size"][1:]
    x = images(1, *size)
    expected = torch_logits(module, x)
    model = hf_vit_flax.from_timm(module)
    assert isinstance(model, hf_vit_flax.FAMILIES[family].classifier_class)
    assert_parity(model(x).logits, expected)
    assert model.config.id2label[0] == "tench, Tinca tinca" and model.card_data["citation"]
    save_for_hf(module, tmp_path, safe_serialization=True)
    assert_parity(hf_vit_flax.from_timm(tmp_path)(x).logits, expected)
