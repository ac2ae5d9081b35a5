"""Sharded checkpoints: saved and loaded back, never shadowed by an older layout, and checked before reading.

The giant variants (ViT-g/14, ViT-G/14, CaiT-M48, 1 to 2 billion parameters) are tested without their
arrays: the model's shapes come from ``jax.eval_shape``, the shards are planned by the function
``save_pretrained`` uses, and each shard file has a real safetensors header over a sparse data region (the
file is truncated to its full size: no disk blocks, no memory). The check that runs before any tensor data
is read must accept such a folder for its own config and refuse it, naming keys, for another one.
"""

from __future__ import annotations

import glob
import itertools
import json
import os

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel, ViTConfig
from hf_vit_flax import checkpoint as ckpt
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.timm_weights import load_variant_config
from tests.helpers import images, labelled_config, which_save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)
SHARDED = "10KB"  # about 40 kB of weights: four or five shards


def small_config(name: str = "m", **overrides) -> ViTConfig:
    return labelled_config(name, **{**CONFIG, **overrides})


def labelled(name: str, seed: int) -> FlaxViTForImageClassification:
    return FlaxViTForImageClassification(small_config(name), seed=seed)


@pytest.fixture(scope="module")
def x():
    return images(2, 32, 32)


def weights_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ckpt.is_weights_file(n))


@pytest.fixture
def no_data_reads(monkeypatch):
    """Any read of tensor data fails the test: what is checked must be checked from the headers."""

    def read(f, tensor):
        raise AssertionError(f"tensor data was read ({tensor.name} in {tensor.path})")

    monkeypatch.setattr(ckpt, "_read_tensor", read)


# -- a sharded save loads back, tensor by tensor, one file after the other ----------------------------
def test_sharded_save_loads_back_exactly_reading_one_shard_after_the_other(tmp_path, x, monkeypatch):
    model = labelled("m", 1)
    model.save_pretrained(tmp_path, max_shard_size=SHARDED)
    index = json.loads((tmp_path / ckpt.SAFE_WEIGHTS_INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and weights_files(tmp_path) == sorted([ckpt.SAFE_WEIGHTS_INDEX_NAME, *shards])
    reads, read = [], ckpt._read_tensor
    monkeypatch.setattr(ckpt, "_read_tensor", lambda f, tensor: reads.append(tensor) or read(f, tensor))
    loaded = FlaxViTForImageClassification.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded(x).logits, model(x).logits)
    assert len(reads) == len(index["weight_map"])  # each tensor read once
    visits = [os.path.basename(path) for path, _ in itertools.groupby(t.path for t in reads)]
    assert visits == shards  # each shard in one pass, in order
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(loaded.params))


# -- a save never leaves weights that a load would prefer ---------------------------------------------
def save_as_transformers_flax_shards(model, folder, shards: int = 2) -> None:
    """The sharded msgpack layout transformers 4.x's Flax ``save_pretrained(safe_serialization=False)``
    writes: ``flax_model-0000i-of-0000n.msgpack`` and ``flax_model.msgpack.index.json`` keyed by "/" paths."""
    from flax.serialization import msgpack_serialize
    from flax.traverse_util import unflatten_dict

    os.makedirs(folder, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(model.params).items()}
    keys = sorted(flat)
    weight_map = {}
    for i in range(shards):
        name = f"flax_model-{i + 1:05d}-of-{shards:05d}.msgpack"
        part = keys[i::shards]
        weight_map.update(dict.fromkeys(part, name))
        tree = unflatten_dict({tuple(k.split("/")): flat[k] for k in part})
        (folder / name).write_bytes(msgpack_serialize(tree))
    index = {"metadata": {"total_size": sum(v.nbytes for v in flat.values())}, "weight_map": weight_map}
    (folder / ckpt.FLAX_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    model.config.save_pretrained(folder)


LAYOUTS = {
    "one safetensors file": {},
    "safetensors shards": {"max_shard_size": SHARDED},
    "msgpack": {"safe_serialization": False},
}


@pytest.mark.parametrize(
    "old_layout, new_layout",
    [
        ("one safetensors file", "safetensors shards"),  # the old model.safetensors would win over the index
        ("safetensors shards", "msgpack"),  # the old model.safetensors.index.json would win over the msgpack
        ("transformers msgpack shards", "one safetensors file"),
        ("transformers msgpack shards", "safetensors shards"),
        ("transformers msgpack shards", "msgpack"),  # the same names, another layout
    ],
)
def test_a_save_in_another_layout_leaves_no_weights_of_the_old_one(tmp_path, x, old_layout, new_layout):
    old, new = labelled("old", 1), labelled("new", 2)
    if old_layout == "transformers msgpack shards":
        save_as_transformers_flax_shards(old, tmp_path)
    else:
        old.save_pretrained(tmp_path, **LAYOUTS[old_layout])
    before = weights_files(tmp_path)
    assert which_save(tmp_path, x, {"old": old}) == "old"  # the old layout loads, index and all
    new.save_pretrained(tmp_path, **LAYOUTS[new_layout])
    if new_layout == "safetensors shards":
        index = json.loads((tmp_path / ckpt.SAFE_WEIGHTS_INDEX_NAME).read_text())
        expected = sorted({ckpt.SAFE_WEIGHTS_INDEX_NAME, *index["weight_map"].values()})
    else:
        expected = [ckpt.SAFE_WEIGHTS_NAME if new_layout == "one safetensors file" else ckpt.FLAX_WEIGHTS_NAME]
    assert weights_files(tmp_path) == expected, f"left behind from {before}"
    assert which_save(tmp_path, x, {"old": old, "new": new}) == "new"


# -- checked before any tensor data is read -----------------------------------------------------------
def test_a_sharded_checkpoint_of_another_shape_fails_naming_keys_before_reading(tmp_path, no_data_reads):
    labelled("m", 1).save_pretrained(tmp_path, max_shard_size=SHARDED)
    with pytest.raises(ValueError, match=r"missing keys \[vit/transformer/blocks_2/"):
        FlaxViTForImageClassification.from_pretrained(tmp_path, config=small_config(depth=3))
    wider = FlaxViTForImageClassification(small_config(mlp_dim=128), _do_init=False)
    with pytest.raises(ValueError, match=r"mismatched shapes \[.*mlp.* \(32, 64\) vs \(32, 128\)"):
        wider.check_checkpoint(tmp_path)
    FlaxViTForImageClassification(small_config(), _do_init=False).check_checkpoint(tmp_path)


def test_a_shard_that_lacks_a_tensor_its_index_places_there_is_named(tmp_path, no_data_reads):
    labelled("m", 1).save_pretrained(tmp_path, max_shard_size=SHARDED)
    weight_map = json.loads((tmp_path / ckpt.SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
    key, shard = sorted(weight_map.items())[-1]
    tensors = load_file(str(tmp_path / shard))
    del tensors[key]
    save_file(tensors, str(tmp_path / shard), metadata={"format": "flax"})
    with pytest.raises(OSError, match=rf"{shard} lacks {key}, which the index places there.*save the model again"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)
    # ... and one that holds a tensor the index places elsewhere (a shard of another save)
    tensors[key] = np.zeros(3, np.float32)
    tensors["vit.extra"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / shard), metadata={"format": "flax"})
    with pytest.raises(OSError, match=rf"{shard} holds vit.extra, which the index does not place there"):
        FlaxViTForImageClassification(small_config(), _do_init=False).check_checkpoint(tmp_path)


def test_a_missing_or_truncated_shard_is_named_before_reading(tmp_path, no_data_reads):
    labelled("m", 1).save_pretrained(tmp_path, max_shard_size=SHARDED)
    shards = [n for n in weights_files(tmp_path) if n.endswith(".safetensors")]
    path = tmp_path / shards[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4])
    with pytest.raises(OSError, match=rf"{shards[-1]}: it is corrupt or truncated"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)
    path.unlink()
    with pytest.raises(OSError, match=rf"has no {shards[-1]} \(a shard listed in model.safetensors.index.json\)"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)


def test_an_index_that_names_files_outside_its_folder_is_refused(tmp_path):
    labelled("m", 1).save_pretrained(tmp_path, max_shard_size=SHARDED)
    index_path = tmp_path / ckpt.SAFE_WEIGHTS_INDEX_NAME
    index = json.loads(index_path.read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = "../elsewhere/model.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(OSError, match="names shards outside its folder"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)


def test_a_new_head_is_initialised_alone_with_the_values_of_a_full_init(tmp_path):
    classifier = labelled("m", 1)
    FlaxViTModel(classifier.config, _do_init=False).save_pretrained(tmp_path, params=classifier.params["vit"])
    loaded = FlaxViTForImageClassification.from_pretrained(tmp_path, seed=5)
    full = FlaxViTForImageClassification(classifier.config, seed=5)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(loaded.params["head"][name], full.params["head"][name])
    np.testing.assert_array_equal(loaded.params["vit"]["cls_token"], classifier.params["vit"]["cls_token"])


# -- the giant variants, through the sharded path, without their arrays -------------------------------
def write_sparse_checkpoint(folder, model, max_shard_size) -> ckpt.ShardPlan:
    """``model``'s config, shard index and shards as ``save_pretrained`` would write them, except that the
    shards' data regions are holes: real headers, the right file sizes, no data."""
    shapes = {".".join(k): v for k, v in flatten_dict(model.params_shape_tree).items()}
    plan = ckpt.plan_shards(shapes, max_shard_size)
    for filename, keys in plan.files.items():
        header, offset = {"__metadata__": {"format": "flax"}}, 0
        for key in keys:
            size = ckpt.nbytes(shapes[key])
            header[key] = {"dtype": "F32", "shape": list(shapes[key].shape), "data_offsets": [offset, offset + size]}
            offset += size
        data = json.dumps(header, separators=(",", ":")).encode()
        data += b" " * (-len(data) % 8)  # safetensors aligns the data on 8 bytes
        with open(os.path.join(folder, filename), "wb") as f:
            f.write(len(data).to_bytes(8, "little") + data)
            f.truncate(8 + len(data) + offset)
    if plan.index is not None:
        ckpt.write_index(folder, plan)
    model.config.save_pretrained(folder)
    return plan


def model_class(config):
    family = next(f for f in FAMILIES.values() if f.config_class.model_type == config.model_type)
    return family.classifier_class if config.num_labels else family.model_class


def shipped(pattern: str) -> list[str]:
    return sorted(os.path.basename(p)[: -len(".json")] for p in glob.glob(os.path.join(ROOT, "configs", pattern)))


# ViT-g/14, ViT-G/14 and CaiT-M48 in the fast lane; the other giant ViTs (CLIP, SigLIP, RADIO, GAP) as slow.
FAST_GIANTS = ("vit_giant_patch14_224", "vit_gigantic_patch14_224", "cait_m48_448")
GIANTS = [
    pytest.param(name, marks=() if name in FAST_GIANTS else pytest.mark.slow)
    for name in sorted({*shipped("vit_giant*.json"), *shipped("vit_gigantic*.json"), "cait_m48_448"})
]
SHARD_SIZE = "300MB"


@pytest.fixture(scope="module")
def giants(tmp_path_factory):
    """Built on first use: variant -> (model without params, folder of its sparse sharded checkpoint)."""
    built = {}

    def giant(variant: str):
        if variant not in built:
            config = load_variant_config(variant)
            model = model_class(config)(config, _do_init=False)  # shapes only, from jax.eval_shape
            folder = tmp_path_factory.mktemp(variant)
            write_sparse_checkpoint(folder, model, SHARD_SIZE)
            built[variant] = model, folder
        return built[variant]

    return giant


@pytest.mark.parametrize("variant", GIANTS)
def test_giant_variant_is_checked_from_its_shard_headers(variant, giants, no_data_reads):
    model, folder = giants(variant)
    shards = [n for n in weights_files(folder) if n.endswith(".safetensors")]
    total = sum(os.path.getsize(folder / n) for n in shards)
    assert len(shards) > 3 and total > 4 * model.num_parameters() > 1.4e9
    assert sum(os.stat(folder / n).st_blocks * 512 for n in shards) < 2**20 * len(shards)  # sparse files
    model.check_checkpoint(folder)  # accepted from the headers alone
    config = model.config
    shorter = load_variant_config(variant, depth=config.depth - 1)
    with pytest.raises(ValueError, match=rf"unexpected keys \[[^\]]*blocks_{config.depth - 1}/"):
        model_class(shorter)(shorter, _do_init=False).check_checkpoint(folder)


def test_giant_checkpoint_of_another_family_is_refused_naming_keys(giants, no_data_reads):
    vit, vit_folder = giants("vit_giant_patch14_224")
    cait, cait_folder = giants("cait_m48_448")
    # Keys are named as the model would hold them: a foreign backbone lands under the model's prefix.
    with pytest.raises(ValueError, match=r"missing keys \[cait/cls_token, .*unexpected keys \[cait/vit/cls_token, "):
        cait.check_checkpoint(vit_folder)
    with pytest.raises(ValueError, match=r"missing keys \[vit/cls_token, .*unexpected keys \[vit/cait/cls_token, "):
        vit.check_checkpoint(cait_folder)


class FirstRead(Exception):
    pass


def test_giant_variant_from_pretrained_checks_then_reads_shard_by_shard(giants, monkeypatch):
    _, folder = giants("cait_m48_448")
    reads = []

    def read(f, tensor):
        reads.append(tensor)
        raise FirstRead  # stop there: the data are holes, 1.4 GB of zeros

    monkeypatch.setattr(ckpt, "_read_tensor", read)
    with pytest.raises(FirstRead):
        model_class(load_variant_config("cait_m48_448")).from_pretrained(folder)
    first = min(json.loads((folder / ckpt.SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"].values())
    assert [os.path.basename(t.path) for t in reads] == [first]
