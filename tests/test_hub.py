"""The Hub, offline: a repo served from a hand-built cache, and push_to_hub against a loopback server.

huggingface_hub and transformers read HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME at import time, so each
scenario runs in a fresh interpreter with its own environment; the real client code runs unchanged.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from hf_vit_flax import FlaxViTForImageClassification, ViTConfig
from tests.helpers import TINY_CONFIGS, images
from tests.hub_server import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, env: dict, tmp_path) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, which is returned."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    full_env.update(env, PYTHONPATH=ROOT, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)], env=full_env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    config = ViTConfig(**dict(TINY_CONFIGS["vit"], num_classes=5), id2label={i: f"class {i}" for i in range(5)})
    model = FlaxViTForImageClassification(config, seed=3)
    model.save_pretrained(folder)
    x = images(2, 32, 32)
    np.save(folder / "x.npy", x)
    np.save(folder / "logits.npy", np.asarray(model(x).logits))
    return folder


def test_from_pretrained_repo_id_from_hand_built_offline_cache(saved, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--acme--tiny-vit" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(saved / name, snapshot / name)
    (tmp_path / "hub" / "models--acme--tiny-vit" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-vit" / "refs" / "main").write_text(commit)
    out = run_python(
        f"""
        import json, numpy as np, hf_vit_flax
        from transformers import AutoImageProcessor
        from hf_vit_flax import FlaxAutoModelForImageClassification
        model = FlaxAutoModelForImageClassification.from_pretrained("acme/tiny-vit")
        logits = np.asarray(model(np.load({str(saved / "x.npy")!r})).logits)
        processor = AutoImageProcessor.from_pretrained("acme/tiny-vit")
        print(json.dumps({{"cls": type(model).__name__, "diff": float(np.abs(logits - np.load({str(saved / "logits.npy")!r})).max()),
                          "processor": type(processor).__name__, "size": dict(processor.size)}}))
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")},
        tmp_path,
    )
    assert out["cls"] == "FlaxViTForImageClassification"
    assert out["diff"] == 0.0
    assert out["processor"] == "ViTImageProcessor" and out["size"] == {"height": 32, "width": 32}


def test_push_to_hub_then_from_pretrained_against_loopback_server(saved, tmp_path):
    with serve() as (endpoint, state):
        out = run_python(
            f"""
            import json, numpy as np, hf_vit_flax
            from hf_vit_flax import FlaxAutoModelForImageClassification
            model = FlaxAutoModelForImageClassification.from_pretrained({str(saved)!r})
            model.push_to_hub("acme/pushed-vit")
            model.save_pretrained({str(tmp_path / "local")!r}, push_to_hub=True, repo_id="acme/saved-and-pushed")
            again = FlaxAutoModelForImageClassification.from_pretrained("acme/pushed-vit")
            logits = np.asarray(again(np.load({str(saved / "x.npy")!r})).logits)
            preds = again.predict(np.zeros((40, 40, 3), np.uint8), top_k=2)
            print(json.dumps({{"diff": float(np.abs(logits - np.load({str(saved / "logits.npy")!r})).max()),
                              "labels": [p["label"] for p in preds[0]]}}))
            """,
            {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "home"), "HF_TOKEN": "hf_test_token"},
            tmp_path,
        )
        repo = state.repos["acme/pushed-vit"]
        second = state.repos["acme/saved-and-pushed"]
    assert out["diff"] == 0.0
    assert all(label.startswith("class ") for label in out["labels"])
    expected_files = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert set(repo["files"]) == expected_files
    assert set(second["files"]) == expected_files
    card = repo["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "hf-vit-flax"
    assert meta["pipeline_tag"] == "image-classification"
    assert {"jax", "flax", "vision", "image-classification"} <= set(meta["tags"])
    assert (
        'from_pretrained("acme/pushed-vit")' in card
        and "from hf_vit_flax import FlaxAutoModelForImageClassification" in card
    )
    assert json.loads(repo["files"]["config.json"])["model_type"] == "vit_flax"
