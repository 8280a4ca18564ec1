"""benchmarks/ort_avx2.py rewrites exactly the xgetbv instructions of a library, and they then report no AVX-512.

A tiny shared library compiled here reads XCR0 with xgetbv and also holds the same three bytes as data
(which must stay as they are: the patch follows the disassembly, not a byte search).
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess

import pytest

from benchmarks.ort_avx2 import XCR0_AVX, XGETBV, patch

SOURCE = r"""
unsigned long long xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}
const unsigned char lookalike[6] = {0x0f, 0x01, 0xd0, 0x0f, 0x01, 0xd0};
const unsigned char *data(void) { return lookalike; }
"""

pytestmark = pytest.mark.skipif(
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


def test_a_library_without_xgetbv_is_left_as_it_was(tmp_path):
    (tmp_path / "plain.c").write_text("int one(void) { return 1; }\n")
    out = tmp_path / "libplain.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(out), str(tmp_path / "plain.c")], check=True)
    before = out.read_bytes()
    assert patch(out) == 0
    assert out.read_bytes() == before
