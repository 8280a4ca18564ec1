"""The CPU's instruction set, as onnxruntime's int8 and int4 kernels see it.

MLAS (onnxruntime's kernel library) picks its int8 GEMM per instruction set at load time, and the
choice decides which formats are fast and which are exact:
- `avx512_vnni` / `avx2_vnni` (and `avx10`): VPDPBUSD, u8 x s8 with 32-bit accumulation: exact and fastest.
- `avx512` (no VNNI) and `avx2`: VPMADDUBSW, which adds two u8 x s8 products into a *saturating* int16
  before widening. With full-range int8 weights the pair can exceed 32767 and clip; 7-bit weights
  (`reduce_range`) cannot (2 x 255 x 64 = 32640). u8 x u8 weights avoid it too but run a slower
  kernel: QUInt8 weights took 1.9x longer than QInt8 on MiniLM here (PERFORMANCE-NOTES.md).
- `arm64`: SDOT/UDOT (`asimddp`) or SMMLA (`i8mm`) with 32-bit accumulation: exact.
- `x86` (no AVX2) and `generic` (another architecture): onnxruntime's portable kernels; nothing is tuned.
optimum makes the same split (`AutoQuantizationConfig.avx2/avx512/avx512_vnni/arm64`).

Detection reads what the kernel reports (Linux /proc/cpuinfo flags, macOS sysctl) and never imports an
ML library. `target: {isa: ...}` names an ISA to build for another machine (the step's machine is
only the default), and the ISA a pass optimized for is part of its cache key (runner/keys.py).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from schemas.target import IsaName

#: ISA names (as `target.isa` takes them, without `auto`), fastest int8 path first within each architecture.
ISAS = get_args(IsaName)
#: ISAs whose int8 dot product accumulates in 32 bits (no saturation with full-range int8 weights).
EXACT_INT8 = frozenset({"avx512_vnni", "avx2_vnni", "arm64"})


@dataclass(frozen=True)
class CpuInfo:
    """What this machine's CPU is: model name, architecture, ISA class and the flags that decided it."""

    model: str
    arch: str
    isa: str
    flags: tuple[str, ...]

    def as_dict(self) -> dict:
        """For run.json and the reports."""
        return {"model": self.model, "arch": self.arch, "isa": self.isa, "flags": list(self.flags)}


#: Flags that decide the ISA class (the rest of /proc/cpuinfo's long list is not recorded).
_RELEVANT = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni",
             "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "bf16")


def classify(arch: str, flags: set[str]) -> str:
    """The ISA class of an architecture (`platform.machine()`) and its lower-case feature flags."""
    arch = arch.lower()
    if arch in ("arm64", "aarch64"):
        return "arm64"
    if arch not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "generic"  # another architecture: no ISA-specific choice is made for it
    avx512 = {"avx512f", "avx512bw"} <= flags
    if avx512 and flags & {"avx512_vnni", "avx512vnni"}:
        return "avx512_vnni"
    if "avx2" in flags and "avx_vnni" in flags:
        return "avx2_vnni"
    if avx512:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "x86"


def _linux_flags() -> tuple[str, set[str]]:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
    return model, flags


def _mac_flags() -> tuple[str, set[str]]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = set((sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")).lower().split())
    # macOS spells them AVX2, AVX512F, AVX512VNNI...; on Apple silicon it reports hw.optional.arm.FEAT_DotProd.
    flags = {f.replace(".", "_") for f in flags}
    if sysctl("hw.optional.arm.FEAT_DotProd") == "1":
        flags.add("asimddp")
    if sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        flags.add("i8mm")
    return sysctl("machdep.cpu.brand_string"), flags


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached: it does not change while the process runs)."""
    arch = platform.machine() or "unknown"
    model, flags = "", set()
    try:
        if Path("/proc/cpuinfo").is_file():
            model, flags = _linux_flags()
        elif platform.system() == "Darwin":
            model, flags = _mac_flags()
    except OSError:
        pass
    return CpuInfo(model=model or platform.processor() or arch, arch=arch, isa=classify(arch, flags),
                   flags=tuple(f for f in _RELEVANT if f in flags))


#: ISAs of the x86 family: there SkipLayerNormalization ran slower than Add + LayerNormalization (measured on
#: Zen 3 AVX2 and Zen 4 AVX512-VNNI hosts, MiniLM int8: 1.06-1.1x the unfused graph's p50), so it stays unfused.
X86_ISAS = frozenset({"avx512_vnni", "avx2_vnni", "avx512", "avx2", "x86"})


def fuse_skip_layer_norm(isa: str) -> bool:
    """Whether SkipLayerNormalization is fused for a cpu build on `isa`: not on x86 (slower there, measured);
    elsewhere (arm64) onnxruntime's default, fused, which we have not measured against."""
    return isa not in X86_ISAS


def detect_isa() -> str:
    """The ISA class of this machine's CPU (one of ISAS)."""
    return cpu_info().isa


def resolve(isa: str | None) -> str:
    """The ISA a step builds for: the target's own (`isa: avx2`), else this machine's (`auto` or None)."""
    return detect_isa() if isa in (None, "auto") else isa
