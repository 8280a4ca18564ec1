"""The CPU instruction set: detection from the flags the kernel reports, and how it enters cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.ort import isa
from runner.keys import key_parts
from schemas import Target
from schemas.steps import EvaluateConfig, OptimizeOnnxConfig, QuantizeConfig


@pytest.mark.parametrize(("arch", "flags", "expected"), [
    ("x86_64", {"avx", "avx2", "fma"}, "avx2"),  # AMD Zen 3, Intel Haswell..Skylake client
    ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512vl"}, "avx512"),  # Skylake-SP: VPMADDUBSW, no VNNI
    ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "avx512_vnni"),  # AMD Zen 4, Cascade Lake+
    ("AMD64", {"avx2", "avx_vnni"}, "avx2_vnni"),  # Alder Lake client: VNNI on 256-bit registers
    ("x86_64", {"sse4_2"}, "x86"),
    ("aarch64", {"asimd", "asimddp"}, "arm64"),
    ("arm64", set(), "arm64"),
    ("riscv64", {"rvv"}, "generic"),
])
def test_isa_classes(arch, flags, expected):
    assert isa.classify(arch, flags) == expected
    assert expected in isa.ISAS


def test_this_machine_is_detected_and_named_isas_win(monkeypatch, tmp_path):
    info = isa.cpu_info()
    assert info.isa in isa.ISAS and info.arch and info.model
    assert set(info.flags) <= set(isa._RELEVANT)  # only the flags that decide the class are recorded
    assert isa.resolve("auto") == isa.resolve(None) == info.isa
    assert isa.resolve("arm64") == "arm64"  # a target built for another machine
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx avx2 avx512f avx512bw avx512_vnni\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(cpuinfo) if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
    assert isa._linux_flags() == ("AMD EPYC 9R14", {"fpu", "avx", "avx2", "avx512f", "avx512bw", "avx512_vnni"})


def test_skip_layer_norm_is_fused_off_x86_only():
    assert not any(isa.fuse_skip_layer_norm(name) for name in ("avx2", "avx512", "avx512_vnni", "avx2_vnni", "x86"))
    assert isa.fuse_skip_layer_norm("arm64") and isa.fuse_skip_layer_norm("generic")


def test_the_isa_is_keyed_only_for_cpu_steps_whose_result_depends_on_it():
    def key(cfg, target):
        return key_parts(cfg, 1, (), {}, {}, target)

    auto = QuantizeConfig(type="quantize", model="m")
    assert auto.uses_isa and key(auto, Target()).isa == isa.detect_isa()
    assert key(auto, Target(isa="avx2")).key != key(auto, Target(isa="avx512_vnni")).key
    assert key(auto, Target(device="gpu", isa="avx2")).isa is None  # not a cpu build
    static = QuantizeConfig(type="quantize", model="m", method="int4")
    assert not static.uses_isa and key(static, Target(isa="avx2")).key == key(static, Target(isa="arm64")).key
    unfused = QuantizeConfig(type="quantize", model="m", method="dynamic_int8", fuse=False)
    assert not unfused.uses_isa
    set_here = OptimizeOnnxConfig(type="optimize_onnx", model="m", skip_layer_norm=False)
    assert OptimizeOnnxConfig(type="optimize_onnx", model="m").uses_isa and not set_here.uses_isa
    # A step that does not depend on the ISA keeps the key it had before `isa` existed: the field is not in it.
    ev = EvaluateConfig(type="evaluate", models=["m"], data="d")
    assert "isa" not in key(ev, Target()).as_dict() and "isa" not in key(ev, Target()).as_dict()["target"]
    assert key(ev, Target(isa="avx2")).key == key(ev, Target(isa="arm64")).key
