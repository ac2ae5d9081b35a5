"""What a save guarantees and what a load refuses: never a mix, never stale, nothing corrupt loads silently.

Kills are real: a child process saving a model is ended with ``os._exit`` at a chosen point (no
cleanup runs, as with SIGKILL), and the folder is then loaded by this process.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel
from hf_vit_flax.checkpoint import TMP_PREFIX
from tests.helpers import images, labelled_config, which_save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64)


def labelled(name: str, seed: int) -> FlaxViTForImageClassification:
    return FlaxViTForImageClassification(labelled_config(name, **CONFIG), seed=seed)


@pytest.fixture(scope="module")
def x():
    return images(2, 32, 32)


KILLED_SAVE = """
import os, sys
sys.path.insert(0, {root!r})
from hf_vit_flax import FlaxViTForImageClassification, ViTConfig
from hf_vit_flax import checkpoint

kill_at, point = {kill_at!r}, {point!r}
calls = {{"n": 0}}

def counting(original):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os._exit(9)  # no cleanup, as SIGKILL
        return original(*args, **kwargs)
    return wrapper

if point == "replace":      # while files move into place (after the commit point)
    checkpoint.os.replace = counting(os.replace)
elif point == "write":      # while the new files are written (before the commit point)
    import safetensors.flax
    safetensors.flax.save_file = counting(safetensors.flax.save_file)
config = ViTConfig(**{config!r}, id2label={{i: f"new {{i}}" for i in range(3)}})
FlaxViTForImageClassification(config, seed=2).save_pretrained({folder!r}, **{save_kwargs!r})
"""


def killed_save(folder, kill_at: int, point: str, **save_kwargs) -> int:
    code = KILLED_SAVE.format(
        root=ROOT, kill_at=kill_at, point=point, config=CONFIG, folder=str(folder), save_kwargs=save_kwargs
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300).returncode


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, kill_at, old_kwargs, new_kwargs, expected",
    [
        ("write", 1, {}, {}, "old"),  # killed while writing: the old checkpoint stays
        ("write", 2, {}, {"max_shard_size": "10KB"}, "old"),  # killed between two shards
        ("replace", 1, {}, {}, "old"),  # killed just before the journal's rename, the commit point
        ("replace", 2, {}, {}, "new"),  # killed after the commit point: the next load completes the switch
        ("replace", 4, {"max_shard_size": "10KB"}, {}, "new"),  # sharded -> single file, killed mid-switch
        ("replace", 3, {"safe_serialization": False}, {}, "new"),  # msgpack -> safetensors, killed mid-switch
    ],
)
def test_killed_save_leaves_the_old_or_the_new_checkpoint_never_a_mix(
    tmp_path, x, point, kill_at, old_kwargs, new_kwargs, expected
):
    old, new = labelled("old", 1), labelled("new", 2)
    old.save_pretrained(tmp_path, **old_kwargs)
    assert killed_save(tmp_path, kill_at, point, **new_kwargs) == 9
    assert which_save(tmp_path, x, {"old": old, "new": new}) == expected
    # The next save cleans up whatever the killed one left, and the folder holds exactly one checkpoint.
    labelled("old", 1).save_pretrained(tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert names == [".cache", "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


def test_a_save_removes_the_weights_files_of_the_previous_checkpoint(tmp_path, x):
    sharded, plain, packed = labelled("sharded", 1), labelled("plain", 2), labelled("packed", 3)
    (tmp_path / "model_notes.txt").write_text("mine")  # a user's file is never touched
    sharded.save_pretrained(tmp_path, max_shard_size="10KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    plain.save_pretrained(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("model-") or n.endswith("index.json")]
    assert which_save(tmp_path, x, {"plain": plain}) == "plain"
    packed.save_pretrained(tmp_path, safe_serialization=False)
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "flax_model.msgpack").exists()
    assert which_save(tmp_path, x, {"packed": packed}) == "packed"
    assert (tmp_path / "model_notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_concurrent_saves_into_one_folder_do_not_interleave(tmp_path, x):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from hf_vit_flax import FlaxViTForImageClassification, ViTConfig
        name, seed = sys.argv[1], int(sys.argv[2])
        config = ViTConfig(**{CONFIG!r}, id2label={{i: f"{{name}} {{i}}" for i in range(3)}})
        model = FlaxViTForImageClassification(config, seed=seed)
        for i in range(4):
            model.save_pretrained({str(tmp_path)!r}, max_shard_size="10KB" if i % 2 else "10GB")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, name, str(seed)], env=env) for name, seed in (("a", 1), ("b", 2))
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert which_save(tmp_path, x, {"a": labelled("a", 1), "b": labelled("b", 2)}) in ("a", "b")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]


def test_weights_that_are_not_floats_are_refused(tmp_path):
    model = labelled("m", 1)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    for dtype in (np.int8, np.int32, np.uint8, np.bool_):
        bad = {k: (v * 10).astype(dtype) for k, v in state.items()}
        save_file(bad, str(tmp_path / "model.safetensors"))
        with pytest.raises(ValueError, match=f"non-float tensors.*{np.dtype(dtype).name}"):
            FlaxViTForImageClassification.from_pretrained(tmp_path)


def test_non_finite_weights_are_an_error_unless_allowed(tmp_path, x):
    model = labelled("m", 1)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    key = sorted(state)[0]
    for value in (np.nan, np.inf):
        state[key] = np.full_like(state[key], value)
        save_file(state, str(tmp_path / "model.safetensors"))
        with pytest.raises(ValueError, match=f"NaN or infinite values.*{key.replace('.', '/')}.*allow_non_finite"):
            FlaxViTForImageClassification.from_pretrained(tmp_path)
    loaded = FlaxViTForImageClassification.from_pretrained(tmp_path, allow_non_finite=True)
    assert not np.isfinite(np.asarray(loaded(x).logits)).all()


def test_truncated_or_garbage_weights_name_the_file(tmp_path):
    labelled("m", 1).save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="model.safetensors: it is corrupt or truncated"):
        FlaxViTForImageClassification.from_pretrained(tmp_path)
    labelled("m", 1).save_pretrained(tmp_path, safe_serialization=False)
    (tmp_path / "flax_model.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(OSError, match="flax_model.msgpack: it is corrupt or truncated"):
        FlaxViTModel.from_pretrained(tmp_path)


# -- the Hub: failures are said, never taken for absent files --------------------------------------------
def test_processor_that_cannot_be_fetched_is_an_error_not_a_silent_default(hub, tmp_path):
    labelled("m", 1).push_to_hub("acme/m")
    hub.failures["preprocessor_config.json"] = 403
    with pytest.raises(OSError, match=r"could not download .*acme/m/resolve/main/preprocessor_config.json.*403"):
        FlaxViTForImageClassification.from_pretrained("acme/m", cache_dir=str(tmp_path / "c"))


def test_server_error_on_the_weights_names_the_url_and_status(hub, tmp_path):
    labelled("m", 1).push_to_hub("acme/m")
    hub.failures["model.safetensors"] = 403
    with pytest.raises(OSError, match=r"could not download .*acme/m/resolve/main/model.safetensors.*403"):
        FlaxViTForImageClassification.from_pretrained("acme/m", cache_dir=str(tmp_path / "c"))


def test_truncated_download_in_the_cache_says_force_download_and_force_download_fixes_it(hub, tmp_path, x):
    model = labelled("m", 1)
    model.push_to_hub("acme/m")
    cache = str(tmp_path / "cache")
    FlaxViTForImageClassification.from_pretrained("acme/m", cache_dir=cache)
    blobs = [os.path.join(r, f) for r, _, fs in os.walk(cache) for f in fs if "blobs" in r]
    weights = max(blobs, key=os.path.getsize)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 3)
    with pytest.raises(OSError, match="snapshots.*model.safetensors.*force_download=True"):
        FlaxViTForImageClassification.from_pretrained("acme/m", cache_dir=cache)
    again = FlaxViTForImageClassification.from_pretrained("acme/m", cache_dir=cache, force_download=True)
    np.testing.assert_array_equal(again(x).logits, model(x).logits)
