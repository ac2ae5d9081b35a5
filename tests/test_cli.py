"""The command line, run as a user runs it."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hf_vit_flax import FlaxViTForImageClassification, ViTConfig
from hf_vit_flax.cli import main
from tests.helpers import TINY_CONFIGS


def test_predict_prints_top_k_labels(tmp_path, capsys):
    config = ViTConfig(**TINY_CONFIGS["vit"], id2label={0: "cat", 1: "dog", 2: "bird"})
    FlaxViTForImageClassification(config).save_pretrained(tmp_path / "model")
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    assert (
        main(["predict", str(tmp_path / "model"), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--top-k", "2"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("a.png") and lines[3].endswith("b.jpg") and len(lines) == 6
    assert all(line.split()[1] in ("cat", "dog", "bird") for line in lines[1:3])
    scores = [float(line.split()[0]) for line in lines[1:3]]
    assert scores[0] >= scores[1]


def test_predict_bad_image_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "not-an-image.png").write_text("hello")
    assert main(["predict", str(tmp_path), str(tmp_path / "not-an-image.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_console_script_runs_offline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_vit_flax.cli", "demo", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits identical after the round trip: True" in result.stdout
    assert os.path.exists(tmp_path / "model" / "model.safetensors")
