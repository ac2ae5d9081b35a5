"""Speed of the Flax models against their PyTorch originals, on identical weights, on this machine.

For each entry of ``ENTRIES`` (a model and the reference it is compared with) the benchmark
measures, alternating between the two implementations and keeping the median of several rounds:

* inference in float32 (bfloat16 computation on a GPU): batch-1 latency and batch-8 throughput of our
  jitted forward called through the Hugging Face wrapper (``model(pixel_values).logits``), against
  timm / vit-pytorch under ``torch.inference_mode()``, or transformers' own ``FlaxViTForImageClassification``;
* the first-call time of our wrapper (trace + compile + one batch-1 call) and the compile part of it;
* timm under ``torch.compile`` (by default for the entries marked ``compile=True``): its first call and its
  steady-state throughput, in the same alternation;
* a training step (forward, backward, AdamW via optax, batch 8) against the same step in PyTorch;
* the machine's matmul rate (a large jitted matmul) and each model's efficiency: model FLOPs (the
  matmul and convolution FLOPs of the forward, counted on its jaxpr) x images/s / that rate.

Usage (from the repository root)::

    python -m benchmarks.run                 # the full run (~10 minutes on 2 cores)
    python -m benchmarks.run --quick         # the small models only (~2 minutes)
    python -m benchmarks.run --only vit_b16 --rounds 3

Results go to ``benchmarks/results/latest.md`` and ``latest.json`` (``--output`` to change). What decides
the figures is recorded with them: the CPU and its vector extensions, torch's BLAS/oneDNN build, threads,
and ``XLA_FLAGS`` (the user's, and those in effect after ``hf_vit_flax`` added its settings for this CPU);
the benchmark itself changes no library default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.readme_examples import seed_readme_examples, without_dropout

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- the table of comparisons -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One comparison: our model against one reference implementation, on identical weights.

    ``build()`` returns ``(reference, ours)``: for ``kind='torch'`` a PyTorch ``nn.Module`` (timm or
    vit-pytorch) and our HF model converted from it; for ``kind='hf_flax'`` transformers'
    ``FlaxViTForImageClassification`` and ours. It raises ``Skip`` with a reason when a converter or
    package is not available.
    """

    key: str
    model: str  # e.g. "ViT-B/16"
    reference: str  # e.g. "timm vit_base_patch16_224"
    kind: str  # "torch" or "hf_flax"
    build: Callable[[], tuple[Any, Any]]
    image_size: int
    quick: bool = False
    train: bool = True
    compile: bool = False  # time timm under torch.compile too by default (its first call takes minutes on a CPU)
    note: str = ""


class Skip(Exception):
    """An entry that cannot run here (a converter not available yet, a missing package)."""


def _from_timm(module):
    """Our model with the weights of a live timm module, through the project's converter."""
    import hf_vit_flax

    from_timm = getattr(hf_vit_flax, "from_timm", None)
    if from_timm is None:
        try:
            from hf_vit_flax.timm_weights import from_timm
        except ImportError as err:
            raise Skip(f"hf_vit_flax.from_timm is not available ({err})") from err
    try:
        return from_timm(module)
    except NotImplementedError as err:
        raise Skip(f"from_timm does not convert this model yet: {err}") from err


def timm_entry(key, model, arch, image_size, quick=False, train=True, compile=False, **kwargs) -> Entry:
    def build():
        import timm

        module = timm.create_model(arch, pretrained=False, **kwargs).eval()
        return module, _from_timm(module)

    return Entry(key, model, f"timm {arch}", "torch", build, image_size, quick=quick, train=train, compile=compile)


def vit_pytorch_entry(key, model, cls_path, kwargs: dict, quick=False, train=True) -> Entry:
    def build():
        import importlib

        import hf_vit_flax

        module_name, cls_name = cls_path.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as err:
            raise Skip(f"{cls_path} is not importable: {err}") from err
        module = cls(**kwargs).eval()
        try:
            return module, hf_vit_flax.from_vit_pytorch(module)
        except NotImplementedError as err:
            raise Skip(f"from_vit_pytorch does not convert {cls_path} yet: {err}") from err

    name = cls_path.split(".")[-1]
    image_size = kwargs.get("image_size", 224)
    return Entry(key, model, f"vit-pytorch {name}", "torch", build, image_size, quick=quick, train=train)


def hf_flax_entry(key, model, arch, image_size, quick=False) -> Entry:
    """Ours against transformers' ``FlaxViTForImageClassification`` holding the same (timm) weights."""

    def build():
        import timm

        ours = _from_timm(timm.create_model(arch, pretrained=False).eval())
        return to_transformers_flax_vit(ours), ours

    return Entry(key, model, f"transformers FlaxViT ({arch})", "hf_flax", build, image_size, quick=quick, train=False)


# The README's seed-style examples (vit-pytorch's configurations), dropout off.
SEED = {name: without_dropout(kwargs) for name, kwargs in seed_readme_examples().items()}

ENTRIES: list[Entry] = [
    timm_entry("vit_ti16", "ViT-Ti/16", "vit_tiny_patch16_224", 224, quick=True, compile=True),
    timm_entry("vit_s16", "ViT-S/16", "vit_small_patch16_224", 224),
    timm_entry("vit_b16", "ViT-B/16", "vit_base_patch16_224", 224, compile=True),
    hf_flax_entry("vit_b16_hf", "ViT-B/16", "vit_base_patch16_224", 224),
    hf_flax_entry("vit_ti16_hf", "ViT-Ti/16", "vit_tiny_patch16_224", 224, quick=True),
    timm_entry("deit_s16_dist", "DeiT-S/16 distilled", "deit_small_distilled_patch16_224", 224, train=False),
    timm_entry("cait_xxs24", "CaiT-XXS24", "cait_xxs24_224", 224, quick=True, compile=True),
    timm_entry("crossvit_ti", "CrossViT-Ti", "crossvit_tiny_240", 240, quick=True, compile=True),
    vit_pytorch_entry("seed_vit", "ViT (seed config)", "vit_pytorch.vit.ViT", SEED["ViT"], quick=True),
    vit_pytorch_entry("seed_cait", "CaiT (seed config)", "vit_pytorch.cait.CaiT", SEED["CaiT"]),
    vit_pytorch_entry("seed_crossvit", "CrossViT (seed config)", "vit_pytorch.cross_vit.CrossViT", SEED["CrossViT"]),
    vit_pytorch_entry(
        "seed_crossformer", "CrossFormer (seed config)", "vit_pytorch.crossformer.CrossFormer", SEED["CrossFormer"]
    ),
]


# -- transformers' FlaxViT with our weights -----------------------------------------------------------


def to_transformers_flax_vit(ours):
    """transformers' ``FlaxViTForImageClassification`` holding the weights of our ViT.

    The package's transformers-format export (the config and checkpoint names transformers' PyTorch
    ``ViTForImageClassification`` reads) loaded the way transformers loads a PyTorch checkpoint into its
    Flax class; a ViT that transformers cannot express is skipped with the exporter's reason.
    """
    import jax
    import jax.numpy as jnp
    from transformers import FlaxViTForImageClassification, ViTConfig
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    from hf_vit_flax.models.vit.convert_transformers import config_to_transformers, export_transformers

    try:
        hf_config = config_to_transformers(ours.config)
    except NotImplementedError as err:
        raise Skip(str(err)) from err
    if hf_config.pop("architectures") != ["ViTForImageClassification"]:
        raise Skip("transformers' FlaxViT has a ViTForImageClassification only (no DeiT or headless class)")
    hf_config.pop("model_type")
    model = FlaxViTForImageClassification(ViTConfig(**hf_config), dtype=ours.dtype)
    state_dict = export_transformers(jax.device_get(ours.module_params()["params"]), ours.config)
    model.params = jax.tree.map(jnp.asarray, convert_pytorch_state_dict_to_flax(state_dict, model))
    return model


# -- measuring ----------------------------------------------------------------------------------------


def machine_info(torch_threads: int, xla_flags_user: str | None = None) -> dict[str, Any]:
    """What decides the figures: the CPU and its vector extensions, the libraries, torch's BLAS/oneDNN build,
    XLA's flags (the user's, and those in effect once ``hf_vit_flax`` chose its CPU defaults)."""
    import flax
    import jax
    import jaxlib

    from hf_vit_flax._cpu import cpu_info

    cpu = cpu_info()
    info: dict[str, Any] = {
        "cpu": cpu.model_name,
        "cpu_vendor": cpu.vendor,
        "cpu_family": cpu.family,
        "cpu_vector_extensions": cpu.vector_extensions,
        "cores": _usable_cores(),
        "cores_in_machine": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_FLAGS_user": os.environ.get("XLA_FLAGS", "") if xla_flags_user is None else xla_flags_user,
        "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
        "load_average_start": _loadavg(),
    }
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch_threads
        info["torch_build"] = _torch_build(torch)
        info["torch_blas"] = _torch_blas(info["torch_build"])
        info["torch_cuda"] = torch.cuda.is_available()
    for name in ("timm", "vit_pytorch", "transformers", "optax"):
        with contextlib.suppress(Exception):
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
    if info.get("vit_pytorch") == "?":
        from importlib.metadata import version

        info["vit_pytorch"] = version("vit-pytorch")
    return info


def _usable_cores() -> int:
    """The cores this process may run on (``taskset`` / cgroup affinity), which XLA's thread pool uses too."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _torch_build(torch) -> dict[str, Any]:
    """torch's CPU kernels: its BLAS (MKL or OpenBLAS, version), oneDNN version, the ISA its kernels dispatch to."""
    import re

    config = torch.__config__.show()
    build: dict[str, Any] = {"blas": "unknown"}
    for token in config.replace(",", " ").split():
        if token.startswith("BLAS_INFO="):
            build["blas"] = token.split("=", 1)[1]
    if match := re.search(r"Math Kernel Library Version ([\w.]+)", config):
        build["mkl"] = match.group(1)
    if match := re.search(r"(?:MKL-DNN|oneDNN) (v[\d.]+)", config):
        build["onednn"] = match.group(1)
    with contextlib.suppress(Exception):
        build["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    with contextlib.suppress(Exception):
        build["mkldnn_enabled"] = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    with contextlib.suppress(Exception):
        if match := re.search(r"ATen parallel backend: (\w+)", torch.__config__.parallel_info()):
            build["parallel"] = match.group(1)
    return build


def _torch_blas(build: dict[str, Any]) -> str:
    """One line for the table: ``mkl 2024.2 + oneDNN v3.12.0, AVX512``."""
    text = build["blas"] + (f" {build['mkl']}" if "mkl" in build else "")
    if "onednn" in build:
        text += f" + oneDNN {build['onednn']}"
    return text + (f", {build['cpu_capability']}" if "cpu_capability" in build else "")


def matmul_rate(n: int, dtype, repeats: int = 5) -> float:
    """FLOP/s of a jitted ``(n, n) @ (n, n)`` matmul: the median of ``repeats`` timed calls."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def torch_matmul_rate(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def count_flops(fn: Callable, *args) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of ``fn(*args)``, counted on its jaxpr.

    Element-wise work (softmax, LayerNorm, GELU) is left out, as in the usual "model FLOPs".
    """
    import jax

    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> int:
    from jax.extend import core as jex_core

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contract = math.prod(lhs_shape[d] for d in lhs_contract)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * contract
        elif name == "conv_general_dilated":
            rhs_shape = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
            per_output = math.prod(rhs_shape[d] for d in rhs_spec[1:])
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * per_output
        multiplier = eqn.params.get("length", 1) if name == "scan" else 1
        branches = []
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    branches.append(_jaxpr_flops(sub.jaxpr))
                elif isinstance(sub, jex_core.Jaxpr):
                    branches.append(_jaxpr_flops(sub))
        if branches:
            # cond: one branch runs; every other higher-order primitive runs its single body.
            total += multiplier * (max(branches) if name == "cond" else sum(branches))
    return total


@dataclasses.dataclass
class Timing:
    """Per-call seconds of each implementation, one sample per round."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, slow: str, fast: str) -> float:
        """The median over rounds of ``time(slow) / time(fast)``: > 1 means ``fast`` is faster."""
        return statistics.median(s / f for s, f in zip(self.samples[slow], self.samples[fast], strict=True))


def alternate(fns: dict[str, Callable[[], Any]], rounds: int, min_block_s: float, max_iters: int = 50) -> Timing:
    """Time each function in alternation: every round runs a block of each, in alternating order.

    Each function must already be warm (compiled). A block repeats the call until it lasts at
    least ``min_block_s`` (calibrated on one call) so short calls are not dominated by timer noise.
    """
    iters = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        iters[name] = max(1, min(max_iters, math.ceil(min_block_s / max(once, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, n = fns[name], iters[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return Timing(samples)


# -- the implementations as callables ---------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    rounds: int = 5
    min_block_s: float = 0.5
    batch: int = 8
    train: bool = True
    train_rounds: int = 3
    gpu: bool = False
    compile: str = "default"  # torch.compile anchor: "default" (the entries marked compile=True), "all", "none"
    compile_backend: str = "inductor"


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


class Ours:
    """Our HF wrapper, called as users call it: ``model(pixel_values).logits`` on NCHW numpy images."""

    def __init__(self, model):
        self.model = model

    def infer(self, images):
        return self.model(images).logits.block_until_ready()

    def infer_fn(self, images) -> Callable[[], Any]:
        """A timed call on images already on the device, as the reference's tensor is."""
        import jax

        x = jax.device_put(images)
        return lambda: self.infer(x)

    def logits(self, images) -> np.ndarray:
        return np.asarray(self.model(images).logits, dtype=np.float32)

    def train_step(self, images, labels, lr=1e-4, weight_decay=0.05):
        """A jitted ``(params, opt_state) -> (params, opt_state, loss)`` AdamW step with donated buffers."""
        import jax
        import jax.numpy as jnp
        import optax

        model = self.model
        tx = optax.adamw(lr, weight_decay=weight_decay)

        def loss_fn(params, x, y, rng):
            logits = model(x, params=params, dropout_rng=rng, train=True).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

        def step(params, opt_state, x, y, rng):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y, rng)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        step = jax.jit(step, donate_argnums=(0, 1))
        params = jax.tree.map(jnp.copy, model.params)  # the model keeps its own weights
        state = {"params": params, "opt": tx.init(params)}
        x, y, rng = jnp.asarray(images), jnp.asarray(labels), jax.random.key(0)

        def run():
            state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y, rng)
            loss.block_until_ready()

        return run


class TransformersFlax(Ours):
    """transformers' Flax model, jitted as its documentation recommends (its ``__call__`` is not jitted)."""

    def __init__(self, model):
        import jax

        self.model = model
        self._forward = jax.jit(lambda params, x: model(x, params=params).logits)

    def infer(self, images):
        return self._forward(self.model.params, images).block_until_ready()

    def logits(self, images) -> np.ndarray:
        return np.asarray(self._forward(self.model.params, images), dtype=np.float32)


class TorchReference:
    """A PyTorch model under ``torch.inference_mode()`` (bfloat16 autocast on a GPU)."""

    def __init__(self, module, gpu: bool):
        import torch

        self.torch = torch
        self.device = "cuda" if gpu else "cpu"
        self.module = module.to(self.device).eval()
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else contextlib.nullcontext

    def _tensor(self, images):
        return self.torch.from_numpy(np.ascontiguousarray(images)).to(self.device)

    def infer_fn(self, images) -> Callable[[], Any]:
        x = self._tensor(images)

        def run():
            with self.torch.inference_mode(), self.autocast():
                out = self.module(x)
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            return out

        return run

    def logits(self, images) -> np.ndarray:
        with self.torch.inference_mode(), self.autocast():
            return self.module(self._tensor(images)).float().cpu().numpy()

    def train_step(self, images, labels, lr=1e-4, weight_decay=0.05):
        torch = self.torch
        module = self.module.train()
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        x, y = self._tensor(images), torch.from_numpy(labels).long().to(self.device)

        def run():
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = torch.nn.functional.cross_entropy(module(x).float(), y)
            loss.backward()
            opt.step()
            if self.device == "cuda":
                torch.cuda.synchronize()

        return run


class TorchCompiled(TorchReference):
    """The same PyTorch module under ``torch.compile`` (default mode: what a PyTorch user reaches for first)."""

    def __init__(self, reference: TorchReference, backend: str = "inductor"):
        self.torch, self.device, self.autocast = reference.torch, reference.device, reference.autocast
        self.module = reference.torch.compile(reference.module, backend=backend)


def _first_call(ours: Ours, images) -> float:
    start = time.perf_counter()
    ours.infer(images)
    return time.perf_counter() - start


def _params(model) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(model.params)))


def run_entry(entry: Entry, settings: Settings, rate: float, log=print) -> dict[str, Any]:
    """Measure one entry; returns its JSON record (``{'skipped': reason}`` when it cannot run here)."""
    import jax
    import jax.numpy as jnp

    record: dict[str, Any] = {"key": entry.key, "model": entry.model, "reference": entry.reference}
    try:
        reference, ours_model = entry.build()
    except Skip as err:
        log(f"  skipped: {err}")
        return {**record, "skipped": str(err)}
    if settings.gpu:
        ours_model = type(ours_model).from_params(
            ours_model.config, ours_model.module_params()["params"], dtype=jnp.bfloat16
        )
        if entry.kind == "hf_flax":
            reference = to_transformers_flax_vit(ours_model)
    ours = Ours(ours_model)
    ref = TransformersFlax(reference) if entry.kind == "hf_flax" else TorchReference(reference, settings.gpu)
    size, batch = entry.image_size, settings.batch
    one, many = _images(1, size), _images(batch, size, seed=1)
    record["params"] = _params(ours_model)
    record["batch"] = batch

    # The first call of a fresh wrapper traces and compiles its forward.
    record["first_call_s"] = _first_call(ours, one)
    if entry.kind == "hf_flax":
        record["reference_first_call_s"] = _first_call(ref, one)

    # Identical weights: the logits agree before anything is timed.
    ours_logits, ref_logits = ours.logits(many), ref.logits(many)
    diff = float(np.max(np.abs(ours_logits - ref_logits)))
    record["max_abs_logits_diff"] = diff
    # float32 on a CPU: only the accumulation order differs. bfloat16 on a GPU: relative to the logits' scale.
    tolerance = 5e-2 * float(np.max(np.abs(ref_logits))) if settings.gpu else 1e-3
    if not diff <= tolerance:
        raise AssertionError(f"{entry.key}: the logits of ours and {entry.reference} differ by {diff:.2e}")

    # Counted on the float32 module: in bfloat16 on a GPU the attention is a cuDNN call, not a dot_general.
    module = ours_model.module.clone(dtype=jnp.float32)
    flops = count_flops(
        lambda x: module.apply({"params": ours_model.params}, x).logits, jnp.zeros((1, size, size, 3), jnp.float32)
    )
    record["gflops_per_image"] = flops / 1e9

    compiled = None
    if entry.kind == "torch" and (settings.compile == "all" or (settings.compile == "default" and entry.compile)):
        # The first call compiles (dynamo + inductor, a cold cache: see main); then the same logits check.
        compiled = TorchCompiled(ref, settings.compile_backend)
        start = time.perf_counter()
        compiled_logits = compiled.logits(many)
        record["compiled_first_call_s"] = time.perf_counter() - start
        record["compiled_max_abs_logits_diff"] = float(np.max(np.abs(ours_logits - compiled_logits)))
        log(f"  torch.compile first call (batch {batch}): {record['compiled_first_call_s']:.1f} s")

    for label, images in (("batch1", one), (f"batch{batch}", many)):
        fns = {"ours": ours.infer_fn(images), "reference": ref.infer_fn(images)}
        if compiled is not None and images.shape[0] == batch:  # batch 1 would compile a second graph
            fns["compiled"] = compiled.infer_fn(images)
        timing = alternate(fns, settings.rounds, settings.min_block_s)
        n = images.shape[0]
        record[label] = {
            "ours_s": timing.median("ours"),
            "reference_s": timing.median("reference"),
            "speedup": timing.ratio("reference", "ours"),
            "ours_images_per_s": n / timing.median("ours"),
            "reference_images_per_s": n / timing.median("reference"),
            "ours_efficiency": flops * n / timing.median("ours") / rate,
            "reference_efficiency": flops * n / timing.median("reference") / rate,
            "samples": timing.samples,
        }
        log(
            f"  {label}: speedup {record[label]['speedup']:.3f}  ours {n / timing.median('ours'):.2f} img/s  "
            f"reference {n / timing.median('reference'):.2f} img/s  efficiency {record[label]['ours_efficiency']:.0%}"
        )
        if "compiled" in fns:
            record[label].update(
                compiled_s=timing.median("compiled"),
                compiled_images_per_s=n / timing.median("compiled"),
                speedup_compiled=timing.ratio("compiled", "ours"),
                compiled_over_eager=timing.ratio("reference", "compiled"),
                compiled_efficiency=flops * n / timing.median("compiled") / rate,
            )
            log(
                f"  {label} vs torch.compile: speedup {record[label]['speedup_compiled']:.3f}  "
                f"compiled {n / timing.median('compiled'):.2f} img/s"
            )
    record["compile_s"] = max(record["first_call_s"] - record["batch1"]["ours_s"], 0.0)

    if settings.train and entry.train and entry.kind == "torch":
        labels = np.arange(batch, dtype=np.int32) % max(ours_model.config.num_labels, 1)
        ours_step = ours.train_step(many, labels)
        start = time.perf_counter()
        ours_step()
        first = time.perf_counter() - start
        ref_step = ref.train_step(many, labels)
        ref_step()
        timing = alternate({"ours": ours_step, "reference": ref_step}, settings.train_rounds, settings.min_block_s)
        record["train"] = {
            "ours_s": timing.median("ours"),
            "reference_s": timing.median("reference"),
            "speedup": timing.ratio("reference", "ours"),
            "first_call_s": first,
            "ours_efficiency": 3 * flops * batch / timing.median("ours") / rate,  # backward ~ 2x forward
            "samples": timing.samples,
        }
        log(
            f"  train step: speedup {record['train']['speedup']:.3f}  ours {timing.median('ours'):.2f} s  "
            f"reference {timing.median('reference'):.2f} s"
        )
    jax.clear_caches()
    return record


# -- reporting ----------------------------------------------------------------------------------------


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _load_warning(machine: dict[str, Any]) -> list[str]:
    """A note when other processes were using the cores: PyTorch's OpenMP threads then slow down far more than XLA's.

    The 1-minute load average at the end includes the benchmark's own threads (one per core), so it
    signals other work only above the core count.
    """
    cores = machine.get("cores") or 1
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    if (start and start[0] > 0.5 * cores) or (end and end[0] > 1.25 * cores):
        return ["**The machine was busy with other work during this run: the figures are noisy.**", ""]
    return []


def _xla_flags_origin(machine: dict[str, Any]) -> str:
    if machine.get("XLA_FLAGS", "") == machine.get("XLA_FLAGS_user", machine.get("XLA_FLAGS", "")):
        return ""
    return f" (the user's: {machine.get('XLA_FLAGS_user') or '(unset)'}; the rest chosen by hf_vit_flax for this CPU)"


def markdown(result: dict[str, Any]) -> str:
    m, rate = result["machine"], result["matmul"]
    precision = "bfloat16 computation, float32 parameters" if result["settings"]["gpu"] else "float32"
    lines = [
        f"Measured {result['date']} with `{result['command']}`"
        + ("" if result.get("complete", True) else " (interrupted: the entries measured so far)"),
        "",
        f"Machine: {m['cpu']} ({m.get('cpu_family', '?')}: {' '.join(m.get('cpu_vector_extensions', [])) or '?'}), "
        f"{m['cores']} cores, {m.get('memory_gib')} GiB; {m['jax_backend']} ({m['jax_device']}); jax {m['jax']} "
        f"(jaxlib {m.get('jaxlib', '?')}), flax {m['flax']}, torch {m.get('torch', '-')} "
        f"({m.get('torch_blas', '-')}, {m.get('torch_threads', '-')} threads), timm {m.get('timm', '-')}; "
        f"XLA_FLAGS={m['XLA_FLAGS'] or '(unset)'}{_xla_flags_origin(m)}; load average {m['load_average_start']} "
        f"at the start, {m.get('load_average_end')} at the end.",
        "",
        *_load_warning(m),
        f"Matmul rate ({rate['n']}x{rate['n']} {rate['dtype']}, jitted): {rate['jax_gflops']:.0f} GFLOP/s "
        + (f"(torch: {rate['torch_gflops']:.0f} GFLOP/s)." if rate.get("torch_gflops") else "."),
        "",
        f"Inference ({precision}); speedup = reference time / our time (> 1: ours is faster), the median over "
        f"{result['settings']['rounds']} alternating rounds; efficiency = model FLOPs x images/s / matmul rate.",
        "",
        f"| model | reference | GFLOPs/img | batch 1 speedup | batch {result['settings']['batch']} speedup "
        f"| ours img/s | ours efficiency | reference efficiency | first call (s) | max abs logits diff |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    batch_key = f"batch{result['settings']['batch']}"
    skipped = []
    for r in result["entries"]:
        if "skipped" in r or "failed" in r:
            why = f"skipped ({r['skipped']})" if "skipped" in r else f"failed ({r['failed']})"
            skipped.append(f"- {r['model']} vs {r['reference']}: {why}")
            continue
        b1, bn = r["batch1"], r[batch_key]
        lines.append(
            f"| {r['model']} | {r['reference']} | {r['gflops_per_image']:.2f} | {b1['speedup']:.2f}x "
            f"| {bn['speedup']:.2f}x | {bn['ours_images_per_s']:.1f} | {bn['ours_efficiency']:.0%} "
            f"| {bn['reference_efficiency']:.0%} | {r['first_call_s']:.1f} | {r['max_abs_logits_diff']:.1e} |"
        )
    compiled = [r for r in result["entries"] if "compiled_s" in r.get(batch_key, {})]
    if compiled:
        lines += [
            "",
            f"The torch.compile anchor (batch {result['settings']['batch']}, `torch.compile(model)` with the "
            f"{result['settings'].get('compile_backend', 'inductor')} backend, default mode, timed in the same "
            f"alternation; first call = dynamo + inductor with a cold cache + one batch-"
            f"{result['settings']['batch']} call; ours: trace + compile + one batch-1 call).",
            "",
            "| model | reference | speedup vs torch.compile | torch.compile vs eager | compiled img/s "
            "| compiled efficiency | compiled first call (s) | ours first call (s) |",
            "|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in compiled:
            bn = r[batch_key]
            lines.append(
                f"| {r['model']} | {r['reference']} | {bn['speedup_compiled']:.2f}x | {bn['compiled_over_eager']:.2f}x "
                f"| {bn['compiled_images_per_s']:.1f} | {bn['compiled_efficiency']:.0%} "
                f"| {r['compiled_first_call_s']:.1f} | {r['first_call_s']:.1f} |"
            )
    trained = [r for r in result["entries"] if "train" in r]
    if trained:
        lines += [
            "",
            f"Training step (forward + backward + AdamW, batch {result['settings']['batch']}; ours: optax, jitted, "
            f"donated buffers; reference: torch.optim.AdamW); median over {result['settings']['train_rounds']} rounds.",
            "",
            "| model | reference | step speedup | ours s/step | reference s/step | ours efficiency | first step (s) |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for r in trained:
            t = r["train"]
            lines.append(
                f"| {r['model']} | {r['reference']} | {t['speedup']:.2f}x | {t['ours_s']:.3g} "
                f"| {t['reference_s']:.3g} | {t['ours_efficiency']:.0%} | {t['first_call_s']:.1f} |"
            )
    if skipped:
        lines += ["", "Not measured:", *skipped]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------------


def _write(result: dict[str, Any], folder: Path) -> str:
    (folder / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (folder / "latest.md").write_text(table)
    return table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.run")
    parser.add_argument("--quick", action="store_true", help="only the small models (about 2 minutes on 2 cores)")
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help=f"entries to run, of: {', '.join(e.key for e in ENTRIES)}"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds per measurement (5; 3 with --quick)"
    )
    parser.add_argument("--batch", type=int, default=None, help="throughput batch size (8 on a CPU, 256 on a GPU)")
    parser.add_argument("--no-train", action="store_true", help="skip the training steps")
    parser.add_argument("--train-rounds", type=int, default=3, help="alternating rounds of the training steps")
    parser.add_argument("--min-block", type=float, default=0.5, help="minimum seconds of one timed block")
    parser.add_argument(
        "--torch-threads", type=int, default=_usable_cores(), help="torch.set_num_threads (all usable cores)"
    )
    parser.add_argument("--xla-flags", default=None, help="XLA_FLAGS for this run (recorded with the results)")
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side of the square matmul that sets the rate (2048; 8192 on a GPU)",
    )
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const="all",
        help="time every PyTorch reference under torch.compile too (default: only the timm entries marked for it, "
        "ViT-Ti/16, ViT-B/16, CaiT-XXS24, CrossViT-Ti; each first call takes about a minute on 2 cores)",
    )
    compile_group.add_argument(
        "--no-compile", dest="compile", action="store_const", const="none", help="no torch.compile anchor"
    )
    parser.set_defaults(compile="default")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor; 'eager' only checks the code path)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for latest.md and latest.json")
    return parser.parse_args(argv)


def main(argv=None, entries: list[Entry] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    xla_flags_user = os.environ.get("XLA_FLAGS", "") if args.xla_flags is None else args.xla_flags
    # torch.compile's first call is measured with a cold cache (inductor keeps compiled graphs on disk).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="benchmarks-inductor-"))
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags  # read when jax creates its backend, i.e. below
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore", message="TensorFlow and JAX classes are deprecated")
    import jax
    import jax.numpy as jnp

    import hf_vit_flax  # noqa: F401  before jax starts its backends: it adds this CPU's XLA settings to XLA_FLAGS

    gpu = jax.default_backend() == "gpu"
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(args.torch_threads)
    settings = Settings(
        rounds=args.rounds or (3 if args.quick else 5),
        min_block_s=args.min_block,
        batch=args.batch or (256 if gpu else 8),
        train=not args.no_train,
        train_rounds=args.train_rounds,
        gpu=gpu,
        compile=args.compile,
        compile_backend=args.compile_backend,
    )
    entries = entries if entries is not None else ENTRIES
    if args.only:
        unknown = set(args.only) - {e.key for e in entries}
        if unknown:
            raise SystemExit(f"unknown entries {sorted(unknown)}; choose from {[e.key for e in entries]}")
        entries = [e for e in entries if e.key in args.only]
    elif args.quick:
        entries = [e for e in entries if e.quick]

    started = time.perf_counter()
    machine = machine_info(args.torch_threads, xla_flags_user)
    dtype = jnp.bfloat16 if gpu else jnp.float32
    n = args.matmul_size or (8192 if gpu else 2048)
    rate = {"n": n, "dtype": jnp.dtype(dtype).name, "jax_gflops": matmul_rate(n, dtype) / 1e9}
    if not gpu and "torch" in machine:
        rate["torch_gflops"] = torch_matmul_rate(n) / 1e9
    print(f"matmul rate: {rate}", flush=True)

    command = "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command.strip(),
        "complete": False,
        "machine": machine,
        "settings": dataclasses.asdict(settings),
        "matmul": rate,
        "entries": [],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        print(f"{entry.model} vs {entry.reference}", flush=True)
        try:
            record = run_entry(entry, settings, rate["jax_gflops"] * 1e9, log=lambda s: print(s, flush=True))
        except Exception as err:  # one failing entry (out of memory, a parity failure) must not end the run
            print(f"  failed: {type(err).__name__}: {err}", flush=True)
            record = {
                "key": entry.key,
                "model": entry.model,
                "reference": entry.reference,
                "failed": f"{type(err).__name__}: {str(err)[:500]}",
            }
            jax.clear_caches()
        result["entries"].append(record)
        result["machine"]["load_average_end"] = _loadavg()
        result["wall_s"] = time.perf_counter() - started
        _write(result, args.output)  # after every entry: an interrupted run keeps what it measured
    # The rate again at the end: a shared machine's load changes during the run.
    rate["jax_gflops_end"] = matmul_rate(n, dtype) / 1e9
    result["complete"] = True
    table = _write(result, args.output)
    print("\n" + table)
    print(f"written to {args.output}/latest.md and latest.json ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
