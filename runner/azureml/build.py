"""Azure ML job objects from a `SubmitSpec`: the code snapshot, the environment, and the job itself.

The SDK (azure-ai-ml) is imported here, inside functions, and only when a job is built: `pipeline
--help`, `validate` and `run` never load it.

- The code snapshot holds the project's packages (not its recipes' data, not the venv) and the workflow
  file, so the remote command is `python -m runner.cli ...` in the snapshot's folder.
- A built environment is a Docker build context: the base image, then `pip install -c constraints.txt
  -r requirements.txt` with this project's declared requirements (and the extras asked for).
- The YAML form is what `dump` writes, with one SDK quirk undone: a command job's local input paths are
  dumped with an `azureml:` prefix, which `load_job` would then read as an asset name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import io
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from schemas.azureml import AzureML, BuiltEnvironment, tag_text
from schemas.errors import PipelineError

from .spec import (
    ARTIFACT_OUTPUT, CACHE_OUTPUT, ENVIRONMENT_VARIABLES, REPORT_OUTPUT, RUN_OUTPUT, WORKFLOW_DIR, SubmitSpec, io_name,
)

DISTRIBUTION = "pipeline-orchestrator"
PACKAGES = ("schemas", "pipelines", "passes", "runner")
SCHEMAS = {
    "command": "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json",
    "pipeline": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json",
}
INSTALL_HINT = ("`pipeline submit` needs the Azure ML SDK (azure-ai-ml), which is not installed here: run "
                "pip install -c constraints.txt -e '.[azure]' in the project's checkout (or pip install "
                "'pipeline-orchestrator[azure]')")

DOCKERFILE = """\
# Built by `pipeline submit`: {distribution}'s requirements{extras} on a base image.
FROM {image}
COPY requirements.txt constraints.txt /opt/pipeline-env/
RUN python -m pip install --no-cache-dir -U pip \\
 && python -m pip install --no-cache-dir -c /opt/pipeline-env/constraints.txt -r /opt/pipeline-env/requirements.txt
ENV PYTHONUNBUFFERED=1
"""


def sdk() -> Any:
    """The `azure.ai.ml` module, or a PipelineError saying how to install it."""
    try:
        import azure.ai.ml as ml
    except ImportError as exc:
        raise PipelineError(f"{INSTALL_HINT} ({exc})") from None
    # "Class X: This is an experimental class" for classes the SDK uses internally: noise to our users
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    return ml


def project_root() -> Path | None:
    """The source checkout the packages come from (the folder with pyproject.toml), if there is one."""
    folder = _package_folder("runner").parent
    return folder if (folder / "pyproject.toml").exists() else None


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(list(spec.submodule_search_locations)[0])


def write_code(dest: Path, workflow_file: Path) -> Path:
    """The code snapshot: the project's packages (no recipes, no bytecode) and the workflow file."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for package in PACKAGES:
        src = _package_folder(package)
        shutil.copytree(src, dest / package, ignore=lambda d, names: ignore(d, names) | (
            {"recipes"} if Path(d) == _package_folder("pipelines") else set()))
    (dest / WORKFLOW_DIR).mkdir(parents=True)
    shutil.copy2(workflow_file, dest / WORKFLOW_DIR / workflow_file.name)
    return dest


def _declared() -> tuple[list[str], list[str]]:
    """(Requires-Dist lines, extras): from the checkout's pyproject.toml, else the installed metadata.

    The checkout wins because an editable install's metadata is as old as the last `pip install -e`.
    """
    root = project_root()
    if root is not None and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        optional = project.get("optional-dependencies", {})
        lines = list(project.get("dependencies", []))
        lines += [f'{r}; extra == "{extra}"' for extra, reqs in optional.items() for r in reqs]
        return lines, list(optional)
    try:
        return (importlib.metadata.requires(DISTRIBUTION) or [],
                importlib.metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or [])
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError(f"{DISTRIBUTION} is not installed, so its requirements are unknown: pip install -e . "
                            "(or set azureml.environment to an existing environment, azureml:NAME:VERSION)") from None


def project_requirements(extras: list[str]) -> list[str]:
    """This project's declared requirements, with those of `extras`, as requirements.txt lines."""
    declared, provided = _declared()
    unknown = [e for e in extras if e not in provided]
    if unknown:
        raise PipelineError(f"azureml.environment.extras: {DISTRIBUTION} has no extra {unknown[0]!r} "
                            f"(it has: {', '.join(provided)})")
    lines = []
    for requirement in declared:
        text, _, marker = requirement.partition(";")
        wanted = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if wanted and wanted.group(1) not in extras:
            continue
        rest = re.sub(r"(\s*and\s*)?extra\s*==\s*['\"][^'\"]+['\"](\s*and\s*)?", " ", marker).strip()
        lines.append(text.strip() + (f"; {rest}" if rest else ""))
    return lines


def write_environment(dest: Path, built: BuiltEnvironment) -> Path:
    """A Docker build context: Dockerfile, requirements.txt and the project's constraints.txt."""
    dest.mkdir(parents=True)
    (dest / "requirements.txt").write_text("\n".join(project_requirements(built.extras)) + "\n")
    root = project_root()
    constraints = root / "constraints.txt" if root else None
    if constraints is not None and constraints.exists():
        shutil.copy2(constraints, dest / "constraints.txt")
    else:
        (dest / "constraints.txt").write_text("# no constraints.txt beside the installed project\n")
    extras = f" (extras: {', '.join(built.extras)})" if built.extras else ""
    (dest / "Dockerfile").write_text(DOCKERFILE.format(distribution=DISTRIBUTION, extras=extras, image=built.image))
    return dest


def _environment(settings: AzureML, dest: Path) -> Any:
    if isinstance(settings.environment, str):
        return settings.environment
    from azure.ai.ml.entities import BuildContext, Environment

    context = write_environment(dest, settings.environment)
    return Environment(build=BuildContext(path=str(context)),
                       description=f"{DISTRIBUTION}'s requirements on {settings.environment.image}")


def _tags(spec: SubmitSpec) -> dict[str, str]:
    tags = {"workflow": spec.loaded.workflow.name, "mode": spec.mode}
    tags.update({k: tag_text(v) for k, v in spec.settings.tags.items()})
    return tags


def _cache_output(ml: Any, settings: AzureML) -> dict[str, Any]:
    if not settings.cache:
        return {}
    return {CACHE_OUTPUT: ml.Output(type="uri_folder", path=settings.cache, mode="rw_mount")}


def build_command_job(spec: SubmitSpec, files: Path) -> Any:
    """One command job that runs `pipeline run` on the whole workflow."""
    ml = sdk()
    from azure.ai.ml.entities import CommandJob

    code = write_code(files / "code", spec.loaded.file)
    return CommandJob(
        code=str(code),
        command=spec.command,
        inputs={s.name: ml.Input(type=s.type, path=s.path) for s in spec.sources},
        outputs={RUN_OUTPUT: ml.Output(type="uri_folder"), REPORT_OUTPUT: ml.Output(type="uri_folder"),
                 **_cache_output(ml, spec.settings)},
        environment=_environment(spec.settings, files / "environment"),
        compute=spec.settings.compute,
        experiment_name=spec.experiment,
        display_name=spec.display_name,
        description=spec.loaded.workflow.description or None,
        tags=_tags(spec),
        environment_variables=dict(ENVIRONMENT_VARIABLES),
    )


def build_pipeline_job(spec: SubmitSpec, files: Path) -> Any:
    """A pipeline job: one command node per step, wired through node outputs along the DAG's edges."""
    ml = sdk()
    code = str(write_code(files / "code", spec.loaded.file))
    environment = _environment(spec.settings, files / "environment")
    steps = spec.loaded.workflow.steps

    def body(**sources: Any) -> dict[str, Any]:
        made: dict[str, Any] = {}
        for node in spec.nodes:
            inputs = {s.name: ml.Input(type=s.type) for s in spec.sources}
            inputs.update({name: ml.Input(type="uri_folder") for name in node.inputs})
            component = ml.command(
                name=node.name, display_name=f"{node.step} ({steps[node.step].step_type()})", code=code,
                command=node.command, inputs=inputs, environment=environment,
                outputs={ARTIFACT_OUTPUT: ml.Output(type="uri_folder"), **_cache_output(ml, spec.settings)},
                environment_variables=dict(ENVIRONMENT_VARIABLES),
            )
            made[node.name] = component(**sources, **{n: made[spec.node_names[ref]].outputs[ARTIFACT_OUTPUT]
                                                       for n, ref in node.inputs.items()})
            made[node.name].name = node.name  # node names are the steps', not Python variables'
            if node.compute:
                made[node.name].compute = node.compute
        return {out: made[node].outputs[ARTIFACT_OUTPUT] for node, out in spec.pipeline_outputs.items()}

    # the pipeline's inputs are the workflow's sources: one upload each, bound to every node
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY) for s in spec.sources])
    body.__annotations__ = {}  # the dsl reads annotations as input types
    job = ml.dsl.pipeline(name=io_name(spec.loaded.workflow.name, set()),
                          display_name=spec.display_name, experiment_name=spec.experiment,
                          description=spec.loaded.workflow.description or None, tags=_tags(spec),
                          default_compute=spec.settings.compute)(body)(
        **{s.name: ml.Input(type=s.type, path=s.path) for s in spec.sources})
    job.settings.continue_on_step_failure = True  # as `pipeline run`: independent branches go on
    return job


def build_job(spec: SubmitSpec, files: Path) -> Any:
    """The command or pipeline job for `spec.mode`, its snapshot and environment written under `files`."""
    return build_command_job(spec, files) if spec.mode == "job" else build_pipeline_job(spec, files)


def job_document(job: Any, spec: SubmitSpec, files: Path, yaml_folder: Path) -> dict:
    """The job's YAML form as `load_job` reads it, with paths under `files` relative to `yaml_folder`."""
    buffer = io.StringIO()
    job.dump(buffer)
    doc = yaml.safe_load(buffer.getvalue())
    local = {s.path for s in spec.sources if s.local} | {str(files / "code"), str(files / "environment")}

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str):
            if value.startswith("azureml:") and value[len("azureml:"):] in local:
                value = value[len("azureml:"):]  # the SDK's dump quirk (see the module docstring)
            if value in local and Path(value).is_relative_to(files):
                value = os.path.relpath(value, yaml_folder)  # the snapshot moves with the YAML file
        return value

    doc = fix(doc)
    return {"$schema": SCHEMAS["pipeline" if spec.mode == "pipeline" else "command"], **doc}


def write_document(doc: dict, path: Path) -> None:
    """Write a job document as YAML (long command lines kept on one line)."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=4096, allow_unicode=True))
