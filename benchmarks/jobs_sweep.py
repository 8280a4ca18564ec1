"""`--jobs 1` vs `--jobs 2` on the quantization comparison, side by side in one invocation.

    python benchmarks/jobs_sweep.py [WORKFLOW] [--set K=V]...
        (default: pipelines/recipes/spam-quantization-compare.yaml; `--set` goes to every run, e.g.
         `--set steps.tune.max_steps=20` to build the upstream faster: the variants' work does not change)

The variants are the models the workflow's evaluate step compares, minus the baseline and what the
others are built from (read from the workflow, never hard-coded: a `matrix:` sweep expands the same
way). Their shared upstream steps are built once into a seed cache (`--set isolation=process`, so
run.json records each one's peak memory); then each setting runs the variants only (`--only`) on a
fresh copy of that cache, and the wall times, their ratio, each variant's time, threads and peak
memory, the CPU and how idle the machine was (vmstat, sampled every second during each run) are printed.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def variants(workflow: Path) -> tuple[list[str], list[str]]:
    """(the variant steps, the steps they read) of the workflow's first evaluate step."""
    from pipelines.graph import needed_for
    from pipelines.validate import load_workflow

    loaded = load_workflow(workflow, OVERRIDES)
    report = next(n for n, c in loaded.workflow.steps.items() if c.step_type() == "evaluate")
    models = list(loaded.workflow.steps[report].models)
    ancestors = {a for m in models for a in needed_for(loaded.graph, [m]) - {m}}
    chosen = [m for m in models if m not in ancestors]
    upstream = sorted({p for m in chosen for p in loaded.graph.predecessors(m)})
    return chosen, upstream


OVERRIDES: list[str] = []  # --set K=V given to this script, for every run


def cli(*args: str) -> subprocess.CompletedProcess:
    sets = [a for o in OVERRIDES for a in ("--set", o)] if args[0] in ("run", "plan") else []
    return subprocess.run([sys.executable, "-m", "runner.cli", *args, *sets], capture_output=True, text=True, cwd=ROOT)


def timed(workflow: Path, cache: Path, out: Path, steps: list[str], jobs: int) -> dict:
    """Run the variants with `--jobs`; wall time, vmstat idle while it ran, and run.json's step records."""
    vmstat = subprocess.Popen(["vmstat", "-n", "1"], stdout=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    proc = cli("run", str(workflow), "--cache-dir", str(cache), "--output", str(out), "--quiet", "--jobs", str(jobs),
               *[a for s in steps for a in ("--only", s)])
    seconds = time.perf_counter() - t0
    vmstat.terminate()
    lines = vmstat.communicate()[0].splitlines()
    header = lines[1].split()
    idle = [int(l.split()[header.index("id")]) for l in lines[3:] if l.split() and l.split()[0].isdigit()]
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
    doc = json.loads((out / "run.json").read_text())
    return {"seconds": seconds, "code": proc.returncode, "idle": sum(idle) / len(idle) if idle else None,
            "steps": {s: doc["steps"][s] for s in steps}}


def cpu() -> str:
    """The CPU model and its SIMD flags that matter to onnxruntime and PyTorch."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    simd = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}, flags {' '.join(simd) or 'none of avx/avx2/avx512'}"


def main() -> int:
    args = sys.argv[1:]
    while "--set" in args:
        at = args.index("--set")
        OVERRIDES.append(args[at + 1])
        del args[at:at + 2]
    workflow = Path(args[0] if args else ROOT / "pipelines" / "recipes" / "spam-quantization-compare.yaml")
    chosen, upstream = variants(workflow)
    from runner.resources import cpu_cores

    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed"
        t0 = time.perf_counter()
        proc = cli("run", str(workflow), "--cache-dir", str(seed), "--output", str(Path(tmp) / "seed-out"), "--quiet",
                   "--set", "isolation=process", *[a for s in upstream for a in ("--only", s)])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return 1
        seeded = json.loads((Path(tmp) / "seed-out" / "run.json").read_text())["steps"]
        plan = json.loads(cli("plan", str(workflow), "--cache-dir", str(seed), "--json").stdout)
        will_run = [r["name"] for r in plan if r["status"] != "cached"]
        print(f"workflow   {workflow.name} (overrides: {' '.join(OVERRIDES) or 'none'}); upstream built once in "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"variants   {', '.join(chosen)} (the plan on the seeded cache runs: {', '.join(will_run)})")
        results = {}
        for jobs in (1, 2):
            cache = Path(tmp) / f"cache{jobs}"
            shutil.copytree(seed, cache)
            results[jobs] = timed(workflow, cache, Path(tmp) / f"out{jobs}", chosen, jobs)
    one, two = results[1], results[2]
    print(f"machine    {cpu()}; {cpu_cores()} cores")
    print(f"{'':14}{'--jobs 1':>12}{'--jobs 2':>12}")
    print(f"{'wall time':14}{one['seconds']:>10.1f} s{two['seconds']:>10.1f} s")
    print(f"{'cpu idle':14}{one['idle']:>10.0f} %{two['idle']:>10.0f} %   (vmstat `id`, mean over the run)")
    for step in chosen:
        a, b = one["steps"][step], two["steps"][step]
        print(f"{step:14}{a['seconds']:>10.1f} s{b['seconds']:>10.1f} s   "
              f"threads {a['resources']['threads']} / {b['resources']['threads']}, "
              f"peak {b['resources'].get('peak_memory_mb')} MB (estimated {b['resources'].get('memory_estimate_mb')})")
    print(f"ratio      --jobs 2 is {one['seconds'] / two['seconds']:.2f}x the speed of --jobs 1")
    print("peak memory of the upstream steps, MB (estimated): " + ", ".join(
        f"{s} {r['resources'].get('peak_memory_mb')} ({r['resources'].get('memory_estimate_mb')})"
        for s, r in seeded.items() if r["status"] == "ran"))
    return 0 if one["code"] == two["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
