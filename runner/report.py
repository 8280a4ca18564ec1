"""What a run leaves behind: the deployable outputs, `run.json` and a readable `report.md`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from passes import Artifact
from pipelines.validate import LoadedWorkflow

from .keys import package_versions
from .records import RunOptions, RunResult, StepRecord

if TYPE_CHECKING:
    from .console import RunConsole

#: Versions recorded in every run.json (besides those each pass declares).
RECORDED_PACKAGES = ("pipeline-orchestrator", "torch", "transformers", "peft", "onnx", "onnxruntime",
                     "onnxruntime-genai", "optimum", "datasets", "pydantic")


def _replace_tree(src: Path, dest: Path) -> None:
    """Copy `src` to `dest`, replacing what was there, so that `dest` is never half old, half new."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp)
    if dest.exists():
        old = dest.parent / f".{dest.name}.old.{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)


def copy_outputs(loaded: LoadedWorkflow, records: dict[str, StepRecord], artifacts: dict[str, Artifact],
                 out_dir: Path, console: "RunConsole") -> None:
    """Copy each `outputs` entry and every evaluate step's report from the cache to the output folder."""
    for out_name, step in loaded.workflow.outputs.items():
        if step in artifacts:
            _replace_tree(artifacts[step].path, out_dir / out_name)
            console.line(f"output {out_name}: {out_dir / out_name}")
        elif step in records:
            console.line(f"output {out_name}: not written (step {step!r} {records[step].status})", style="yellow")
    for name, art in artifacts.items():
        if art.kind == "metrics":
            _replace_tree(art.path, out_dir / "reports" / name)


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
        "options": {"force": list(options.force), "only": list(options.only), "fail_fast": options.fail_fast},
        "steps": {name: _step_json(r, _target_json(loaded, name)) for name, r in result.steps.items()},
        "outputs": {o: {"step": s, "path": str(result.output_dir / o) if s in artifacts else None}
                    for o, s in loaded.workflow.outputs.items()},
        "metrics": {name: r.meta["metrics"] for name, r in result.steps.items() if r.meta.get("metrics")},
        "packages": package_versions(tuple(sorted(set(RECORDED_PACKAGES) | declared))),
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    tmp = result.output_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str))
    os.replace(tmp, result.output_dir / "run.json")
    (result.output_dir / "report.md").write_text(render_report(loaded, result, artifacts))


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
        f"target {wf.target.device} ({', '.join(wf.target.resolved_providers())}) · {_iso(result.started)}",
        "",
        "| step | type | status | time | key | summary |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result.steps.items():
        detail = (r.summary or r.error or "").replace("|", "\\|").replace("\n", " ")
        ran_on = (r.meta.get("execution") or {}).get("provider")
        if ran_on:
            detail += f" (on {ran_on})"
        lines.append(f"| {name} | {r.type} | {r.status} | {r.seconds:.1f} s | {(r.key or '')[:12]} | {detail} |")
    if wf.outputs:
        lines += ["", "## Outputs", ""]
        for out_name, step in wf.outputs.items():
            where = f"`{out_name}/`" if step in artifacts else "not written"
            lines.append(f"- {out_name} (from {step}): {where}")
    for name, art in artifacts.items():
        report = art.path / "report.md"
        if art.kind == "metrics" and report.exists():
            body = report.read_text().replace("](", f"](reports/{name}/")  # keep its images' links working
            lines += ["", f"## Evaluation: {name}", "", _demote(body)]
    return "\n".join(lines) + "\n"


def _demote(markdown: str) -> str:
    """Nest an embedded report's headings under ours (its own title gives way to our "Evaluation: <step>")."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + l if l.startswith("#") else l for l in lines).strip("\n")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))
