"""`pipeline step WF STEP --input REF=DIR ... --output DIR`: run one step from its inputs' artifacts.

Each node of an Azure ML pipeline job runs this (one node per step); it works the same on a laptop. An
artifact travels between nodes in the cache's own format: `artifact.json` (kind, metadata, file digests,
content digest) beside `data/`. Inputs are checked against their manifests and used in place (read-only
mounts are fine); the step's key is computed from their digests exactly as `pipeline run` computes it,
so a node whose key is already in the cache (a cache on a shared datastore) does not run the step again.
Nothing here imports the Azure SDK: a node needs only the project's own dependencies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from passes import Artifact
from pipelines.validate import LoadedWorkflow, load_workflow
from schemas.base import step_output_kind
from schemas.errors import ConfigError, Issue, PipelineError
from schemas.suggest import did_you_mean

from ..cache import DATA, MANIFEST, artifact_digest
from ..console import RunConsole
from ..execute import run_one_step
from ..fingerprint import iter_files, sha256_file
from ..records import RunOptions

WHERE = "command line"


def parse_inputs(pairs: Sequence[str]) -> dict[str, Path]:
    """`REF=DIR` pairs -> {ref: folder}; malformed or repeated pairs are errors."""
    out: dict[str, Path] = {}
    issues = []
    for pair in pairs:
        ref, sep, folder = pair.partition("=")
        if not sep or not ref or not folder:
            issues.append(Issue(f"--input takes STEP=DIR (the referenced step and its artifact folder), got {pair!r}", (), WHERE))
        elif ref in out:
            issues.append(Issue(f"--input {ref} is given twice", (), WHERE))
        else:
            out[ref] = Path(folder)
    if issues:
        raise ConfigError(issues)
    return out


def read_artifact(folder: Path, step: str) -> Artifact:
    """The artifact in `folder` (artifact.json + data/), checked file by file against its manifest."""
    where = f"--input {step}={folder}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{where}: no {MANIFEST} there; an input is the --output folder of step {step!r} "
                            f"({MANIFEST} + {DATA}/)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{where}: cannot read {MANIFEST}: {exc}") from None
    files = dict(iter_files(folder / DATA))
    expected = manifest.get("files", {})
    problems = [f"missing {rel}" for rel in sorted(set(expected) - set(files))]
    problems += [f"unexpected {rel}" for rel in sorted(set(files) - set(expected))]
    problems += [f"changed {rel}" for rel in sorted(set(files) & set(expected))
                 if files[rel].stat().st_size != expected[rel]["size"] or sha256_file(files[rel]) != expected[rel]["sha256"]]
    if not problems and artifact_digest(expected, manifest.get("meta", {})) != manifest.get("digest"):
        problems.append("the manifest's digest does not match its files and metadata")
    if problems:
        raise PipelineError(f"{where}: the artifact is damaged ({'; '.join(problems[:5])}); re-run step {step!r}")
    return Artifact(manifest["kind"], folder / DATA, manifest["meta"], manifest["digest"], step)


def export_artifact(artifact: Artifact, dest: Path) -> None:
    """Copy a committed artifact (its cache folder) to `dest`: data first, the manifest last.

    A reader that finds `artifact.json` therefore finds every file it lists.
    """
    entry = artifact.path.parent
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(entry / DATA, dest / DATA, dirs_exist_ok=True)
    shutil.copy2(entry / MANIFEST, dest / MANIFEST)


def _check_request(loaded: LoadedWorkflow, step: str, inputs: dict[str, Path], output: Path) -> None:
    steps = loaded.workflow.steps
    if step not in steps:
        raise ConfigError([Issue(f"no step {step!r} in {loaded.file.name}", (), WHERE, hint=did_you_mean(step, steps))])
    config = steps[step]
    issues = []
    wanted: dict[str, list[str]] = {}
    for fld, refs in config.references().items():
        for ref in refs:
            wanted.setdefault(ref, []).append(fld)
    for ref, fields in wanted.items():
        if ref not in inputs:
            issues.append(Issue(f"step {step!r} takes the output of {ref!r} ({', '.join(fields)}): give --input {ref}=DIR",
                                (), WHERE))
    for ref in inputs:
        if ref not in wanted:
            takes = ", ".join(wanted) or "nothing: it is a source step"
            issues.append(Issue(f"--input {ref}: step {step!r} does not reference {ref!r} (it takes {takes})", (), WHERE))
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        issues.append(Issue(f"--output {output}: not an empty folder", (), WHERE,
                            hint="give a new or empty folder: the step's artifact is written there"))
    if issues:
        raise ConfigError(issues)


def run_node(workflow: Path, step: str, input_pairs: Sequence[str], output: Path, overrides: Sequence[str] = (),
             cache_dir: Path | None = None, quiet: bool = False) -> int:
    """Run `step` from the artifacts named by `input_pairs` and write its artifact to `output`; an exit code."""
    inputs = parse_inputs(input_pairs)
    loaded = load_workflow(workflow, overrides)
    _check_request(loaded, step, inputs, output)
    artifacts = {}
    for ref, folder in inputs.items():
        artifact = read_artifact(folder, ref)
        produced = step_output_kind(loaded.workflow.steps[ref])
        if artifact.kind != produced:
            raise PipelineError(f"--input {ref}={folder}: holds {artifact.kind!r}, but step {ref!r} produces {produced!r}")
        artifacts[ref] = artifact
    console = RunConsole(None, quiet=quiet)
    try:
        record, artifact = run_one_step(loaded, step, artifacts, RunOptions(cache_dir=cache_dir, quiet=quiet), console)
        if artifact is None:
            return 1  # the failure and its reason are printed by the runner
        export_artifact(artifact, output)
        console.line(f"{step}: {record.status} ({artifact.kind}, key {record.key}); artifact written to {output}")
        if artifact.meta.get("goals_fail") and artifact.meta.get("goals_missed"):
            # as `pipeline run` does (status goals_missed): the results are kept, the node says they miss
            console.line(f"{step}: {artifact.meta['goals_missed']} goal(s) missed and `on_goal_miss: fail`", style="red")
            return 1
        return 0
    finally:
        console.close()
