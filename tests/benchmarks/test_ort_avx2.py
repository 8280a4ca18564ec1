"""benchmarks/ort_avx2.py rewrites exactly the xgetbv instructions of a library, and they then report no AVX-512;
the benchmarks say when the onnxruntime they import is such a copy.

A tiny shared library compiled here reads XCR0 with xgetbv and also holds the same three bytes as data
(which must stay as they are: the patch follows the disassembly, not a byte search).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys

import pytest

from benchmarks.ort_avx2 import MARKER, XCR0_AVX, XGETBV, kernels_note, patch
from tests.builders import ROOT

SOURCE = r"""
unsigned long long xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}
const unsigned char lookalike[6] = {0x0f, 0x01, 0xd0, 0x0f, 0x01, 0xd0};
const unsigned char *data(void) { return lookalike; }
"""

needs_toolchain = pytest.mark.skipif(
    platform.machine() != "x86_64" or not shutil.which("gcc") or not shutil.which("objdump"),
    reason="needs x86-64, gcc and objdump")


@pytest.fixture()
def library(tmp_path):
    (tmp_path / "xcr0.c").write_text(SOURCE)
    out = tmp_path / "libxcr0.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(out), str(tmp_path / "xcr0.c")], check=True)
    return out


def load(path):
    lib = ctypes.CDLL(str(path))
    lib.xcr0.restype = ctypes.c_ulonglong
    lib.data.restype = ctypes.POINTER(ctypes.c_ubyte * 6)
    return lib


@needs_toolchain
def test_xgetbv_reads_avx_state_only_after_the_patch(library, tmp_path):
    before = load(library).xcr0()
    assert before & 0x7 == 0x7  # x87, SSE, AVX: any machine onnxruntime's x86 build runs on
    patched = tmp_path / "patched.so"
    shutil.copyfile(library, patched)
    assert patch(patched) == 1
    lib = load(patched)
    assert lib.xcr0() == 0x7  # no opmask/ZMM state: AVX-512 looks disabled, AVX/AVX2 paths are taken
    assert bytes(lib.data().contents) == XGETBV * 2  # the data bytes that look like xgetbv are untouched
    raw = patched.read_bytes()
    assert raw.count(XCR0_AVX) == library.read_bytes().count(XCR0_AVX) + 1


@needs_toolchain
def test_a_library_without_xgetbv_is_left_as_it_was(tmp_path):
    (tmp_path / "plain.c").write_text("int one(void) { return 1; }\n")
    out = tmp_path / "libplain.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(out), str(tmp_path / "plain.c")], check=True)
    before = out.read_bytes()
    assert patch(out) == 0
    assert out.read_bytes() == before


def test_benchmarks_say_when_their_onnxruntime_is_such_a_copy(tmp_path):
    """kernels_note reads the marker of the onnxruntime the process imports (here a stand-in package first on the
    path, as `PYTHONPATH=DIR` puts the copy), and says nothing of the kind for the installed one."""
    package = tmp_path / "onnxruntime"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / MARKER).write_text("xgetbv replaced\n")
    code = "from benchmarks.ort_avx2 import kernels_note; print(kernels_note())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == f"onnxruntime: AVX2 kernels only (the benchmarks/ort_avx2.py copy in {tmp_path})"
    assert kernels_note() == "onnxruntime: the kernels this CPU selects"
