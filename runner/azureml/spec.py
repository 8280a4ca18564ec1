"""What `pipeline submit` sends to Azure ML, decided without the SDK: inputs, outputs, names, commands.

A command job runs `pipeline run` on the workflow; a pipeline job has one node per step, each running
`pipeline step` with the artifacts of the steps it references (see node.py). Local files and folders
the workflow reads (and `pkg://` folders) become uploaded `uri_file` / `uri_folder` inputs, and the
remote command points the step's field at the mounted input with `--set`; hub ids stay as they are
(the remote resolves them); `azureml.inputs` replaces a step's path with a datastore URI.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pipelines.validate import LoadedWorkflow
from schemas.azureml import AzureML
from schemas.base import step_output_kind
from schemas.errors import PipelineError
from schemas.paths import PathResolutionError, looks_like_hub_id, resolve_local_path

#: Where the workflow file sits inside the uploaded code snapshot.
WORKFLOW_DIR = "workflow"
#: The job's outputs (command job) and each node's (pipeline job).
RUN_OUTPUT, REPORT_OUTPUT, CACHE_OUTPUT, ARTIFACT_OUTPUT = "outputs", "report", "cache", "artifact"
#: Set in every job: unbuffered logs, no telemetry, no tokenizer thread warnings.
ENVIRONMENT_VARIABLES = {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}

_SAFE = re.compile(r"(\$\{\{[A-Za-z0-9_.]+\}\}|[\w@%+=:,./\-])+")


def quote(arg: str) -> str:
    """Shell-quote an argument unless it is plain (placeholders such as ${{inputs.x}} count as plain)."""
    return arg if _SAFE.fullmatch(arg) else shlex.quote(arg)


def io_name(text: str, taken: set[str]) -> str:
    """A name Azure ML accepts for a node, input or output (`[a-z_][a-z0-9_]*`), unique within `taken`.

    Azure ML compares these names ignoring case, so they are lower-cased; clashes get `_2`, `_3`, ...
    """
    base = re.sub(r"[^a-z0-9_]", "_", text.lower()) or "_"
    if base[0].isdigit():
        base = "_" + base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class Source:
    """A file or folder the workflow reads from outside: uploaded, or a datastore URI."""

    name: str  # the input's name in the job
    step: str
    field: str
    index: int | None  # the position in a list field, else None
    type: str  # uri_file | uri_folder
    path: str  # a local absolute path, or an azureml: URI

    @property
    def local(self) -> bool:
        """True when the SDK uploads it from this machine."""
        return not self.path.startswith("azureml:")


@dataclass(frozen=True)
class Node:
    """One step of a pipeline job: its node name, compute, inputs (input name -> upstream step) and command."""

    name: str
    step: str
    compute: str | None
    inputs: dict[str, str]
    command: str


@dataclass
class SubmitSpec:
    """Everything a job needs, in plain data; `build.py` turns it into SDK objects."""

    loaded: LoadedWorkflow
    settings: AzureML
    mode: str  # job | pipeline
    sources: list[Source]
    forwarded: list[str]  # the user's --set overrides (not azureml.*), repeated on the remote command line
    node_names: dict[str, str]  # step -> node name
    command: str = ""  # job mode
    nodes: list[Node] = field(default_factory=list)  # pipeline mode
    pipeline_outputs: dict[str, str] = field(default_factory=dict)  # node name -> pipeline output name
    notes: list[str] = field(default_factory=list)  # things the user should know (printed by submit)

    @property
    def workflow_path(self) -> str:
        """The workflow file's path inside the code snapshot (relative: the remote command runs in it)."""
        return f"{WORKFLOW_DIR}/{self.loaded.file.name}"

    @property
    def experiment(self) -> str:
        """The experiment name: `azureml.experiment`, else the workflow's name."""
        return self.settings.experiment or self.loaded.workflow.name

    @property
    def display_name(self) -> str:
        """The job's name in the studio."""
        return self.settings.display_name or f"{self.loaded.workflow.name} ({self.mode})"


def make_spec(loaded: LoadedWorkflow, settings: AzureML, mode: str, forwarded: Sequence[str] = ()) -> SubmitSpec:
    """Decide inputs, node names and command lines for `mode` (`job` or `pipeline`)."""
    if mode not in ("job", "pipeline"):
        raise ValueError(f"mode must be job or pipeline, not {mode!r}")
    names: dict[str, str] = {}
    taken: set[str] = set()
    for step in loaded.order:
        names[step] = io_name(step, taken)
    sources = find_sources(loaded, settings, reserved=set(names.values()))
    spec = SubmitSpec(loaded, settings, mode, sources, list(forwarded), names)
    if mode == "job":
        spec.command = _job_command(spec)
        if settings.steps:
            spec.notes.append("per-step compute (azureml.steps) applies to --mode pipeline; this job runs on "
                              f"{settings.compute}")
    else:
        spec.nodes = [_node(spec, step) for step in loaded.order]
        spec.pipeline_outputs = _pipeline_outputs(spec)
    return spec


def find_sources(loaded: LoadedWorkflow, settings: AzureML, reserved: Iterable[str] = ()) -> list[Source]:
    """Every local path, `pkg://` folder and datastore URI the steps read, in run order.

    Their input names avoid `reserved` (the node names, which name a node's upstream inputs).
    """
    remote = settings.remote_inputs(loaded.workflow.steps)
    taken = {RUN_OUTPUT, REPORT_OUTPUT, CACHE_OUTPUT, ARTIFACT_OUTPUT, *reserved}
    out = []
    for step in loaded.order:
        config = loaded.workflow.steps[step]
        for fld, (spec, is_list) in config.path_fields().items():
            value = getattr(config, fld)
            if value is None:
                continue
            if (step, fld) in remote:
                if is_list:
                    raise PipelineError(f"azureml.inputs.{step}: {fld} is a list of paths; give the files locally")
                kind = _uri_type(remote[(step, fld)], value, loaded.folder)
                out.append(Source(io_name(f"{step}_{fld}", taken), step, fld, None, kind, remote[(step, fld)]))
                continue
            for i, item in enumerate(value if is_list else [value]):
                if spec.allow_remote and looks_like_hub_id(item, loaded.folder):
                    continue  # a hub id: the remote job downloads it
                path = resolve_local_path(item, loaded.folder)
                name = io_name(f"{step}_{fld}" + (f"_{i}" if is_list else ""), taken)
                kind = "uri_file" if path.is_file() else "uri_folder"
                out.append(Source(name, step, fld, i if is_list else None, kind, str(path)))
    return out


def _uri_type(uri: str, local_value: str, folder: Path) -> str:
    """uri_file or uri_folder for a datastore URI: as the local path is, else by the URI's last segment."""
    try:
        local = resolve_local_path(local_value, folder)
        if local.exists():
            return "uri_file" if local.is_file() else "uri_folder"
    except PathResolutionError:
        pass
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    return "uri_file" if not uri.endswith("/") and "." in last and "/paths/" in uri else "uri_folder"


def _source_overrides(sources: Iterable[Source]) -> list[str]:
    """`--set steps.S.F=${{inputs.X}}` for each source (a list field gets a YAML list of placeholders)."""
    args: list[str] = []
    grouped: dict[tuple[str, str], list[Source]] = {}
    for s in sources:
        grouped.setdefault((s.step, s.field), []).append(s)
    for (step, fld), items in grouped.items():
        refs = ["${{inputs.%s}}" % s.name for s in items]
        value = refs[0] if items[0].index is None else "[" + ",".join(refs) + "]"
        args += ["--set", f"steps.{step}.{fld}={value}"]
    return args


def _common_args(spec: SubmitSpec) -> list[str]:
    args: list[str] = []
    for text in spec.forwarded:
        args += ["--set", text]
    args += _source_overrides(spec.sources)  # after the user's: the mounted inputs win
    if spec.settings.cache:
        args += ["--cache-dir", "${{outputs.%s}}" % CACHE_OUTPUT]
    return args


def _job_command(spec: SubmitSpec) -> str:
    run = ["python", "-m", "runner.cli", "run", spec.workflow_path, *_common_args(spec),
           "--output", "${{outputs.%s}}" % RUN_OUTPUT]
    # run.json and report.md also go to a small output, so registering the model reads the metrics
    # without downloading the models
    keep = ["cp", "${{outputs.%s}}/run.json" % RUN_OUTPUT, "${{outputs.%s}}/report.md" % RUN_OUTPUT,
            "${{outputs.%s}}/" % REPORT_OUTPUT]
    return " ".join(map(quote, run)) + " && " + " ".join(map(quote, keep))


def _node(spec: SubmitSpec, step: str) -> Node:
    config = spec.loaded.workflow.steps[step]
    refs = list(dict.fromkeys(r for targets in config.references().values() for r in targets))
    inputs = {spec.node_names[r]: r for r in refs}
    args = ["python", "-m", "runner.cli", "step", spec.workflow_path, step, *_common_args(spec)]
    for name, ref in inputs.items():
        args += ["--input", f"{ref}=${{{{inputs.{name}}}}}"]
    args += ["--output", "${{outputs.%s}}" % ARTIFACT_OUTPUT]
    override = spec.settings.steps.get(step)
    return Node(spec.node_names[step], step, override.compute if override else None, inputs, " ".join(map(quote, args)))


def _pipeline_outputs(spec: SubmitSpec) -> dict[str, str]:
    """Node -> pipeline output: each `outputs:` entry, and every evaluate step's report."""
    taken: set[str] = set()
    out: dict[str, str] = {}
    for out_name, step in spec.loaded.workflow.outputs.items():
        node = spec.node_names[step]
        if node not in out:
            out[node] = io_name(out_name, taken)
    for step in spec.loaded.order:
        node = spec.node_names[step]
        if step_output_kind(spec.loaded.workflow.steps[step]) == "metrics" and node not in out:
            out[node] = io_name(node, taken)
    return out
