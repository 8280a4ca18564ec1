"""What a run leaves behind: the deployable outputs, `run.json` and a readable `report.md`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from passes import Artifact
from passes.ort.isa import cpu_info
from pipelines.validate import LoadedWorkflow
from schemas.errors import PipelineError
from schemas.target import Target
from schemas.workflow import REPORT_MD, REPORTS_DIR, RUN_JSON

from .keys import package_versions
from .records import RunOptions, RunResult, StepRecord

if TYPE_CHECKING:
    from .console import RunConsole

#: Versions recorded in every run.json (besides those each pass declares).
RECORDED_PACKAGES = ("pipeline-orchestrator", "torch", "transformers", "peft", "onnx", "onnxruntime",
                     "onnxruntime-genai", "optimum", "datasets", "pydantic")


class OutputError(PipelineError):
    """The run's outputs or files could not be written to the output folder (a full disk, permissions)."""


def _stage(src: Path, staged: Path) -> Path:
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, staged)
    return staged


def copy_outputs(loaded: LoadedWorkflow, records: dict[str, StepRecord], artifacts: dict[str, Artifact],
                 out_dir: Path, console: "RunConsole") -> None:
    """Copy each `outputs` entry and every evaluate step's report from the cache to the output folder.

    Everything is copied first into one temporary folder inside the output folder (same file system,
    so moves are renames); only when every copy is complete is each moved into place by one rename,
    a previous run's folder of that name moved aside first and deleted after. A failure (a full disk)
    raises OutputError and leaves the output folder as it was; nothing but the run's own names is touched.
    """
    staging = out_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    moves: list[tuple[Path, Path]] = []  # (staged copy, destination)
    try:
        for out_name, step in loaded.workflow.outputs.items():
            if step in artifacts:
                moves.append((_stage(artifacts[step].path, staging / out_name), out_dir / out_name))
            elif step in records:
                console.line(f"output {out_name}: not written (step {step!r} {records[step].status})", style="yellow")
        for name, art in artifacts.items():
            report = _report_folder(art)
            if report is not None:
                moves.append((_stage(report, staging / REPORTS_DIR / name), out_dir / REPORTS_DIR / name))
        _move_in(moves, staging)
    except OSError as exc:
        raise OutputError(_write_failure(out_dir, exc)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for staged, dest in moves:
        if dest.parent == out_dir:
            console.line(f"output {dest.name}: {dest}")


def _move_in(moves: list[tuple[Path, Path]], staging: Path) -> None:
    """Rename each staged copy to its destination; on a failure, put back what was moved aside."""
    done: list[tuple[Path, Path | None]] = []  # (destination, where its old content went)
    try:
        for i, (staged, dest) in enumerate(moves):
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if dest.is_symlink() or dest.exists():
                old = staging / f".old-{i}"
                os.rename(dest, old)
            done.append((dest, old))
            os.rename(staged, dest)
    except OSError:
        for dest, old in reversed(done):
            with contextlib.suppress(OSError):
                if old is not None:
                    if dest.exists():
                        os.rename(dest, staging / f".new-{uuid.uuid4().hex[:8]}")
                    os.rename(old, dest)
        raise


def _write_failure(out_dir: Path, exc: OSError) -> str:
    """What went wrong writing to the output folder, and what to do about it."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        reason = str(exc.args[0][0][-1])  # copytree gathers (src, dst, why) per file: the first says it
        full = "No space left" in reason
    else:
        reason = exc.strerror or str(exc)
        full = exc.errno == errno.ENOSPC
    hint = ("free some disk space, or choose another folder with --output" if full else
            "check the folder's permissions, or choose another folder with --output")
    return (f"cannot write the run's outputs to {out_dir}: {reason}; {hint} (the step results stay in the cache: "
            "the next run only copies them; nothing in the output folder was replaced)")


def _step_json(record: StepRecord, target: dict | None = None) -> dict:
    return {
        "type": record.type, "kind": record.kind, "status": record.status, "key": record.key,
        "seconds": round(record.seconds, 3), "summary": record.summary, "error": record.error,
        "metrics": record.meta.get("metrics"),
        # Where the step ran, as its onnxruntime session reported (None for steps that run no session),
        # and what a target-aware pass chose for the step's target.
        "target": target,
        "execution": record.meta.get("execution"),
        "choices": record.meta.get("choices"),
        # threads it was given, whether in a process of its own, memory estimate and peak (MB)
        "resources": record.resources or None,
        "meta": {k: v for k, v in record.meta.items() if k not in ("metrics", "summary", "execution", "choices")},
    }


def write_run_files(loaded: LoadedWorkflow, result: RunResult, artifacts: dict[str, Artifact],
                    options: RunOptions) -> None:
    """Write `run.json` and `report.md` into the output folder."""
    from passes import get_pass

    declared = {p for r in result.steps.values() for p in get_pass(r.type).packages}
    doc = {
        "workflow": {"name": loaded.workflow.name, "file": str(loaded.file), "description": loaded.workflow.description},
        "status": result.status,
        "exit_code": result.exit_code,
        "started": _iso(result.started),
        "finished": _iso(result.finished),
        "seconds": round(result.finished - result.started, 3),
        "target": loaded.workflow.target.model_dump(mode="json"),
        "options": {"force": list(options.force), "only": list(options.only), "fail_fast": options.fail_fast,
                    "jobs": options.jobs},
        "steps": {name: _step_json(r, _target_json(loaded, name)) for name, r in result.steps.items()},
        "outputs": {o: {"step": s, "path": str(result.output_dir / o) if s in artifacts else None}
                    for o, s in loaded.workflow.outputs.items()},
        "metrics": {name: r.meta["metrics"] for name, r in result.steps.items() if r.meta.get("metrics")},
        "packages": package_versions(tuple(sorted(set(RECORDED_PACKAGES) | declared))),
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                     "cpu": cpu_info().as_dict()},
    }
    tmp = result.output_dir / f".{RUN_JSON}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str))
        os.replace(tmp, result.output_dir / RUN_JSON)
        (result.output_dir / REPORT_MD).write_text(render_report(loaded, result, artifacts))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(_write_failure(result.output_dir, exc)) from None


def _target_json(loaded: LoadedWorkflow, name: str) -> dict | None:
    """A step's own target (workflow target with its overrides) when it differs from the workflow's."""
    target = loaded.workflow.target.overridden(loaded.workflow.steps[name].target)
    return None if target == loaded.workflow.target else target.model_dump(mode="json")


def render_report(loaded: LoadedWorkflow, result: RunResult, artifacts: dict[str, Artifact]) -> str:
    """The run as Markdown: status, steps, outputs and each evaluation's report."""
    wf = loaded.workflow
    lines = [f"# {wf.name}", ""]
    if wf.description:
        lines += [wf.description, ""]
    lines += [
        f"Status: **{result.status}** · {result.finished - result.started:.1f} s · "
        f"target {wf.target.device} ({', '.join(wf.target.resolved_providers())}) · {_iso(result.started)} · "
        f"CPU {_cpu_line(wf.target)}",
        "",
        "| step | type | status | time | key | summary |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result.steps.items():
        detail = (r.summary or r.error or "").replace("|", "\\|").replace("\n", " ")
        ran_on = (r.meta.get("execution") or {}).get("provider")
        if ran_on:
            detail += f" (on {ran_on})"
        threads, peak = r.resources.get("threads"), r.resources.get("peak_memory_mb")
        if threads:
            detail += f" ({threads} thread{'s' if threads != 1 else ''}" + (f", peak {peak} MB)" if peak is not None else ")")
        lines.append(f"| {name} | {r.type} | {r.status} | {r.seconds:.1f} s | {(r.key or '')[:12]} | {detail} |")
    if wf.outputs:
        lines += ["", "## Outputs", ""]
        for out_name, step in wf.outputs.items():
            where = f"`{out_name}/`" if step in artifacts else "not written"
            lines.append(f"- {out_name} (from {step}): {where}")
    for name, art in artifacts.items():
        folder = _report_folder(art)
        if folder is not None and (folder / "report.md").exists():
            body = (folder / "report.md").read_text().replace("](", f"]({REPORTS_DIR}/{name}/")  # keep its images' links working
            lines += ["", f"## {'Evaluation' if art.kind == 'metrics' else 'Report'}: {name}", "", _demote(body)]
    return "\n".join(lines) + "\n"


def _cpu_line(target: Target) -> str:
    """The CPU, its instruction-set class and the ISA cpu-target steps built for when the target names another."""
    info = cpu_info()
    built_for = f", building for {target.isa}" if target.isa not in ("auto", info.isa) else ""
    return f"{info.model} ({info.isa}{built_for})"


def _report_folder(art: Artifact) -> Path | None:
    """Where a step's report is: an evaluation's whole folder, or the `report_dir` a model-producing step names
    inside its artifact (`select` keeps its report next to the model it chose)."""
    if art.kind == "metrics":
        return art.path
    sub = art.meta.get("report_dir")
    if isinstance(sub, str) and sub and "/" not in sub and sub not in (".", "..") and (art.path / sub).is_dir():
        return art.path / sub
    return None


def _demote(markdown: str) -> str:
    """Nest an embedded report's headings under ours (its own title gives way to our "Evaluation: <step>")."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + l if l.startswith("#") else l for l in lines).strip("\n")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))
