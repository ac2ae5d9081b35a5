"""User errors on the command line: one ``error:`` line on stderr, exit status 2, no traceback.

Run in-process through ``hf_vit_flax.cli.main``; the checkpoints are tiny and built offline. The
library raises the same errors (``from_timm``, ``from_crossformer_checkpoint``), checked here too.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import hf_vit_flax
from hf_vit_flax import FlaxViTForImageClassification, FlaxViTModel, ViTConfig
from hf_vit_flax.cli import main
from hf_vit_flax.conversion_utils import UnsafeCheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "vit_tiny_patch16_224"
# timm model_args of a ~0.5M-parameter vit_tiny, recorded in its config.json as timm's own exports do.
TINY = {"img_size": 32, "patch_size": 8, "depth": 1}


def tiny_timm_module():
    timm = pytest.importorskip("timm")
    return timm.create_model(ARCH, pretrained=False, num_classes=5, **TINY)


def write_timm_checkpoint(folder):
    """A timm-format folder (config.json with model_args + model.safetensors), as timm's Hub exports."""
    from hf_vit_flax.verify import save_timm_checkpoint

    save_timm_checkpoint(tiny_timm_module(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = dict(TINY)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    return write_timm_checkpoint(tmp_path_factory.mktemp("timm") / "ckpt")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    config = ViTConfig(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=32)
    FlaxViTForImageClassification(config).save_pretrained(folder)
    return folder


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, *expected: str, command: str = "convert") -> str:
    """Exit status 2 and one ``error:`` line (continued only by an indented snippet) naming the problem."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"hf-vit-flax {command}: error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    for text in expected:
        assert text in err, err
    return err


def convert(capsys, source, tmp_path, *extra) -> tuple[int, str]:
    return run(capsys, "convert", source, "--output-dir", tmp_path / "out", *extra)


# -- weights files that are not state dicts ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_garbage_torch_file(tmp_path, capsys, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"certainly not a checkpoint\n" * 10)
    err = assert_user_error(*convert(capsys, path, tmp_path, "--architecture", ARCH), "is not a PyTorch checkpoint")
    assert str(path) in err
    assert not (tmp_path / "out").exists()


def test_empty_torch_file(tmp_path, capsys):
    (tmp_path / "weights.pth").write_bytes(b"")
    assert_user_error(*convert(capsys, tmp_path / "weights.pth", tmp_path, "--architecture", ARCH), "empty (0 bytes)")


@pytest.mark.parametrize(("content", "expected"), [("tensor", "holds a single tensor"), ("list", "holds a list")])
def test_torch_file_that_is_not_a_dict(tmp_path, capsys, content, expected):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pth"
    torch.save(torch.zeros(3) if content == "tensor" else [torch.zeros(3)], path)
    assert_user_error(*convert(capsys, path, tmp_path, "--architecture", ARCH), expected, "not a state dict")


@pytest.mark.parametrize(("empty", "expected"), [("0 bytes", "empty (0 bytes)"), ("no tensors", "holds no tensors")])
def test_empty_safetensors(tmp_path, capsys, empty, expected):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    if empty == "0 bytes":
        path.write_bytes(b"")
    else:
        save_file({}, str(path))
    assert_user_error(*convert(capsys, path, tmp_path, "--architecture", ARCH), expected)


def test_corrupt_safetensors(tmp_path, capsys, timm_checkpoint):
    path = tmp_path / "model.safetensors"
    path.write_bytes((timm_checkpoint / "model.safetensors").read_bytes()[:5000])  # truncated
    assert_user_error(*convert(capsys, path, tmp_path, "--architecture", ARCH), "not a valid safetensors file")


class RunsCode:
    """Pickles as a call to os.system, as a malicious checkpoint does (it is only ever loaded with weights_only=True)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "payload": RunsCode(marker)}, path)

    err = assert_user_error(*convert(capsys, path, tmp_path, "--architecture", ARCH), "refused for safety")
    assert "system" in err  # the object torch refused, by name
    assert "torch.load(" in err and "weights_only=False" in err and "safetensors.torch.save_file(" in err
    assert "only for files you trust" in err and "will likely succeed" not in err
    # The library says the same to from_timm and from_crossformer_checkpoint users.
    with pytest.raises(UnsafeCheckpointError, match="refused for safety"):
        hf_vit_flax.from_timm(path, architecture=ARCH)
    with pytest.raises(ValueError, match="refused for safety"):
        hf_vit_flax.from_crossformer_checkpoint(path, "crossformer-t")
    assert not marker.exists()


def test_refusal_snippet_makes_a_convertible_safetensors_file(tmp_path, capsys):
    """A trusted training checkpoint (weights plus its argparse options) is refused; the snippet fixes it."""
    import argparse

    torch = pytest.importorskip("torch")
    module = tiny_timm_module()
    folder = write_timm_checkpoint(tmp_path / "run")
    (folder / "model.safetensors").unlink()
    path = folder / "checkpoint.pth"
    torch.save({"state_dict": module.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)

    err = assert_user_error(*convert(capsys, path, tmp_path), "refused for safety", "argparse.Namespace")
    snippet = textwrap.dedent("\n".join(line for line in err.splitlines() if line.startswith("  ")))
    exec(snippet, {})  # our own file: trusted
    assert run(capsys, "convert", folder / "checkpoint.safetensors", "--output-dir", tmp_path / "out")[0] == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    got = FlaxViTForImageClassification.from_pretrained(tmp_path / "out")(x).logits
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_model_args_in_timm_config(tmp_path, capsys, timm_checkpoint):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = json.loads((timm_checkpoint / "config.json").read_text())
    config["model_args"]["not_a_timm_argument"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((timm_checkpoint / "model.safetensors").read_bytes())
    assert_user_error(*convert(capsys, folder, tmp_path), "model_args", "not_a_timm_argument")


def test_timm_config_that_is_not_json(tmp_path, capsys, timm_checkpoint):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "vit_tiny_patch16_224",')  # cut short
    (folder / "model.safetensors").write_bytes((timm_checkpoint / "model.safetensors").read_bytes())
    assert_user_error(*convert(capsys, folder, tmp_path), f"{folder / 'config.json'} is not valid JSON")


# -- arguments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mistyped", ["absolute", "relative", "file"])
def test_mistyped_local_path_says_it_does_not_exist(tmp_path, capsys, timm_checkpoint, monkeypatch, mistyped):
    monkeypatch.chdir(timm_checkpoint.parent)
    source = {"absolute": str(timm_checkpoint) + "x", "relative": "ckpt-x", "file": "ckpt/model.safetensor"}[mistyped]
    err = assert_user_error(*convert(capsys, source, tmp_path), f"{source} does not exist")
    assert "repo" not in err.lower() and "architecture" not in err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_vit_flax.from_timm(str(timm_checkpoint) + "x")


def test_predict_mistyped_model_path(tmp_path, capsys, classifier):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, err = run(capsys, "predict", str(classifier) + "-x", image)
    assert_user_error(code, err, "does not exist", command="predict")
    assert "repo" not in err.lower()


def test_negative_image_size(tmp_path, capsys, timm_checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(timm_checkpoint), "--output-dir", str(tmp_path / "out"), "--image-size", "-16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--image-size: expected a positive integer, got '-16'" in err.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        hf_vit_flax.from_timm(timm_checkpoint, image_size=-16)


def test_crossformer_config_holding_a_json_list(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2]")
    (tmp_path / "weights.pth").write_bytes(b"unused")
    code, err = run(
        capsys,
        "convert",
        f"crossformer:{tmp_path / 'weights.pth'}",
        "--config",
        tmp_path / "config.json",
        "--output-dir",
        tmp_path / "out",
    )
    assert_user_error(code, err, "holds a JSON list", "expected an object")


@pytest.mark.parametrize("what", ["folder", "file"])
def test_convert_refuses_to_overwrite_its_source(tmp_path, capsys, what):
    folder = write_timm_checkpoint(tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    source = folder if what == "folder" else folder / "model.safetensors"
    code, err = run(capsys, "convert", source, "--output-dir", folder)
    assert_user_error(code, err, "choose another folder")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# -- the output folder --------------------------------------------------------------------------------------


def _disk_full(kind):
    if kind == "OSError":
        return OSError(errno.ENOSPC, "No space left on device")
    from safetensors import SafetensorError  # what safetensors' writer raises for a full disk

    return SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


@pytest.mark.parametrize("kind", ["OSError", "SafetensorError"])
@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, timm_checkpoint, kind, existing):
    from hf_vit_flax.modeling_utils import FlaxVisionPreTrainedModel

    def save_until_full(self, save_directory, **kwargs):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "model.safetensors"), "wb") as f:
            f.write(b"\0" * 1000)  # the part written before the disk filled up
        raise _disk_full(kind)

    monkeypatch.setattr(FlaxVisionPreTrainedModel, "save_pretrained", save_until_full)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    code, err = run(capsys, "convert", timm_checkpoint, "--output-dir", out)
    assert_user_error(code, err, f"the disk is full at {out}", "choose another --output-dir")
    if existing:
        assert sorted(os.listdir(out)) == ["notes.txt"]
    else:
        assert not out.exists()


# -- predict -----------------------------------------------------------------------------------------------


def test_predict_model_saved_without_a_classification_head(tmp_path, capsys):
    config = ViTConfig(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=32)
    FlaxViTModel(config).save_pretrained(tmp_path / "backbone")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code, err = run(capsys, "predict", tmp_path / "backbone", tmp_path / "a.png")
    assert_user_error(code, err, "no classification head", "FlaxViTModel", command="predict")


@pytest.mark.parametrize("damage", ["text", "truncated", "decompression bomb"])
def test_predict_unreadable_image(tmp_path, capsys, monkeypatch, classifier, damage):
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    if damage == "text":
        path.write_text("hello")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:400])
    else:  # PIL raises DecompressionBombError (not an OSError) above twice this many pixels
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, err = run(capsys, "predict", classifier, path)
    assert_user_error(code, err, f"cannot read image {str(path)!r}", command="predict")


# -- --debug and real bugs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback(tmp_path, capsys, where):
    (tmp_path / "weights.pth").write_bytes(b"")
    argv = ["convert", tmp_path / "weights.pth", "--output-dir", tmp_path / "out", "--architecture", ARCH]
    code, err = run(capsys, *(["--debug", *argv] if where == "before" else [*argv, "--debug"]))
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("hf-vit-flax convert: error: ")


def test_unexpected_exception_is_a_bug_with_its_traceback(tmp_path, capsys, monkeypatch, timm_checkpoint):
    from hf_vit_flax import sources

    def broken(self):
        raise RuntimeError("an internal inconsistency")

    monkeypatch.setattr(sources.Source, "convert", broken)
    code, err = run(capsys, "convert", timm_checkpoint, "--output-dir", tmp_path / "out")
    assert code == 1
    assert "Traceback" in err and "RuntimeError: an internal inconsistency" in err
    assert "please report it" in err.strip().splitlines()[-1]


# -- the model card of a local source ------------------------------------------------------------------------


@pytest.mark.slow
def test_pushed_card_names_a_local_source_by_file_name_and_hash(tmp_path):
    """``convert LOCAL --push-to-hub``: the published card holds no local folder names (loopback Hub)."""
    from tests.hub_server import serve

    folder = write_timm_checkpoint(tmp_path / "home" / "alice" / "secret-project" / "ckpt")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    with serve() as (endpoint, state):
        env.update(
            HF_ENDPOINT=endpoint,
            HF_HOME=str(tmp_path / "hf"),
            HF_TOKEN="hf_test",
            HF_HUB_DISABLE_XET="1",
            PYTHONPATH=ROOT,
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hf_vit_flax.cli",
                "convert",
                str(folder),
                "--output-dir",
                str(tmp_path / "out"),
                "--push-to-hub",
                "acme/tiny-vit",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = state.repos["acme/tiny-vit"]["files"]["README.md"].decode()
    saved = (tmp_path / "out" / "README.md").read_text()
    for card in (pushed, saved):
        assert f"Weights converted from `model.safetensors` (sha256 {digest})." in card
        assert str(tmp_path) not in card and "alice" not in card and "secret-project" not in card
