"""`pipeline submit`: load the workflow with the flags, build the job, then write it, or submit it and wait.

Flags are `azureml.*` overrides of the workflow's section, so their errors come out as every other error
does. The workspace client is made by `make_client` (tests replace it with a fake: nothing here touches
the network by itself). Azure's errors are turned into messages that say what to do.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.overrides import apply_overrides, parse_override
from pipelines.validate import LoadedWorkflow, check_workflow
from pipelines.yaml_loader import load_yaml, read_workflow_text
from schemas import step_types
from schemas.azureml import AzureML
from schemas.errors import ConfigError, Issue, PipelineError
from schemas.paths import PathResolutionError, resolve_local_path

from .build import build_job, job_document, sdk, write_document
from .checks import check_document
from .register import register_model
from .spec import make_spec

#: Flags that set one field of the `azureml:` section.
FIELD_FLAGS = ("subscription_id", "resource_group", "workspace", "config", "compute", "environment", "experiment",
               "display_name", "cache")
MARKER = ".written-by-pipeline-submit"


@dataclass
class SubmitRequest:
    """What `pipeline submit` was asked to do."""

    workflow: Path
    overrides: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # azureml field -> value, from flags
    tags: list[str] = field(default_factory=list)  # KEY=VALUE
    inputs: list[str] = field(default_factory=list)  # STEP=URI
    step_compute: list[str] = field(default_factory=list)  # STEP=COMPUTE
    mode: str = "job"
    dry_run: bool = False
    output: Path | None = None
    wait: bool = False
    register_model: str | None = None
    job: str | None = None
    model_output: str | None = None


def _flag_overrides(request: SubmitRequest) -> list[tuple[str, str]]:
    """(override, the flag as the user wrote it) for every azureml flag."""
    out = [(f"azureml.{name}={json.dumps(value)}", f"--{name.replace('_', '-')} {value}")
           for name, value in request.fields.items() if value is not None]
    issues = []
    for flag, pairs, path in (("--tag", request.tags, "tags.{}"), ("--input", request.inputs, "inputs.{}"),
                              ("--step-compute", request.step_compute, "steps.{}.compute")):
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key or not value or "." in key:
                issues.append(Issue(f"{flag} takes KEY=VALUE (a key without dots), got {pair!r}", (), "command line"))
                continue
            out.append((f"azureml.{path.format(key)}={json.dumps(value)}", f"{flag} {pair}"))
    if issues:
        raise ConfigError(issues)
    return out


def load_for_submit(request: SubmitRequest) -> tuple[LoadedWorkflow, list[str]]:
    """The workflow with `--set` and the flags applied; also the overrides to repeat remotely.

    A step whose path `azureml.inputs` replaces need not exist here: its check is given an existing
    stand-in (the remote command sets the field to the mounted datastore path anyway).
    """
    file = Path(request.workflow)
    data, positions = load_yaml(read_workflow_text(file), str(file))
    flags = _flag_overrides(request)
    apply_overrides(data, [*request.overrides, *(o for o, _ in flags)], positions)
    for override, shown in flags:
        positions.origins[parse_override(override)[0]] = shown
    _stand_in_for_remote_paths(data, file.resolve())
    loaded = check_workflow(data, positions, file.resolve().parent, file.resolve())
    forwarded = [o for o in request.overrides if not o.strip().startswith("azureml.")]
    return loaded, forwarded


def _stand_in_for_remote_paths(data: dict, file: Path) -> None:
    section = data.get("azureml") if isinstance(data.get("azureml"), dict) else {}
    inputs = section.get("inputs") if isinstance(section.get("inputs"), dict) else {}
    steps = data.get("steps") if isinstance(data.get("steps"), dict) else {}
    for step, value in inputs.items():
        body = steps.get(step)
        cls = step_types().get(body.get("type")) if isinstance(body, dict) and isinstance(body.get("type"), str) else None
        if cls is None:
            continue
        fields = list(value) if isinstance(value, dict) else list(cls.path_fields())[:1]
        for fld in fields:
            local = body.get(fld)
            try:
                exists = isinstance(local, str) and resolve_local_path(local, file.parent).exists()
            except PathResolutionError:
                exists = False
            if not exists:
                body[fld] = str(file)


def make_client(settings: AzureML, folder: Path) -> Any:
    """An MLClient for the workspace the settings name, or the one a config.json describes."""
    ml = sdk()
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    if settings.workspace:
        return ml.MLClient(credential, settings.subscription_id, settings.resource_group, settings.workspace)
    path = resolve_local_path(settings.config, folder) if settings.config else None
    try:
        return ml.MLClient.from_config(credential, path=str(path) if path else None)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its ValidationException or OS errors here
        raise PipelineError(
            f"no Azure ML workspace: {str(exc).splitlines()[0]}\n    hint: set azureml.subscription_id, "
            "resource_group and workspace in the workflow (or --subscription-id, --resource-group, --workspace), "
            "or download the workspace's config.json from the studio into this folder (or .azureml/), or point "
            "azureml.config / --workspace-config at it") from None


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Turn Azure's exceptions into PipelineErrors that say what to do."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        from azure.core.exceptions import (
            ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError,
        )

        text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip().splitlines()[0]
        if isinstance(exc, ClientAuthenticationError):
            raise PipelineError(
                f"{action}: no usable Azure credentials ({text})\n    hint: run `az login`, or set AZURE_TENANT_ID, "
                "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service principal); DefaultAzureCredential also "
                "tries a managed identity and VS Code") from None
        if isinstance(exc, ResourceNotFoundError):
            raise PipelineError(f"{action}: not found: {text}\n    hint: check the subscription, resource group, "
                                "workspace, compute and environment names") from None
        if isinstance(exc, ServiceRequestError):
            raise PipelineError(f"{action}: cannot reach Azure ({text}); check the network") from None
        if isinstance(exc, HttpResponseError):
            raise PipelineError(f"{action}: Azure ML refused it: {text}") from None
        raise PipelineError(f"{action}: {type(exc).__name__}: {text}") from None


def _require_compute(loaded: LoadedWorkflow) -> None:
    if not loaded.workflow.azureml.compute:
        raise ConfigError([loaded.positions.issue(
            ("azureml",), "no compute to run on",
            "set azureml.compute in the workflow (a cluster name such as cpu-cluster) or pass --compute NAME")])


def _files_folder(output: Path) -> Path:
    """`job.yaml` -> `job.files/` (replaced when an earlier dry run wrote it, else refused)."""
    files = output.parent / f"{output.stem}.files"
    if files.exists():
        if not (files / MARKER).exists():
            raise PipelineError(f"{files} exists and was not written by pipeline submit; move it or choose another -o")
        shutil.rmtree(files)
    files.mkdir(parents=True)
    (files / MARKER).write_text("the code snapshot and environment of the job YAML beside this folder\n")
    return files


def submit(request: SubmitRequest, say: Callable[[str], None] = print) -> int:
    """Do what the request asks (see the module docstring); returns an exit code."""
    if request.output is not None and not request.dry_run:
        raise ConfigError([Issue("-o/--output writes the job YAML of a --dry-run; add --dry-run", (), "command line")])
    loaded, forwarded = load_for_submit(request)
    settings = loaded.workflow.azureml
    if request.job:
        if not request.register_model:
            raise ConfigError([Issue("--job names a finished job whose model --register-model NAME registers",
                                     (), "command line")])
        client = make_client(settings, loaded.folder)
        register_model(client, loaded, request.job, request.register_model, request.model_output, azure_errors, say)
        return 0
    _require_compute(loaded)
    spec = make_spec(loaded, settings, request.mode, forwarded)
    for note in spec.notes:
        say(f"note: {note}")
    if request.dry_run:
        output = request.output or Path(f"{loaded.workflow.name}-{request.mode}.yaml")
        files = _files_folder(output)
        doc = job_document(build_job(spec, files.resolve()), spec, files.resolve(), output.parent.resolve())
        check_document(doc)
        write_document(doc, output)
        say(f"wrote {output} ({'pipeline job, ' + str(len(spec.nodes)) + ' nodes' if spec.nodes else 'command job'}); "
            f"code snapshot and environment in {files}/. Submit it with: az ml job create -f {output}")
        return 0
    client = make_client(settings, loaded.folder)
    with tempfile.TemporaryDirectory(prefix="pipeline-submit-") as tmp:
        files = Path(tmp)
        job = build_job(spec, files)
        check_document(job_document(job, spec, files, files))
        with azure_errors("submitting the job"):
            created = client.jobs.create_or_update(job, experiment_name=spec.experiment)
    say(f"submitted {created.name} ({request.mode}, experiment {spec.experiment}): {getattr(created, 'studio_url', '')}")
    if request.wait or request.register_model:
        with azure_errors(f"waiting for job {created.name}"):
            client.jobs.stream(created.name)
        if request.register_model:
            register_model(client, loaded, created.name, request.register_model, request.model_output, azure_errors, say)
    return 0
