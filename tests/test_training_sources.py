"""What a fine-tuning starts from and how it joins a multi-host run, without training.

* MODEL given as ``transformers:<repo>`` (a checkpoint in transformers' own format on the Hub, here the
  loopback Hub) or as a local folder of one: the backbone is the checkpoint's, the head is fresh for the
  dataset's labels, and the image processor is the checkpoint's.
* ``init_distributed`` resolves the coordinator, the process count and the process id from the options,
  then from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, then from a cluster's
  own environment (SLURM, Open MPI), and names what is missing. ``jax.distributed.initialize`` itself is
  exercised for real by the two-process test in test_training.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

pytest.importorskip("grain")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_vit_flax  # noqa: E402
from hf_vit_flax.training import TrainConfig  # noqa: E402
from hf_vit_flax.training.models import load_model  # noqa: E402
from hf_vit_flax.training.trainer import init_distributed  # noqa: E402
from tests.helpers import randomize_  # noqa: E402

LABELS = {0: "zero", 1: "one"}


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory):
    """A tiny ``ViTForImageClassification`` with 3 labels, saved by transformers, with its image processor."""
    folder = tmp_path_factory.mktemp("vit") / "checkpoint"
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    config = transformers.ViTConfig(**sizes, image_size=16, patch_size=4, num_labels=3)
    randomize_(transformers.ViTForImageClassification(config), 5).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.3] * 3).save_pretrained(folder)
    return folder


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(tree).items()}


def assert_fine_tunes(model, converted):
    """The backbone (every tensor) and image processor of ``converted``, a fresh head for LABELS."""
    assert model.config.id2label == LABELS and model.params["head"]["kernel"].shape == (32, 2)
    a, b = flat(converted.params["vit"]), flat(model.params["vit"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert model.image_processor.to_dict() == converted.image_processor.to_dict()


def test_transformers_hub_repo(hub, transformers_folder):
    hub.create("acme/vit-tiny")
    files = {p.name: p.read_bytes() for p in transformers_folder.iterdir()}
    hub.commit("acme/vit-tiny", "upload", files, [])
    converted = hf_vit_flax.from_transformers(str(transformers_folder))
    model, base = load_model("transformers:acme/vit-tiny", LABELS, seed=0)
    assert base == "transformers:acme/vit-tiny"
    assert_fine_tunes(model, converted)


def test_transformers_local_folder_with_and_without_prefix(transformers_folder):
    converted = hf_vit_flax.from_transformers(str(transformers_folder))
    for spec in (str(transformers_folder), f"transformers:{transformers_folder}"):
        model, _ = load_model(spec, LABELS, seed=0)
        assert_fine_tunes(model, converted)


# -- joining a multi-host run ---------------------------------------------------------------------------------

VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def initialize(monkeypatch):
    """The calls ``init_distributed`` makes to ``jax.distributed.initialize``, in a clean environment."""
    calls = []
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append(args))
    return calls


def config(**options) -> TrainConfig:
    return TrainConfig(data="digits", output_dir="unused", **options)


def test_single_process_by_default(initialize):
    init_distributed(config())
    assert initialize == []


def test_environment_variables(initialize, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    init_distributed(config())
    assert initialize == [("10.0.0.1:1234", 4, 3)]


def test_options_win_over_variables(initialize, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    init_distributed(config(coordinator_address="127.0.0.1:9999", num_processes=2, process_id=0))
    assert initialize == [("127.0.0.1:9999", 2, 0)]


@pytest.mark.parametrize("variable", ["SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])
def test_cluster_environment_is_left_to_jax(initialize, monkeypatch, variable):
    """Under SLURM or Open MPI, jax reads the cluster's own variables: ``initialize()`` without arguments."""
    monkeypatch.setenv(variable, "8")
    init_distributed(config())
    assert initialize == [()]


def test_partial_setup_names_what_is_missing(initialize, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="missing: process count, process id"):
        init_distributed(config())
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(ValueError, match="missing: coordinator address") as err:
        init_distributed(config(num_processes=2, process_id=1))
    assert "JAX_COORDINATOR_ADDRESS" in str(err.value) and initialize == []
