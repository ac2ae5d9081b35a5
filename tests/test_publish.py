"""`hf-vit-flax convert` and the publishing pipeline (conversion/publish.py), offline.

The source checkpoints are timm-format repos (config.json + model.safetensors) holding randomised
timm weights, served by the loopback Hub server; verification runs timm itself.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm

from hf_vit_flax import FlaxAutoModelForImageClassification
from hf_vit_flax.cli import main
from hf_vit_flax.hub import PROVENANCE_KEY, card_metadata
from tests.helpers import randomize_
from tests.hub_server import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH, TAG = "deit_tiny_patch16_224", "fb_in1k"


def timm_checkpoint_files(seed: int) -> dict[str, bytes]:
    """A timm-format repo's files for ``ARCH`` with random weights (logits O(1))."""
    import tempfile

    from hf_vit_flax.verify import save_timm_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_timm_checkpoint(randomize_(timm.create_model(ARCH, pretrained=False), seed), tmp, tag=TAG)
        return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm-checkpoint")
    for name, content in timm_checkpoint_files(seed=0).items():
        (folder / name).write_bytes(content)
    return folder


def test_convert_local_timm_folder_with_verify(local_checkpoint, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(local_checkpoint), "--output-dir", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    parity = float(printed.split("against the original: ")[1].split()[0])
    assert parity <= 1e-5
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    assert "Verified against the original" in card and "timm" in card_metadata(card)["tags"]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] != "LABEL_0"  # ImageNet class names for a 1000-class head
    # timm's evaluation transform (resize the shortest edge to 224 / crop_pct, center-crop) comes back.
    processor = FlaxAutoModelForImageClassification.from_pretrained(out).image_processor
    assert type(processor).__name__.removesuffix("Pil") == "BitImageProcessor"
    assert dict(processor.size) == {"shortest_edge": 248} and dict(processor.crop_size) == {"height": 224, "width": 224}


def test_convert_refuses_to_push_when_parity_fails(local_checkpoint, tmp_path, capsys, monkeypatch):
    from hf_vit_flax import sources

    monkeypatch.setattr(sources.Source, "verify", lambda self, model: 3e-3)
    code = main(
        [
            "convert",
            str(local_checkpoint),
            "--output-dir",
            str(tmp_path),
            "--verify",
            "--push-to-hub",
            "acme/should-not-exist",
        ]
    )
    assert code == 1
    assert "not pushing" in capsys.readouterr().err


def test_convert_bad_source_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "holds no timm weights" in capsys.readouterr().err
    assert main(["convert", "crossformer:whatever.pth", "--output-dir", str(tmp_path / "out")]) == 2
    assert "--variant" in capsys.readouterr().err


def run_pipeline(manifest, endpoint, home, tmp_path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_TOKEN="hf_test", HF_HUB_DISABLE_XET="1", PYTHONPATH=ROOT)
    summary = tmp_path / "summary.md"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "conversion", "publish.py"),
            "--manifest",
            str(manifest),
            "--summary",
            str(summary),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert summary.exists(), result.stderr[-4000:]
    return result.returncode, summary.read_text()


@pytest.mark.slow
def test_pipeline_publishes_then_skips_unchanged_then_republishes(tmp_path):
    manifest = tmp_path / "manifest.json"
    target = "acme-flax/deit_tiny_patch16_224.fb_in1k"
    manifest.write_text(
        json.dumps(
            {
                "models": [
                    {"source": f"timm:{ARCH}.{TAG}", "repo_id": target},
                    {"source": "timm:deit_small_patch16_224.fb_in1k", "repo_id": "acme-flax/missing-source"},
                ]
            }
        )
    )
    with serve() as (endpoint, state):
        state.create(f"timm/{ARCH}.{TAG}")
        state.commit(f"timm/{ARCH}.{TAG}", "weights", timm_checkpoint_files(seed=1), [])

        code, first = run_pipeline(manifest, endpoint, tmp_path / "home1", tmp_path)
        assert code == 1  # the entry whose source repo does not exist fails, the other goes on
        row = next(line for line in first.splitlines() if target in line)
        assert "| published |" in row
        assert float(row.split("|")[4]) <= 1e-5
        assert "failed" in next(line for line in first.splitlines() if "missing-source" in line)
        published = state.repos[target]["files"]
        assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(published)
        provenance = card_metadata(published["README.md"].decode())[PROVENANCE_KEY]
        assert provenance["source"] == f"timm:{ARCH}.{TAG}"
        commits = len(state.repos[target]["commits"])
        first_weights = published["model.safetensors"]

        _, second = run_pipeline(manifest, endpoint, tmp_path / "home2", tmp_path)
        assert "skipped (unchanged)" in next(line for line in second.splitlines() if target in line)
        assert len(state.repos[target]["commits"]) == commits

        state.commit(f"timm/{ARCH}.{TAG}", "new weights", timm_checkpoint_files(seed=2), [])
        _, third = run_pipeline(manifest, endpoint, tmp_path / "home3", tmp_path)
        assert "| published |" in next(line for line in third.splitlines() if target in line)
        assert len(state.repos[target]["commits"]) == commits + 1
        assert state.repos[target]["files"]["model.safetensors"] != first_weights


def test_manifest_covers_every_supported_pretrained_tag():
    from hf_vit_flax.timm_weights import list_timm_models

    with open(os.path.join(ROOT, "conversion", "manifest.json")) as f:
        manifest = json.load(f)
    sources = {entry["source"] for entry in manifest["models"]}
    assert {f"timm:{name}" for name in list_timm_models(pretrained=True)} <= sources
    assert sum(s.startswith("crossformer:") for s in sources) == 4
    assert len({entry["repo_id"] for entry in manifest["models"]}) == len(manifest["models"])


def test_convert_original_crossformer_checkpoint_matches_recorded_outputs(tmp_path, capsys):
    from safetensors.numpy import load_file

    fixtures = os.path.join(ROOT, "tests", "fixtures", "crossformer_official")
    out = tmp_path / "crossformer"
    code = main(
        [
            "convert",
            f"crossformer:{fixtures}/crossformer_tiny_random.pth",
            "--output-dir",
            str(out),
            "--config",
            f"{fixtures}/crossformer_tiny_random_config.json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    reference = load_file(f"{fixtures}/crossformer_tiny_random_io.safetensors")
    model = FlaxAutoModelForImageClassification.from_pretrained(out)
    logits = np.asarray(model(reference["pixel_values"]).logits)
    assert np.max(np.abs(logits - reference["logits"])) <= 1e-5
