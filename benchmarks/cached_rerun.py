"""First run vs fully cached re-run of a workflow, side by side in one invocation.

    python benchmarks/cached_rerun.py [WORKFLOW]     (default: the quickstart recipe)

Uses a fresh cache folder, runs `pipeline run` twice in subprocesses and prints both wall times and
their ratio, plus whether the re-run imported any ML library (it must not).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["torch", "transformers", "peft", "onnx", "onnxruntime", "datasets", "sklearn"]
PROBE = (
    "import json, sys\nfrom runner.cli import main\ncode = main(sys.argv[1:])\n"
    f"print('HEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def timed_run(workflow: Path, cache: Path, out: Path) -> tuple[float, int, list[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "run", str(workflow), "--cache-dir", str(cache),
                           "--output", str(out), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    heavy = next((json.loads(l[6:]) for l in proc.stderr.splitlines() if l.startswith("HEAVY=")), [])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
    return elapsed, proc.returncode, heavy


def main() -> int:
    workflow = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        first, code1, _ = timed_run(workflow, cache, out)
        second, code2, heavy = timed_run(workflow, cache, out)
    print(f"workflow         {workflow.name}")
    print(f"first run        {first:8.2f} s  (exit {code1})")
    print(f"cached re-run    {second:8.2f} s  (exit {code2})")
    print(f"ratio            {first / second:8.1f}x faster when cached")
    print(f"ML libraries imported by the re-run: {heavy or 'none'}")
    return 0 if code1 == code2 == 0 and not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
