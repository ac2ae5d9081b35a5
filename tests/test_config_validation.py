"""Every family's config refuses impossible values, with the field named, when built and when loaded.

Also: a config.json that is not a JSON object, the size limits (parameters and layers, with the
closed-form parameter count in the message), and that closed form against the real models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax
import numpy as np
import pytest
from transformers import AutoConfig

import hf_vit_flax
from hf_vit_flax.cli import main
from hf_vit_flax.configuration_utils import MAX_LAYERS_VARIABLE, MAX_PARAMETERS_VARIABLE
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.variants import configs_dir

from .helpers import TINY_CONFIGS

# Values no family takes, for the fields every family has: (field, value, what the error says).
COMMON_BAD_FIELDS = [
    ("image_size", 0, "image_size must be a positive integer"),
    ("image_size", -32, "image_size must be a positive integer"),
    ("image_size", 32.0, "image_size must be a positive integer"),
    ("image_size", "32", "image_size must be a positive integer"),
    ("image_size", True, "image_size must be a positive integer"),
    ("image_size", (32,), "image_size must be a positive integer or a \\(height, width\\) pair"),
    ("image_size", (32, 0), "image_size must be a positive integer"),
    ("channels", 0, "channels must be a positive integer"),
    ("channels", True, "channels must be a positive integer, got True \\(a bool\\)"),
    ("layer_norm_eps", 0.0, "layer_norm_eps must be a positive"),
    ("layer_norm_eps", -1e-6, "layer_norm_eps must be a positive"),
    ("layer_norm_eps", math.nan, "layer_norm_eps must be a positive"),
    ("layer_norm_eps", math.inf, "layer_norm_eps must be a positive"),
    ("num_classes", -1, "num_classes must be >= 0"),
    ("num_classes", 2.5, "num_classes must be >= 0 and an integer"),
    ("num_classes", True, "num_classes must be >= 0 and an integer"),
    ("image_mean", [0.5], "image_mean must be 3 finite numbers"),
    ("image_std", [0.5, 0.0, 0.5], "image_std must be positive"),
]

# Per family: (field, value, what the error says).
FAMILY_BAD_FIELDS = {
    "vit": [
        ("patch_size", 0, "patch_size must be a positive integer"),
        ("depth", True, "depth must be a positive integer, got True \\(a bool\\)"),
        ("depth", 2.5, "depth must be a positive integer, got 2.5"),
        ("depth", -1, "depth must be a positive integer"),
        ("heads", 0, "heads must be a positive integer"),
        ("mlp_dim", "64", "mlp_dim must be a positive integer"),
        ("dim_head", 1.5, "dim_head must be a positive integer"),
        ("reg_tokens", -1, "reg_tokens must be >= 0"),
        ("reg_tokens", 1.0, "reg_tokens must be >= 0 and an integer"),
        ("class_token", "yes", "class_token must be True or False"),
        ("qkv_bias", 1, "qkv_bias must be True or False"),
        ("emb_dropout", 1.0, "emb_dropout must be a probability"),
        ("head_dropout", -0.1, "head_dropout must be a probability"),
        ("drop_path_rate", math.nan, "drop_path_rate must be a probability"),
        ("layer_scale_init", math.inf, "layer_scale_init must be a positive"),
        ("layer_scale_init", True, "layer_scale_init must be a positive"),
        ("pool", 3, "pool must be"),
    ],
    "cait": [
        ("patch_size", 0, "patch_size must be a positive integer"),
        ("depth", True, "depth must be a positive integer"),
        ("cls_depth", 0, "cls_depth must be a positive integer"),
        ("cls_mlp_dim", 0, "cls_mlp_dim must be a positive integer"),
        ("attn_dropout", 1.0, "attn_dropout must be a probability"),
        ("layer_dropout", True, "layer_dropout must be a probability"),
        ("qkv_bias", "no", "qkv_bias must be True or False"),
        ("layer_scale_init", math.nan, "layer_scale_init must be positive"),
        ("patch_size", 64, "not divisible"),
    ],
    "crossvit": [
        ("depth", True, "depth must be a positive integer"),
        ("sm_patch_size", 0, "sm_patch_size must be a positive integer"),
        ("lg_dim", 2.5, "lg_dim must be a positive integer"),
        ("sm_enc_depth", -1, "sm_enc_depth must be >= 0"),
        ("cross_attn_heads", 0, "cross_attn_heads must be a positive integer"),
        ("multi_conv", "false", "multi_conv must be True or False"),
        ("drop_path_rate", 1.0, "drop_path_rate must be a probability"),
        ("lg_image_size", 0, "lg_image_size must be a positive integer"),
        ("lg_patch_size", 64, "not divisible by lg_patch_size 64"),
    ],
    "crossformer": [
        ("depth", True, "depth must be a positive integer"),
        ("depth", (1, 1, 0, 1), re.escape("depth[2] must be a positive integer")),
        ("dim", (16, 16, 32.0, 32), re.escape("dim[2] must be a positive integer")),
        ("heads", (1, 1, 0, 1), re.escape("heads[2] must be a positive integer")),
        ("cross_embed_strides", 0, "cross_embed_strides must be a positive integer"),
        (
            "cross_embed_kernel_sizes",
            ((4, 8.5), (2, 4), (2, 4), (2, 4)),
            re.escape("cross_embed_kernel_sizes[0][1] must be a positive integer"),
        ),
        ("mlp_ratio", 0.0, "mlp_ratio must be a positive"),
        ("mlp_ratio", 1e-3, "feed-forward width of 0"),
        ("qkv_bias", 1, "qkv_bias must be True or False"),
        ("ff_dropout", 1.0, "ff_dropout must be a probability"),
        ("image_size", 8, "too small"),
    ],
}

BAD_FIELDS = [
    pytest.param(family, field, value, match, id=f"{family}-{field}={value!r}")
    for family in FAMILIES
    for field, value, match in COMMON_BAD_FIELDS + FAMILY_BAD_FIELDS[family]
]


def tiny_config(family: str, **changes):
    return FAMILIES[family].config_class(**{**TINY_CONFIGS[family], **changes})


def test_every_family_has_bad_fields_listed():
    assert set(FAMILY_BAD_FIELDS) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_configs_are_valid(family):
    config = tiny_config(family)
    assert FAMILIES[family].config_class.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("family, field, value, match", BAD_FIELDS)
def test_construction_refuses_the_field(family, field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(family, **{field: value})


@pytest.mark.parametrize("family", FAMILIES)
def test_the_core_module_refuses_what_its_config_refuses_field_by_field(family):
    # ViT(patch_size=0) and the like: the config's per-field error at construction, not a ZeroDivisionError
    # in the forward pass.
    core_module = FAMILIES[family].model_class.module_class.core_module_class
    field_checks = FAMILIES[family].config_class.field_checks
    kwargs = tiny_config(family).to_module_kwargs()
    names = {f.name for f in dataclasses.fields(core_module)}
    checked = 0
    for field, value, match in COMMON_BAD_FIELDS + FAMILY_BAD_FIELDS[family]:
        if field not in names or field not in field_checks:
            continue
        try:
            field_checks[field](field, value)
        except ValueError:  # a per-field error (the others come from rules between fields, at build time)
            with pytest.raises(ValueError, match=match):
                core_module(**{**kwargs, field: value})
            checked += 1
    assert checked >= 5
    core_module(**kwargs)  # the good values pass


@pytest.mark.parametrize("family, field, value, match", BAD_FIELDS)
def test_every_way_of_loading_refuses_the_field(family, field, value, match, tmp_path):
    config_class = FAMILIES[family].config_class
    good = tiny_config(family)
    data = {**good.to_dict(), field: value}
    if field == "num_classes":  # the saved labels would disagree first
        data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
    with pytest.raises(ValueError, match=match):
        config_class.from_dict(data)
    # Keyword overrides, which transformers sets after construction.
    with pytest.raises(ValueError, match=match):
        config_class.from_dict(good.to_dict(), **{field: value})
    good.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        config_class.from_pretrained(tmp_path, **{field: value})
    if isinstance(value, float) and not math.isfinite(value):
        return  # json has no NaN / infinity (Python writes them, other readers refuse them)
    (tmp_path / "config.json").write_text(json.dumps(data))
    for load in (config_class.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=match):
            load(tmp_path)
    with pytest.raises(ValueError, match=match):
        config_class.from_json_file(tmp_path / "config.json")


@pytest.mark.parametrize("content", ["[1, 2]", '"vit_flax"', "3", "null"])
def test_a_config_json_that_is_not_an_object_is_a_clear_error(content, tmp_path):
    tiny_config("vit").save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(content)
    loaders = (
        hf_vit_flax.ViTConfig.from_pretrained,
        hf_vit_flax.FlaxViTForImageClassification.from_pretrained,
        hf_vit_flax.FlaxAutoModel.from_pretrained,
        hf_vit_flax.FlaxAutoModelForImageClassification.from_pretrained,
    )
    for load in loaders:
        with pytest.raises(ValueError, match=f"{re.escape(str(path))} holds a JSON .*, not an object"):
            load(tmp_path)
    with pytest.raises(ValueError, match="not an object"):
        hf_vit_flax.ViTConfig.from_json_file(path)
    with pytest.raises(TypeError, match="takes a dict"):
        hf_vit_flax.ViTConfig.from_dict(json.loads(content))


def test_a_conv_patch_larger_than_the_image_is_refused():
    # It would embed no patch at all: the same logits for every input.
    with pytest.raises(ValueError, match="patch size 64x64 is larger than the image size 32x32"):
        tiny_config("vit", patch_size=64, patch_embedding="conv")
    with pytest.raises(ValueError, match="patch size 8x40 is larger than the image size 32x32"):
        tiny_config("vit", patch_size=(8, 40), patch_embedding="conv")
    assert tiny_config("vit", patch_size=32, patch_embedding="conv").image_size == 32


def test_every_shipped_variant_validates():
    for path in sorted(configs_dir().glob("*.json")):
        data = json.loads(path.read_text())
        family = next((f for f in FAMILIES.values() if f.config_class.model_type == data.get("model_type")), None)
        if family is not None:
            family.config_class.from_dict({k: v for k, v in data.items() if k != "architectures"})


# -- size limits --------------------------------------------------------------------------------------


def parameter_count(model) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(model.params_shape_tree)))


# Per family, options that change the parameter tree (each checked against the real model).
ESTIMATE_VARIANTS = {
    "vit": [
        {},
        dict(patch_embedding="conv", pool="map", reg_tokens=2, qkv_bias=True, layer_scale_init=0.1),
        dict(distilled=True, no_embed_class=True, pre_norm=True, patch_bias=False, patch_embedding="conv"),
        dict(pool="mean", fc_norm=True, num_classes=0),
        dict(heads=1, dim_head=32),
    ],
    "cait": [{}, dict(style="timm", qkv_bias=True, cls_mlp_dim=48, layer_scale_init=1e-5)],
    "crossvit": [
        {},
        dict(lg_dim=16, cross_attn_depth=2, qkv_bias=True),
        dict(
            style="timm",
            image_size=48,
            sm_patch_size=12,
            lg_patch_size=16,
            sm_enc_dim_head=8,
            lg_enc_heads=4,
            multi_conv=True,
            lg_image_size=64,
            cross_attn_heads=None,
            cross_attn_dim_head=None,
            qkv_bias=True,
        ),
    ],
    "crossformer": [{}, dict(style="original", heads=(1, 2, 2, 4), depth=(1, 1, 2, 1)), dict(num_classes=0)],
}


@pytest.mark.parametrize(
    "family, changes", [(f, c) for f, variants in ESTIMATE_VARIANTS.items() for c in variants], ids=str
)
def test_the_closed_form_parameter_count_is_exact(family, changes):
    config = tiny_config(family, **changes)
    model_class = FAMILIES[family].classifier_class if config.num_labels else FAMILIES[family].model_class
    assert config.estimate_num_parameters() == parameter_count(model_class(config, _do_init=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_too_many_parameters_is_refused_with_the_count(family, monkeypatch):
    wide = {
        "vit": dict(dim=4096, mlp_dim=16384),
        "cait": dict(dim=4096, mlp_dim=16384),
        "crossvit": dict(sm_dim=4096, lg_dim=4096, sm_enc_mlp_dim=16384, lg_enc_mlp_dim=16384),
        "crossformer": dict(dim=(4096, 4096, 8192, 8192)),
    }[family]
    monkeypatch.setenv(MAX_PARAMETERS_VARIABLE, "1e12")
    count = tiny_config(family, **wide).estimate_num_parameters()
    monkeypatch.setenv(MAX_PARAMETERS_VARIABLE, str(count - 1))
    with pytest.raises(ValueError, match=f"about {count:,} parameters .* more than the limit of {count - 1:,}"):
        tiny_config(family, **wide)
    monkeypatch.setenv(MAX_PARAMETERS_VARIABLE, str(count))
    assert tiny_config(family, **wide).estimate_num_parameters() == count


def test_a_terabyte_config_is_refused_instantly():
    # ~1e12 parameters: built in no time before, failing at first use.
    with pytest.raises(ValueError, match=f"about [0-9,]+ parameters .* set {MAX_PARAMETERS_VARIABLE}="):
        hf_vit_flax.ViTConfig(dim=65536, depth=200, heads=64, dim_head=1024, mlp_dim=262144)


@pytest.mark.parametrize("family", FAMILIES)
def test_too_many_layers_is_refused(family, monkeypatch):
    deep = {
        "vit": dict(depth=10**6),
        "cait": dict(depth=10**6),
        "crossvit": dict(sm_enc_depth=10**6),
        "crossformer": dict(depth=(1, 1, 10**9, 1)),
    }[family]
    with pytest.raises(ValueError, match=f"layers, more than the limit of 1,000 .* {MAX_LAYERS_VARIABLE}="):
        tiny_config(family, **deep)
    monkeypatch.setenv(MAX_LAYERS_VARIABLE, "2")
    with pytest.raises(ValueError, match="more than the limit of 2 "):
        tiny_config(family, depth=3 if family != "crossformer" else (1, 1, 2, 1))


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5"])
def test_a_bad_limit_variable_is_named(value, monkeypatch):
    monkeypatch.setenv(MAX_PARAMETERS_VARIABLE, value)
    with pytest.raises(ValueError, match=f"{MAX_PARAMETERS_VARIABLE} must be a positive integer"):
        tiny_config("vit")


# -- the command line ---------------------------------------------------------------------------------


def test_convert_with_image_size_0_exits_with_a_clear_error(tmp_path, capsys):
    # The argument parser refuses it: its usage line, then one error line, exit status 2.
    with pytest.raises(SystemExit) as exited:
        main(["convert", "timm:deit_tiny_patch16_224", "--image-size", "0", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and "--image-size: expected a positive integer, got '0'" in err[-1]
    assert "Traceback" not in "".join(err) and not (tmp_path / "out").exists()


def test_convert_with_a_crossformer_config_that_is_not_an_object(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[224, 224]")
    code = main(
        [
            "convert",
            f"crossformer:{tmp_path / 'x.pth'}",
            "--config",
            str(tmp_path / "config.json"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "not an object" in err[0] and "config.json" in err[0]
