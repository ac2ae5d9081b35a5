import os

# No network at test time: everything Hub-related is served from local caches or a loopback server
# (in subprocesses that set their own environment).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity is checked in full float32 precision (TF32 matmuls on GPUs would miss 1e-5).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# Compiled programs go to an on-disk cache shared by the test workers and the subprocesses they start:
# the suite builds the same small models in many tests, and compiling them is most of its time.
# The cache key covers the program, the compiler options, XLA_FLAGS and the jax version.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
)
# Programs that compile in under half a second (single eager ops) are not worth a file. No size limit:
# jax's least-recently-used eviction rescans the whole folder on every write (delete the folder instead).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite's models are tiny: compiling them costs far more than running them, and LLVM's optimisation
# passes are a large part of compiling (~25% of the parity tests' time on 2 cores). The tests check values,
# which the optimisation level does not change; the benchmark measures speed with XLA's defaults.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# The test workers (one per core) and the processes they start share the cores: PyTorch's OpenMP threads,
# which spin while they wait, would oversubscribe them (one thread each: ~12% less wall time on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402

# What depends on the transformers line (transformers' FlaxPreTrainedModel is a base class on 4.x, not on 5.x;
# huggingface_hub 0.x against 1.x/2.x): the tests CI also runs on transformers 4.57, marked ``transformers_line``
# (``pytest -m "transformers_line and not slow"``). A file with ``None`` counts whole; otherwise the names its
# tests must contain. The model code, config checks, converters, CLI and fine-tuning loop are the same on both
# lines. Their parity is here once per kind: the recorded CrossFormer fixture, vit-pytorch's ViT.
TRANSFORMERS_LINE = {
    "tests/test_hf_stack.py": None,
    "tests/test_save_load.py": None,
    "tests/test_hub.py": None,
    "tests/test_param_layout.py": None,
    "tests/test_from_transformers.py": None,
    "tests/test_export_transformers.py": None,
    "tests/test_training_hub_dataset.py": None,
    # transformers' own FlaxModelTesterMixin, where the classes also derive from its FlaxPreTrainedModel.
    "tests/test_transformers_conformance.py": ("FlaxViTConformanceTest",),
    "tests/test_family_contract.py": ("test_save_and_auto_load_is_exact",),
    "tests/models/test_crossformer.py": ("test_original_fixture_parity",),
    "tests/models/test_vit.py": ("test_parity_with_vit_pytorch",),
}


def pytest_collection_modifyitems(config, items):
    """Marks the ``TRANSFORMERS_LINE`` tests, then puts the slow tests first, in collection order otherwise:
    with one worker per core, a long test that started last would leave the other workers idle at the end."""
    for item in items:
        path, _, name = item.nodeid.partition("::")
        if path in TRANSFORMERS_LINE and (
            TRANSFORMERS_LINE[path] is None or any(part in name for part in TRANSFORMERS_LINE[path])
        ):
            item.add_marker("transformers_line")
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The loopback Hub as huggingface_hub's endpoint, online, with an empty cache."""
    from huggingface_hub import constants, file_download

    from tests.hub_server import serve

    with serve() as (endpoint, state):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)  # 0.x copy
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        _forget_hub_sessions()
        yield state
    _forget_hub_sessions()


def _forget_hub_sessions():
    # huggingface_hub 0.x caches requests sessions, 1.x/2.x an httpx client, per endpoint; drop them.
    from huggingface_hub.utils import _http

    for name in ("reset_sessions", "close_session"):
        if hasattr(_http, name):
            getattr(_http, name)()


@pytest.fixture
def hub_datasets(hub, monkeypatch, tmp_path):
    """``hub``, and the loopback Hub as ``datasets``' endpoint too: datasets keeps its own copies of the
    endpoint, of the offline switch and of its cache folders (read from the environment at import);
    online for this test only, caches under ``tmp_path``."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    config, endpoint, cache = datasets.config, constants.ENDPOINT, tmp_path / "datasets"
    monkeypatch.setattr(config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(config, "HF_MODULES_CACHE", cache / "modules")
    downloads = cache / config.DOWNLOADED_DATASETS_DIR
    monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", downloads)
    monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", downloads / config.EXTRACTED_DATASETS_DIR)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return hub
