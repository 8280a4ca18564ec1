"""Running a checked workflow: keys, cache hits, building under a lock, failures, outputs.

Steps run in topological order (with `--jobs` N, up to N at once: `runner.parallel`), each built in
this process or in a worker process of its own (`runner.isolation`). A step whose key is in the cache
is not run. A step that fails is recorded (never cached); the steps that depend on it are skipped and
the others still run, unless `fail_fast`. The run leaves `run.json`, `report.md` and `logs/run.log` in the output folder.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from passes import Artifact, get_pass
from pipelines.graph import needed_for
from pipelines.validate import LoadedWorkflow
from schemas import Target
from schemas.base import step_output_kind
from schemas.errors import ConfigError, Issue, PipelineError
from schemas.paths import looks_like_hub_id, resolve_local_path
from schemas.suggest import did_you_mean
from schemas.workflow import LOGS_DIR

from .cache import Cache, DamageReport
from .console import RunConsole
from .interrupts import Terminated
from .isolation import Runtime
from .parallel import run_parallel
from .keys import KeyParts, explain_change, key_parts
from .records import RunOptions, RunResult, StepRecord
from .preflight import check_cache_dir, prepare_output_dir
from .report import OutputError, copy_outputs, write_run_files
from .tracking import NOT_TRACKED, RunObserver, open_tracking
from .worker import BuildJob, RunnerContext  # noqa: F401  (RunnerContext: importable here too)
from .worker import damage_reporter as _damage_reporter


def workflow_id(loaded: LoadedWorkflow) -> str:
    """Identifies a workflow for the cache's history: its declared `name`, so a workflow file that is copied
    or moved (or a cache copied to another machine) keeps its history; `plan` reasons are advice, never keys."""
    return f"name:{loaded.workflow.name}"


def workflow_history(loaded: LoadedWorkflow, cache: Cache) -> dict[str, dict]:
    """The last key parts of each step; history recorded by file path (before names) fills the gaps."""
    return {**cache.history(str(loaded.file)), **cache.history(workflow_id(loaded))}


def compute_parts(loaded: LoadedWorkflow, name: str, artifacts: dict[str, Artifact], cache: Cache) -> KeyParts | None:
    """The key parts of a step; None while one of its inputs has not been built."""
    config = loaded.workflow.steps[name]
    pass_cls = get_pass(config.step_type())
    inputs: dict[str, Any] = {}
    for fld, targets in config.references().items():
        if any(t not in artifacts for t in targets):
            return None
        digests = [artifacts[t].digest for t in targets]
        inputs[fld] = digests if config.reference_fields()[fld][1] else digests[0]
    external: dict[str, Any] = {}
    for fld, (spec, is_list) in config.path_fields().items():
        value = getattr(config, fld)
        if value is None:
            continue
        values = value if is_list else [value]
        digests = [_external_digest(v, spec.allow_remote, loaded.folder, cache, getattr(config, "revision", None)) for v in values]
        external[fld] = digests if is_list else digests[0]
    return key_parts(config, pass_cls.version, pass_cls.packages, inputs, external, step_target(loaded, name))


def step_target(loaded: LoadedWorkflow, name: str) -> Target:
    """The target a step runs on: the workflow's, with the step's own `target:` fields over it."""
    return loaded.workflow.target.overridden(loaded.workflow.steps[name].target)


def _external_digest(value: str, allow_remote: bool, folder: Path, cache: Cache, revision: str | None) -> Any:
    if allow_remote and looks_like_hub_id(value, folder):
        return {"hub": value, "revision": _hub_commit(value, revision)}
    return cache.fingerprints.digest(resolve_local_path(value, folder))


def _hub_commit(repo: str, revision: str | None) -> str:
    """A hub id enters the key by its resolved commit; unreachable hub -> a clear error."""
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise PipelineError(
            f"{repo!r} looks like a Hugging Face hub id, but HF_HUB_OFFLINE is set: download it to a "
            "local folder and point `path` at it (or pin `revision` to a full commit hash)"
        )
    try:
        from huggingface_hub import HfApi

        for getter in (HfApi().model_info, HfApi().dataset_info):
            try:
                return getter(repo, revision=revision).sha
            except Exception:  # noqa: BLE001 - try the other repo type, then report
                continue
    except ImportError:
        pass
    raise PipelineError(
        f"cannot resolve {repo!r} on the Hugging Face hub (not reachable, or no such repository): "
        "download it to a local folder and point `path` at it"
    )


def run_workflow(loaded: LoadedWorkflow, options: RunOptions) -> RunResult:
    """Run the workflow (see the module docstring); never raises for a failing step."""
    steps = loaded.workflow.steps
    _check_names(loaded, options)
    cache = Cache(options.cache_dir)
    check_cache_dir(cache.root, given=options.cache_dir is not None)
    cache.claim(create=True)
    out_dir = Path(options.output) if options.output else Path.cwd() / "outputs" / loaded.workflow.name
    prepare_output_dir(out_dir, "--output" if options.output else "the output folder")
    try:
        console = RunConsole(out_dir / LOGS_DIR / "run.log", quiet=options.quiet)
    except OSError as exc:  # e.g. `logs` is a file there
        raise OutputError(f"cannot write the run log in {out_dir / LOGS_DIR}: {exc.strerror or exc}; "
                          "choose another folder with --output") from None
    selected = needed_for(loaded.graph, options.only) if options.only else set(steps)
    order = [n for n in loaded.order if n in selected]
    records = {n: StepRecord(n, steps[n].step_type(), step_output_kind(steps[n])) for n in order}
    artifacts: dict[str, Artifact] = {}
    started = time.time()
    status = "ok"
    stopped_by = None
    runtime = Runtime(jobs=options.jobs, default_isolation=loaded.workflow.isolation)

    def rebuild(step: str) -> None:
        """Build again a step whose artifact was found damaged (and quarantined) after it was looked up."""
        artifacts.pop(step, None)
        _run_step(loaded, step, order.index(step) + 1, len(order), records[step], artifacts, cache, console, False,
                  rebuild, runtime, observer)

    def visit(name: str) -> None:
        nonlocal status
        i, record = order.index(name) + 1, records[name]
        blocked = [u for u in loaded.graph.predecessors(name) if records[u].status in ("failed", "skipped")]
        if blocked:
            record.status, record.error = "skipped", f"upstream step {blocked[0]!r} did not finish"
            console.line(f"[{i}/{len(order)}] {name} ({record.type}): skipped ({record.error})", style="yellow")
            return
        if status == "failed" and options.fail_fast:
            record.status, record.error = "skipped", "--fail-fast: an earlier step failed"
            return
        _run_step(loaded, name, i, len(order), record, artifacts, cache, console, name in options.force, rebuild, runtime,
                  observer)
        if record.status == "failed":
            status = "failed"
    console.line(f"workflow {loaded.workflow.name}: {len(order)} steps, cache {cache.root}"
                 + (f", {options.jobs} jobs" if options.jobs > 1 else ""))
    for w in loaded.warnings:
        console.line(w.format(), style="yellow")
    observer = open_tracking(loaded, options, out_dir, console)
    try:
        if options.jobs > 1:
            run_parallel(order, loaded.graph.predecessors, visit, options.jobs,
                         lambda n: steps[n].runs_alone(), runtime.stop)
        else:
            for name in order:
                visit(name)
        _check_outputs(loaded, artifacts, cache, console, rebuild)
        if any(r.status == "failed" for r in records.values()):
            status = "failed"
    except KeyboardInterrupt as exc:
        status, stopped_by = "interrupted", "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        console.line(f"interrupted ({stopped_by}): nothing half-built was kept in the cache", style="red")
    finally:
        cache.fingerprints.close()
    goals_missed = [r.name for r in records.values()
                    if r.status in ("ran", "cached") and r.meta.get("goals_fail") and r.meta.get("goals_missed")]
    if status == "ok" and goals_missed:
        status = "goals_missed"  # every step worked; an evaluate step's `on_goal_miss: fail` goals were not met
    if status != "interrupted":
        try:
            copy_outputs(loaded, records, artifacts, out_dir, console)
        except OutputError as exc:  # e.g. a full disk: the run failed, but run.json still says how far it got
            status = "failed"
            console.line(str(exc), style="red")
    result = RunResult(status, records, out_dir, started, time.time(), stopped_by)
    write_run_files(loaded, result, artifacts, options)
    observer.run_finished(result)
    verdict = {"ok": "finished", "failed": "FAILED", "interrupted": "interrupted", "goals_missed": "finished, GOALS MISSED"}[status]
    failed = [r.name for r in records.values() if r.status == "failed"]
    console.line(
        f"run {verdict} in {result.finished - started:.1f} s"
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + (f" (goals missed in: {', '.join(goals_missed)})" if status == "goals_missed" else "")
        + f"; outputs, run.json and report.md in {out_dir}",
        style="green" if status == "ok" else "red",
    )
    console.close()
    return result


def _check_names(loaded: LoadedWorkflow, options: RunOptions) -> None:
    issues = []
    for flag, names in (("--force", options.force), ("--only", options.only)):
        for n in names:
            if n not in loaded.workflow.steps:
                issues.append(Issue(f"{flag} {n}: no such step", (), "command line", hint=did_you_mean(n, loaded.workflow.steps)))
    if issues:
        raise ConfigError(issues)


def _run_step(loaded: LoadedWorkflow, name: str, i: int, n: int, record: StepRecord, artifacts: dict[str, Artifact],
              cache: Cache, console: RunConsole, force: bool, rebuild: Callable[[str], None] | None = None,
              runtime: Runtime | None = None, observer: RunObserver = NOT_TRACKED) -> None:
    """Find the step in the cache or build it. With `rebuild`, the inputs of a step about to run get a full
    check first, and a damaged one is quarantined and rebuilt (then this step's key is computed again)."""
    head = f"[{i}/{n}] {name} ({record.type})"
    t0 = time.monotonic()
    record.status, record.error = "pending", None
    report = _damage_reporter(console)
    try:
        for _attempt in range(3):
            parts = compute_parts(loaded, name, artifacts, cache)
            if parts is None:
                raise PipelineError(f"an input of {name!r} was damaged in the cache and could not be rebuilt (see above)")
            record.key = key = parts.key
            artifact = None if force else cache.lookup(key, on_damage=report)
            if artifact is not None:
                break
            damaged = _damaged_inputs(loaded, name, artifacts, cache, report) if rebuild else []
            if damaged:
                for upstream in damaged:
                    rebuild(upstream)
                continue

            def waiting() -> None:
                console.line(f"{head}: waiting for another run that is building it ({key[:12]})")

            with cache.lock(key, on_wait=waiting):
                artifact = None if force else cache.lookup(key, on_damage=report, locked=True)
                if artifact is None:
                    console.line(f"{head}: started ({key[:12]})", style="bold")
                    artifact = _build(loaded, name, key, parts, cache, console, force, artifacts, record,
                                      runtime or Runtime(), observer.step_started(name, key))
                    record.status = "ran"
            break
        else:
            raise PipelineError(f"the inputs of {name!r} were found damaged again right after they were rebuilt: "
                                f"check the disk that holds the cache {cache.root}")
        if record.status != "ran":
            record.status = "cached"
        cache.record(workflow_id(loaded), name, parts.as_dict())
    except KeyboardInterrupt:
        record.status, record.error, record.seconds = "failed", "interrupted", time.monotonic() - t0
        raise
    except Exception as exc:  # noqa: BLE001 - a failing step must not take the run down
        record.status, record.seconds = "failed", time.monotonic() - t0
        record.error = _describe(exc)
        console.write_log(traceback.format_exc())
        console.line(f"{head}: FAILED after {record.seconds:.1f} s: {record.error}", style="red")
        observer.step_finished(record, None)
        return
    record.seconds = time.monotonic() - t0
    # under this workflow's name: an entry built by another workflow (or as another matrix variant) carries
    # the name it was built under, and evaluate and select label their results by their inputs' names
    artifacts[name] = dataclasses.replace(artifact, step=name)
    record.meta = artifact.meta
    record.summary = artifact.meta.get("summary")
    tail = f" · {record.summary}" if record.summary else ""
    if record.status == "cached":
        console.line(f"{head}: cached ({key[:12]}){tail}", style="dim")
    else:
        console.line(f"{head}: finished in {record.seconds:.1f} s ({key[:12]}){tail}", style="green")
    observer.step_finished(record, artifact)


def _quarantine_if_damaged(artifact: Artifact, cache: Cache, report: DamageReport) -> bool:
    """Full check of an artifact in use; a damaged one is quarantined (under its key's lock). Whether it was."""
    if not cache.check(artifact):
        return False
    key = artifact.path.parent.name
    with cache.lock(key):
        problems = cache.check(artifact)  # another run may have replaced it meanwhile
        if problems and os.path.lexists(cache.artifacts / key):
            report(key, artifact.step, problems, cache.quarantine(key, problems))
    return True


def _damaged_inputs(loaded: LoadedWorkflow, name: str, artifacts: dict[str, Artifact], cache: Cache,
                    report: DamageReport) -> list[str]:
    """The steps whose artifacts `name` is about to read and that fail the full check (now quarantined)."""
    targets = dict.fromkeys(t for ts in loaded.workflow.steps[name].references().values() for t in ts)
    return [t for t in targets if _quarantine_if_damaged(artifacts[t], cache, report)]


def _check_outputs(loaded: LoadedWorkflow, artifacts: dict[str, Artifact], cache: Cache, console: RunConsole,
                   rebuild: Callable[[str], None]) -> None:
    """Full check of what is about to be copied to the output folder; a damaged artifact is rebuilt first."""
    report = _damage_reporter(console)
    copied = [s for s in loaded.workflow.outputs.values()] + [n for n, a in artifacts.items() if a.kind == "metrics"]
    for step in dict.fromkeys(copied):
        if step in artifacts and _quarantine_if_damaged(artifacts[step], cache, report):
            rebuild(step)


def _build(loaded: LoadedWorkflow, name: str, key: str, parts: KeyParts, cache: Cache, console: RunConsole,
           replace: bool, artifacts: dict[str, Artifact], record: StepRecord, runtime: Runtime,
           tracking: dict[str, str] | None = None) -> Artifact:
    """Build the step (memory check, then here or in a worker: `Runtime.build`); commit its artifact."""
    config = loaded.workflow.steps[name]
    inputs: dict[str, Any] = {}
    for fld, targets in config.references().items():
        found = [artifacts[t] for t in targets]
        inputs[fld] = found if config.reference_fields()[fld][1] else found[0]
    job = BuildJob(name, config, step_target(loaded, name), loaded.folder, key, parts.as_dict(), inputs,
                   step_output_kind(config), cache.root, replace, tracking or {})
    return runtime.build(job, get_pass(config.step_type()), cache, console, record.resources)


def _describe(exc: BaseException) -> str:
    """Our errors are written for people (what, where, how to fix): shown as they are; others with their type."""
    if isinstance(exc, PipelineError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_one_step(loaded: LoadedWorkflow, name: str, inputs: dict[str, Artifact], options: RunOptions,
                 console: RunConsole) -> tuple[StepRecord, Artifact | None]:
    """Run (or find in the cache) one step from the given artifacts of the steps it references.

    No other step runs: this is the unit `pipeline step` runs on one node of an Azure ML pipeline job.
    Returns the step's record and, unless it failed, its committed artifact.
    """
    config = loaded.workflow.steps[name]
    record = StepRecord(name, config.step_type(), step_output_kind(config))
    cache = Cache(options.cache_dir)
    cache.claim(create=True)
    artifacts = dict(inputs)
    try:
        _run_step(loaded, name, 1, 1, record, artifacts, cache, console, name in options.force, None,
                  Runtime(default_isolation=loaded.workflow.isolation))
    finally:
        cache.fingerprints.close()
    return record, artifacts.get(name)


@dataclass
class PlanRow:
    """One line of `pipeline plan`."""

    name: str
    type: str
    kind: str
    key: str | None
    status: str  # cached | will run | may run (an input is rebuilt first) | unknown
    reason: str


def plan_workflow(loaded: LoadedWorkflow, cache_dir: Path | None = None) -> list[PlanRow]:
    """Each step in run order with its key and whether it is cached, and if not, why it will run."""
    cache = Cache(cache_dir)
    check_cache_dir(cache.root, given=cache_dir is not None)
    cache.claim(create=True)
    history = workflow_history(loaded, cache)
    artifacts: dict[str, Artifact] = {}
    rows = []
    pending: set[str] = set()
    try:
        for name in loaded.order:
            cfg = loaded.workflow.steps[name]
            row = PlanRow(name, cfg.step_type(), step_output_kind(cfg), None, "will run", "")
            try:
                parts = compute_parts(loaded, name, artifacts, cache)
            except PipelineError as exc:
                row.status, row.reason = "unknown", str(exc)
                pending.add(name)
                rows.append(row)
                continue
            if parts is None:
                # Not "will run": a rebuilt input that comes out byte-identical leaves this step cached.
                waits = sorted(set(loaded.graph.predecessors(name)) & pending)
                row.status, row.reason = "may run", f"input will be rebuilt ({', '.join(waits)})"
                pending.add(name)
            else:
                row.key = parts.key
                art = cache.lookup(parts.key, touch=False)
                if art is not None:
                    row.status, row.reason = "cached", ""
                    artifacts[name] = art
                elif os.path.lexists(cache.artifacts / parts.key):
                    row.reason = "its cache entry is damaged (the run quarantines and rebuilds it)"
                    pending.add(name)
                else:
                    row.reason = explain_change(history.get(name), parts)
                    pending.add(name)
            rows.append(row)
    finally:
        cache.fingerprints.close()
    return rows


# RunOptions, RunResult and StepRecord live in runner.records (report.py reads them too); kept importable here
__all__ = ["RunOptions", "RunResult", "StepRecord", "PlanRow", "run_workflow", "plan_workflow", "run_one_step"]
