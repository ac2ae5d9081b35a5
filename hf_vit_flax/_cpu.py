"""The host CPU (vendor, model, vector extensions, from ``/proc/cpuinfo``) and the XLA:CPU settings chosen from it.

XLA:CPU's speed depends on the CPU (AVX2 machines and AVX-512/AMX ones run different kernels): the
benchmark records it and names its result files after :attr:`CpuInfo.family`, and importing
``hf_vit_flax`` adds the settings measured to be faster on this kind of CPU to ``XLA_FLAGS``
(:func:`set_xla_flags`) unless the user set them or ``HF_VIT_FLAX_XLA_CPU_DEFAULTS=0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import sys
from pathlib import Path
from typing import Any

# The extensions that decide the speed of float32 / bfloat16 matmuls and element-wise code.
VECTOR_EXTENSIONS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    vendor: str  # "GenuineIntel", "AuthenticAMD", ... or "unknown"
    model_name: str
    flags: frozenset[str]

    @property
    def vector_extensions(self) -> list[str]:
        return [name for name in VECTOR_EXTENSIONS if name in self.flags]

    @property
    def isa(self) -> str:
        """The widest matmul instruction set: "amx", "avx512", "avx2" or "other"."""
        if "amx_tile" in self.flags:
            return "amx"
        if "avx512f" in self.flags:
            return "avx512"
        return "avx2" if "avx2" in self.flags else "other"

    @property
    def family(self) -> str:
        """A short name for result files: ``intel-xeon-amx``, ``amd-epyc-avx2``, ``amd-epyc-avx512`` ..."""
        name = self.model_name.lower()
        if self.vendor == "GenuineIntel":
            base = "intel-xeon" if "xeon" in name else "intel"
        elif self.vendor == "AuthenticAMD":
            base = "amd-epyc" if "epyc" in name else "amd"
        else:
            base = platform.machine().lower() or "cpu"
        return f"{base}-{self.isa}" if self.isa != "other" else base


@functools.cache
def cpu_info(cpuinfo: str | None = None) -> CpuInfo:
    """The first processor's entry of ``/proc/cpuinfo`` (or of the text given)."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return CpuInfo(
        vendor=fields.get("vendor_id", "unknown"),
        model_name=fields.get("model name", platform.processor() or "unknown"),
        flags=frozenset(fields.get("flags", fields.get("Features", "")).split()),
    )


# -- XLA:CPU settings chosen from the CPU ------------------------------------------------------------

DISABLE_ENV = "HF_VIT_FLAX_XLA_CPU_DEFAULTS"  # set to 0 to keep XLA's own defaults


@dataclasses.dataclass(frozen=True)
class XlaOption:
    flag: str  # the XLA_FLAGS name
    flag_value: str  # as written in XLA_FLAGS
    option_value: Any  # as passed in jax.jit(compiler_options=...)


def xla_cpu_options(cpu: CpuInfo | None = None) -> list[XlaOption]:
    """The XLA:CPU settings that make these models faster on ``cpu`` (none where XLA's defaults are best).

    On Intel CPUs with AVX-512 (measured on a Xeon with AMX, benchmarks/README.md), XLA's default sends
    every float32 matmul to YNNPACK, whose kernels ran 15-25% below Eigen's, oneDNN's and MKL's per core
    (ViT-B/16 MLP shapes: ~120-130 against ~150-156 GFLOP/s); restricting YNNPACK to fusions rooted in a
    reduction keeps the attention (its dots, softmax and normalisation) in one YNNPACK fusion, which was
    faster than XLA's own, and gives every other matmul to XLA's Eigen path. On the AMD EPYC (AVX2) where
    the benchmark first ran, XLA's defaults were already ahead of PyTorch: nothing changes there.
    """
    cpu = cpu or cpu_info()
    if cpu.vendor == "GenuineIntel" and "avx512f" in cpu.flags:
        return [XlaOption("xla_cpu_experimental_ynn_fusion_type", "reduce", "LIBRARY_FUSION_TYPE_REDUCE")]
    return []


def _user_flags(environ) -> str:
    return environ.get("XLA_FLAGS", "")


def _enabled(environ) -> bool:
    return environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def set_xla_flags(environ=None) -> list[str]:
    """Add this CPU's :func:`xla_cpu_options` to ``XLA_FLAGS`` (called when ``hf_vit_flax`` is imported).

    Nothing changes when the user set a flag of the same name, when ``HF_VIT_FLAX_XLA_CPU_DEFAULTS=0``,
    or when jax's backends exist already (XLA reads ``XLA_FLAGS`` once); :func:`jit_compiler_options`
    then still applies to the HF wrappers' own compiled functions. Returns the flags added.
    """
    environ = os.environ if environ is None else environ
    if not _enabled(environ) or _backends_initialised():
        return []
    user = _user_flags(environ)
    added = [f"--{o.flag}={o.flag_value}" for o in xla_cpu_options() if f"--{o.flag}" not in user]
    if added:
        environ["XLA_FLAGS"] = " ".join([user, *added]).strip()
    return added


def jit_compiler_options() -> dict[str, Any]:
    """``compiler_options`` for ``jax.jit``: this CPU's settings, for the CPU backend, unless the user chose."""
    import jax

    if not _enabled(os.environ) or jax.default_backend() != "cpu":
        return {}
    user = _user_flags(os.environ)
    return {o.flag: o.option_value for o in xla_cpu_options() if f"--{o.flag}" not in user or _ours(user, o)}


# Below this many parameters, compiling a model's initialiser takes far longer than running it: XLA's
# optimiser spends tens of seconds on the random-number code of every parameter (a tiny CrossFormer: 85 s
# to compile, 20 s unoptimised), while an unoptimised initialiser of ViT-B runs 7x slower (24 s vs 3 s).
SMALL_MODEL_PARAMETERS = 10_000_000


def init_compiler_options(num_parameters: int) -> dict[str, Any]:
    """``compiler_options`` for ``jax.jit`` of a model's initialiser: unoptimised for small models on CPU."""
    import jax

    if jax.default_backend() != "cpu" or num_parameters >= SMALL_MODEL_PARAMETERS:
        return {}
    return {"xla_backend_optimization_level": 0}


def _ours(flags: str, option: XlaOption) -> bool:
    return f"--{option.flag}={option.flag_value}" in flags.split()


def _backends_initialised() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


set_xla_flags()  # on import of hf_vit_flax (its __init__ imports this module first)
