"""A copy of this venv's onnxruntime that runs MLAS's AVX2 kernels on an AVX-512 host: a measurement aid.

    python benchmarks/ort_avx2.py DIR            # writes DIR/onnxruntime (about 70 MB)
    PYTHONPATH=DIR python benchmarks/genai_vs_olive.py --isa avx2 ...

Why: MLAS (onnxruntime's kernels) picks its kernels once, from CPUID and the XCR0 register, so an
AVX512-VNNI machine cannot time what an AVX2-only one (a Zen 3, many laptops) runs, and hosts of both kinds
come and go here. The formats we build for AVX2 (`target.isa: avx2`) can be built anywhere, but their speed
against Olive's only shows on the kernels an AVX2 CPU runs.

How: in the copy, each `xgetbv` instruction of onnxruntime's libraries (it reads XCR0, the state the OS
enabled) is replaced by `push 7; pop rax` (the same three bytes' length): XCR0 then says x87, SSE and AVX
state are enabled and AVX-512 state is not, so every AVX-512 path (MLAS's and onnxruntime's own) is
skipped and the AVX2/FMA ones are chosen, as on a CPU without AVX-512. The instructions are found by
disassembling (binutils' objdump), not by a byte search (the bytes 0f 01 d0 also occur inside other
instructions and data). onnxruntime-genai loads the onnxruntime package Python finds first, so with DIR first
on PYTHONPATH both run the copy. The venv's own onnxruntime is not touched.

Checked by `python benchmarks/nbits_kernels.py` under the copy on a Zen 4 (AVX512-VNNI): the profile of an
AVX2 host (block sizes 32/64/128 alike, 0.97-0.99x; asymmetric blocks 0.85x; 8-bit layers 0.60-0.70x), where
the venv's onnxruntime gives the VNNI one (blocks of 64 1.22x and of 128 1.36x faster than 32). The core is still
a Zen 4 (its clock, caches and memory), so absolute rates are not a Zen 3's: compare ratios measured side by
side, and confirm a result on a real AVX2 host when one is at hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: xgetbv and its stand-in, `push 7; pop rax` (XCR0 = x87 | SSE | AVX).
XGETBV, XCR0_AVX = b"\x0f\x01\xd0", b"\x6a\x07\x58"
#: A file in the copy's package folder: benchmarks print that their onnxruntime runs AVX2 kernels only.
MARKER = "AVX2_KERNELS_ONLY"


def kernels_note() -> str:
    """What the benchmarks print next to the CPU: whether the onnxruntime Python imports is such a copy."""
    spec = importlib.util.find_spec("onnxruntime")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is not None and (folder / MARKER).is_file():
        return f"onnxruntime: AVX2 kernels only (the benchmarks/ort_avx2.py copy in {folder.parent})"
    return "onnxruntime: the kernels this CPU selects"


def sections(library: Path) -> list[tuple[int, int, int]]:
    """(address, size, file offset) of each section of `library`, from `objdump -h`."""
    text = subprocess.run(["objdump", "-h", str(library)], capture_output=True, text=True, check=True).stdout
    rows = re.finditer(r"^\s*\d+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", text, re.M)
    return [(int(m.group(2), 16), int(m.group(1), 16), int(m.group(3), 16)) for m in rows]


def patch(library: Path) -> int:
    """Replace every xgetbv instruction of `library` in place; how many there were."""
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                         check=True).stdout
    addresses = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+xgetbv\b", asm, re.M)]
    table, data = sections(library), bytearray(library.read_bytes())
    for address in addresses:
        start, _, offset = next(s for s in table if s[0] <= address < s[0] + s[1])
        at = address - start + offset
        if data[at:at + 3] != XGETBV:
            raise SystemExit(f"{library.name}: no xgetbv at {address:#x} (objdump and the file disagree)")
        data[at:at + 3] = XCR0_AVX
    library.write_bytes(bytes(data))
    return len(addresses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="where the copy goes (DIR/onnxruntime); put DIR first on PYTHONPATH")
    args = parser.parse_args()
    if platform.machine() not in ("x86_64", "AMD64"):
        print(f"only x86-64 has AVX2 and AVX-512 (this is {platform.machine()})", file=sys.stderr)
        return 2
    if shutil.which("objdump") is None:
        print("objdump (binutils) is needed to find the instructions: apt-get install binutils", file=sys.stderr)
        return 2
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        print("onnxruntime is not installed in this Python", file=sys.stderr)
        return 2
    source = Path(spec.submodule_search_locations[0])
    target = args.dir.resolve() / "onnxruntime"
    if target == source:
        print("DIR must not be the venv's site-packages: the copy would replace the installed onnxruntime",
              file=sys.stderr)
        return 2
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    libraries = sorted(p for p in (target / "capi").iterdir() if ".so" in p.name and p.is_file())
    counts = {p.name: patch(p) for p in libraries}
    if not any(counts.values()):
        shutil.rmtree(target)
        print(f"no xgetbv found in {source / 'capi'}: this onnxruntime does not read XCR0; nothing to do",
              file=sys.stderr)
        return 1
    (target / MARKER).write_text("xgetbv replaced by benchmarks/ort_avx2.py: " + json.dumps(counts) + "\n")
    for name, count in counts.items():
        print(f"{name}: {count} xgetbv replaced")
    print(f"onnxruntime with AVX2 kernels only: PYTHONPATH={args.dir.resolve()} python ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
