"""`pipeline submit --register-model NAME`: register a finished job's deployable ONNX output as a model.

The model is a `custom_model` whose path is the job's output (`azureml://jobs/JOB/outputs/...`), tagged
with what a deployer asks first: format, execution provider, precision, and the evaluation's metrics.
Metrics come from small outputs only (a command job's `report`, a pipeline's evaluate nodes): the
models themselves are never downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipelines.validate import LoadedWorkflow
from schemas.base import step_output_kind
from schemas.errors import PipelineError

from .build import sdk
from .spec import REPORT_OUTPUT, RUN_OUTPUT, make_spec

#: Quantization methods and the precision of the model they write.
METHOD_PRECISION = {"dynamic_int8": "int8", "static_int8": "int8", "int4": "int4", "fp16": "fp16"}


def pick_model_output(loaded: LoadedWorkflow, wanted: str | None) -> tuple[str, str]:
    """(outputs entry, step) of the deployable ONNX model: `wanted`, or the workflow's only one."""
    steps, outputs = loaded.workflow.steps, loaded.workflow.outputs
    onnx = {name: step for name, step in outputs.items() if step_output_kind(steps[step]) == "onnx_model"}
    if wanted is not None:
        if wanted not in onnx:
            raise PipelineError(f"--model-output {wanted}: not an ONNX output of the workflow "
                                f"(its ONNX outputs: {', '.join(onnx) or 'none'})")
        return wanted, onnx[wanted]
    if not onnx:
        raise PipelineError("the workflow has no ONNX output to register: add `outputs: {model: STEP}` naming an "
                            "export_onnx or quantize step")
    if len(onnx) > 1:
        raise PipelineError(f"the workflow has several ONNX outputs ({', '.join(onnx)}): choose one with --model-output")
    return next(iter(onnx.items()))


def model_tags(loaded: LoadedWorkflow, step: str, metrics: dict[str, dict], meta: dict, job: str) -> dict[str, str]:
    """format, provider, precision, workflow, step, job, and each scalar metric of `step`.

    `metrics` is {evaluate step: {metric: value}} for this model; with several evaluate steps the
    metric names are prefixed with the step's.
    """
    config = loaded.workflow.steps[step]
    precision = meta.get("precision") or getattr(config, "precision", None) \
        or METHOD_PRECISION.get(meta.get("method") or getattr(config, "method", None) or "") \
        or ("fp32" if config.step_type() == "export_onnx" else "unknown")
    measured = next((m.get("provider") for m in metrics.values() if m.get("provider")), None)
    tags = {
        "format": "onnx",
        "provider": measured or loaded.workflow.target.resolved_providers()[0],
        "precision": str(precision),
        "workflow": loaded.workflow.name,
        "step": step,
        "job": job,
    }
    for evaluate, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # confusion matrices, sample texts: in the report, not in tags
            tags[f"{evaluate}.{name}" if len(metrics) > 1 else name] = f"{value:.6g}"
    return tags


def _download_json(client: Any, job: str, output: str, relative: str, errors: Callable) -> dict:
    with tempfile.TemporaryDirectory(prefix="pipeline-register-") as tmp:
        with errors(f"downloading output {output!r} of job {job}"):
            client.jobs.download(job, download_path=tmp, output_name=output)
        found = sorted(Path(tmp).rglob(Path(relative).name))
        found = [f for f in found if f.as_posix().endswith(relative)] or found
        if not found:
            raise PipelineError(f"job {job}: output {output!r} holds no {relative}")
        return json.loads(found[0].read_text())


def register_model(client: Any, loaded: LoadedWorkflow, job_name: str, model_name: str, output_name: str | None,
                   errors: Callable, say: Callable[[str], None] = print) -> Any:
    """Register the deployable ONNX output of a completed job (submitted from this workflow) as a model."""
    sdk()
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    with errors(f"reading job {job_name}"):
        job = client.jobs.get(job_name)
    if getattr(job, "status", None) != "Completed":
        raise PipelineError(f"job {job_name} is {getattr(job, 'status', 'in an unknown state')}: register its model "
                            "once it has completed (`pipeline submit WF --wait --register-model NAME` does both)")
    out_name, step = pick_model_output(loaded, output_name)
    metrics: dict[str, dict] = {}
    meta: dict = {}
    evaluates = [s for s in loaded.order if step_output_kind(loaded.workflow.steps[s]) == "metrics"
                 and step in loaded.workflow.steps[s].references().get("models", [])]
    if getattr(job, "type", "command") == "pipeline":
        spec = make_spec(loaded, loaded.workflow.azureml, "pipeline")
        path = f"azureml://jobs/{job_name}/outputs/{spec.pipeline_outputs[spec.node_names[step]]}/paths/data/"
        for evaluate in evaluates:
            artifact = _download_json(client, job_name, spec.pipeline_outputs[spec.node_names[evaluate]],
                                      "artifact.json", errors)
            metrics[evaluate] = (artifact.get("meta", {}).get("metrics") or {}).get(step, {})
    else:
        path = f"azureml://jobs/{job_name}/outputs/{RUN_OUTPUT}/paths/{out_name}/"
        run = _download_json(client, job_name, REPORT_OUTPUT, "run.json", errors)
        metrics = {e: (run.get("metrics", {}).get(e) or {}).get(step, {}) for e in evaluates}
        meta = (run.get("steps", {}).get(step) or {}).get("meta") or {}
    model = Model(name=model_name, path=path, type=AssetTypes.CUSTOM_MODEL, tags=model_tags(loaded, step, metrics, meta, job_name),
                  description=f"{loaded.workflow.name}: output {out_name!r} (step {step!r}) of job {job_name}")
    with errors(f"registering model {model_name}"):
        registered = client.models.create_or_update(model)
    say(f"registered model {registered.name}:{registered.version} from {path}")
    return registered
