"""The host CPU: vendor, model and vector extensions, read from ``/proc/cpuinfo`` (Linux; elsewhere, unknown).

XLA:CPU's speed depends on them (AVX2 machines and AVX-512/AMX ones run different kernels), so the
benchmark records them and names its result files after :attr:`CpuInfo.family`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
from pathlib import Path

# The extensions that decide the speed of float32 / bfloat16 matmuls and element-wise code.
VECTOR_EXTENSIONS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve",
)  # fmt: skip


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
