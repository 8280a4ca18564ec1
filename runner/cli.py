"""`pipeline`: a thin command line. Each command parses its arguments, calls one function, renders.

Exit codes: 0 success; 1 a step failed (or `cache verify` found damage); 2 the workflow or the command
line is invalid; 130 interrupted (Ctrl-C), 143 stopped by SIGTERM. Each command imports what it needs when it runs: `--help` and a bad
argument need only argparse (no pydantic models, rich or networkx), and no command before `run` imports
an ML library, so `validate`, `plan`, `schema`, `passes` and `--help` answer in well under a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .render import LazyConsole, duration_seconds, table

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


out = LazyConsole(highlight=False, soft_wrap=True)
err = LazyConsole(stderr=True, highlight=False, soft_wrap=True)


def _load(args: argparse.Namespace):
    from pipelines.validate import load_workflow

    return load_workflow(args.workflow, getattr(args, "set", None) or ())


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a workflow and print every problem at once."""
    loaded = _load(args)
    for w in loaded.warnings:
        err.print(w.format(), style="yellow", markup=False)
    out.print(f"{args.workflow}: valid ({len(loaded.order)} steps: {' -> '.join(loaded.order)})", markup=False)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """Show the run order, each step's key and whether it will run, and why."""
    from rich.text import Text

    from .execute import plan_workflow
    from .search import mark_tpe_trials

    loaded = _load(args)
    rows = mark_tpe_trials(loaded, plan_workflow(loaded, args.cache_dir))
    if args.json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
        return EXIT_OK
    tbl = table(title=f"plan: {loaded.workflow.name}", title_justify="left")
    for col in ("step", "type", "produces", "key", "status"):
        tbl.add_column(col, overflow="fold")
    for r in rows:
        status = "cached" if r.status == "cached" else f"{r.status}: {r.reason}"
        # Text, not markup: a matrix variant's name `q[method=int4]` would read as a style tag
        tbl.add_row(Text(r.name), r.type, r.kind, r.key[:12] if r.key else "(pending)", Text(status),
                    style="dim" if r.status == "cached" else None)
    out.print(tbl)
    todo = sum(r.status == "will run" for r in rows)
    maybe = sum(r.status not in ("cached", "will run") for r in rows)
    out.print(f"{todo} of {len(rows)} steps will run" + (
        f", {maybe} more may run (if a rebuilt input changes)" if maybe else ""), markup=False)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Validate, then run what is not cached."""
    from .records import RunOptions
    from .search import run_with_search

    loaded = _load(args)
    options = RunOptions(cache_dir=args.cache_dir, output=args.output, force=args.force or (),
                         only=args.only or (), fail_fast=args.fail_fast, quiet=args.quiet, track=args.track,
                         jobs=args.jobs)
    result = run_with_search(loaded, options, args.set or ())
    return result.exit_code


def cmd_step(args: argparse.Namespace) -> int:
    """Run one step from its inputs' artifacts and write its artifact (what a pipeline node runs)."""
    from .azureml.node import run_node

    return run_node(args.workflow, args.step, args.input or [], args.output, args.set or (), args.cache_dir, args.quiet)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit the workflow to Azure ML as a command job or a pipeline job (or write the job YAML)."""
    from .azureml.submit import FIELD_FLAGS, SubmitRequest, submit

    request = SubmitRequest(
        workflow=args.workflow, overrides=list(args.set or ()),
        fields={name: getattr(args, name) for name in FIELD_FLAGS if getattr(args, name) is not None},
        tags=args.tag or [], inputs=args.input or [], step_compute=args.step_compute or [], mode=args.mode,
        dry_run=args.dry_run, output=args.output, wait=args.wait, register_model=args.register_model,
        job=args.job, model_output=args.model_output,
    )
    return submit(request, say=lambda text: out.print(text, markup=False))


def cmd_targets(args: argparse.Namespace) -> int:
    """The execution providers and onnxruntime flavours here; with a workflow, what each target would use."""
    from passes.ort.providers import describe_machine

    machine = describe_machine()
    rows = _workflow_targets(args, [p["name"] for p in machine["providers"]]) if args.workflow else []
    if args.json:
        out.print_json(json.dumps({**machine, "workflow": rows}))
        return EXIT_OK
    out.print(f"onnxruntime {machine['onnxruntime']}: " + ", ".join(
        f"{p['name']}" + (" (plugin)" if p["kind"] == "plugin" else "") for p in machine["providers"]), markup=False)
    tbl = table(title="onnxruntime flavours", title_justify="left")
    for col in ("package", "brings", "installed", "to get it"):
        tbl.add_column(col, overflow="fold")
    for f in machine["flavours"]:
        tbl.add_row(f["package"], f["brings"], f["version"] or "no", "" if f["version"] else f["install"])
    out.print(tbl)
    out.print("not available here:", markup=False)
    for m in machine["missing"]:
        out.print(f"  {m['name']}: install {m['install']}", markup=False)
    for row in rows:
        status = f"-> {', '.join(row['providers'])}" if row["providers"] else f"cannot run: {row['error']}"
        out.print(f"{row['where']}: {row['target']} {status}" + (f" ({row['warning']})" if row.get("warning") else ""),
                  markup=False)
    return EXIT_OK


def _workflow_targets(args: argparse.Namespace, available: list[str]) -> list[dict]:
    """Each distinct target of a workflow (the workflow's and steps' overrides) with the providers it gets here."""
    from pipelines.validate import check_workflow
    from pipelines.yaml_loader import load_yaml, read_workflow_text
    from schemas.errors import ConfigError
    from schemas.target import TargetError, select_providers

    path = Path(args.workflow)
    data, positions = load_yaml(read_workflow_text(path), str(path))
    from schemas import Target

    try:
        workflow = check_workflow(data, positions, path.resolve().parent, path.resolve()).workflow
    except ConfigError as exc:  # an unavailable target is what this command explains: show it
        workflow = None
        messages = [i.format() for i in exc.issues]
    seen: dict[str, dict] = {}
    targets = [("target", Target.model_validate(data.get("target") or {}))] if workflow is None else \
        [("target", workflow.target)] + [(f"steps.{n}.target", workflow.target.overridden(c.target))
                                          for n, c in workflow.steps.items() if c.target is not None]
    for where, target in targets:
        text = f"{target.device} {target.resolved_providers()}"
        if text in seen:
            continue
        row = {"where": where, "target": text, "providers": None, "error": None, "warning": None}
        try:
            choice = select_providers(target, available)
            row["providers"], row["warning"] = list(choice.providers), choice.warning
        except TargetError as exc:
            row["error"] = str(exc)
        seen[text] = row
    if workflow is None:
        for m in messages:
            err.print(m, markup=False)
    return list(seen.values())


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the workflow format's JSON Schema."""
    from schemas.jsonschema import workflow_json_schema

    text = json.dumps(workflow_json_schema(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return EXIT_OK


def cmd_passes(args: argparse.Namespace) -> int:
    """List the step types, or one type's fields with defaults and descriptions."""
    from schemas import step_types

    types = step_types()
    if args.type and args.type.startswith("olive/"):
        from .olive_listing import show_olive_pass

        return EXIT_OK if show_olive_pass(args.type.partition("/")[2], out, err) else EXIT_INVALID
    if args.type:
        if args.type not in types:
            from schemas.suggest import did_you_mean

            hint = did_you_mean(args.type, types)
            err.print(f"unknown step type {args.type!r}" + (f"; {hint}" if hint else ""), markup=False)
            return EXIT_INVALID
        cls = types[args.type]
        out.print(f"[bold]{args.type}[/bold]: {cls.__doc__.strip().splitlines()[0]} (produces {_produces(cls)})")
        tbl = table(show_lines=False)
        for col in ("field", "type", "default", "description"):
            tbl.add_column(col, overflow="fold")
        refs = cls.reference_fields()
        for name, info in cls.model_fields.items():
            if name == "type":
                continue
            kind = f"ref -> {' | '.join(refs[name][0].kinds)}" if name in refs else _type_name(info.annotation)
            default = "(required)" if info.is_required() else repr(info.get_default(call_default_factory=True))
            tbl.add_row(info.alias or name, kind, default, info.description or "")
        out.print(tbl)
        if args.type == "olive":
            from .olive_listing import list_olive_passes

            list_olive_passes(out)
        return EXIT_OK
    tbl = table(title="step types", title_justify="left")
    for col in ("type", "produces", "takes", "description"):
        tbl.add_column(col)
    for name, cls in types.items():
        takes = ", ".join(f"{f}: {'|'.join(s.kinds)}" for f, (s, _) in cls.reference_fields().items()) or "-"
        tbl.add_row(name, _produces(cls), takes, (cls.__doc__ or "").strip().splitlines()[0])
    out.print(tbl)
    return EXIT_OK


def _produces(cls) -> str:
    """The kind a step type produces; an `olive` step produces what its pass produces."""
    return "its pass's kind" if hasattr(cls, "produced_kind") else cls.output_kind


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return re.sub(r"typing\.|Literal", "", text).replace("NoneType", "None")


def cmd_import_olive(args: argparse.Namespace) -> int:
    """Convert an Olive run config into a workflow file, then validate it (exit 2 when it does not validate)."""
    from pipelines.olive_import import OliveImportError, import_olive

    try:
        result = import_olive(args.config, args.output, args.model, args.data or ())
    except OliveImportError as exc:
        err.print(str(exc), markup=False)
        return EXIT_INVALID
    for where, reason in result.unconverted:
        err.print(f"not converted: {where}: {reason}", style="yellow", markup=False)
    if result.issues:
        for issue in result.issues:
            err.print(issue.format(), markup=False)
        err.print(f"{result.output} was written but does not validate: {len(result.issues)} "
                  f"problem{'s' if len(result.issues) != 1 else ''} (above); fix them in the file, or give "
                  "--model / --data for what must be local", style="red", markup=False)
        return EXIT_INVALID
    out.print(f"wrote {result.output}: valid ({len(result.steps)} steps: {' -> '.join(result.steps)}); "
              f"{len(result.unconverted)} item{'s' if len(result.unconverted) != 1 else ''} not converted "
              "(listed above and at the end of the file)", markup=False)
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    """Look after the artifact cache: ls, verify, gc, clear (only in a folder that is a cache)."""
    from .cache_commands import run_cache_command

    return run_cache_command(args, out, err)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Declarative fine-tune -> ONNX -> quantize -> evaluate workflows with a content-addressed cache.",
        epilog="exit codes: 0 ok, 1 a step failed, 2 invalid workflow or arguments, 130 interrupted, 143 SIGTERM",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def workflow_cmd(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("workflow", help="the workflow YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. steps.tune.epochs=1")
        p.set_defaults(func=func)
        return p

    workflow_cmd("validate", "check a workflow; every error at once with file:line:column", cmd_validate)
    p = workflow_cmd("plan", "the steps in run order, their cache keys and what will run and why", cmd_plan)
    p.add_argument("--cache-dir", type=Path, help="the artifact cache (default $XDG_CACHE_HOME/pipeline)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p = workflow_cmd("run", "validate, then run every step that is not cached", cmd_run)
    p.add_argument("--force", action="append", metavar="STEP", help="run STEP even if it is cached (repeatable)")
    p.add_argument("--only", action="append", metavar="STEP", help="run only STEP and what it needs (repeatable)")
    p.add_argument("--output", type=Path, help="output folder (default ./outputs/<workflow name>)")
    p.add_argument("--cache-dir", type=Path, help="the artifact cache (default $XDG_CACHE_HOME/pipeline)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing step")
    p.add_argument("--jobs", "-j", type=_positive, default=1, metavar="N",
                   help="run up to N independent steps at the same time, each in its own process (default 1)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (the log file still gets everything)")
    p.add_argument("--track", type=_track_flag, metavar="mlflow[:URI]|none",
                   help="log the run to MLflow (default store: OUTPUT/mlflow/mlflow.db, or $MLFLOW_TRACKING_URI); "
                   "over the workflow's `tracking:`; `none` turns it off")

    p = workflow_cmd("step", "run one step from its inputs' artifacts (what each Azure ML pipeline node runs)", cmd_step)
    p.add_argument("step", help="the step to run")
    p.add_argument("--input", action="append", metavar="STEP=DIR",
                   help="the artifact folder (artifact.json + data/) of a step this one references (repeatable)")
    p.add_argument("--output", type=Path, required=True, help="an empty folder: the step's artifact is written there")
    p.add_argument("--cache-dir", type=Path, help="the artifact cache (default $XDG_CACHE_HOME/pipeline)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _submit_parser(workflow_cmd("submit", "run the workflow in Azure ML: one command job, or a pipeline job with "
                                "a node per step (needs the azure extra)", cmd_submit))

    p = sub.add_parser("targets", help="execution providers and onnxruntime flavours here, and what to install for others")
    p.add_argument("workflow", nargs="?", help="also show the providers each of this workflow's targets gets here")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_targets)
    p = sub.add_parser("schema", help="print the JSON Schema of the workflow format (for editors)")
    p.add_argument("--output", "-o", help="write it to this file")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("passes", help="list the step types, or one type's fields")
    p.add_argument("type", nargs="?", help="a step type, e.g. lora; `olive` lists Olive's passes, `olive/Gptq` shows one")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("import-olive", help="convert an Olive run config (JSON) into a workflow, then validate it")
    p.add_argument("config", help="the Olive config, e.g. olive.json")
    p.add_argument("-o", "--output", help="the workflow file to write (default: the config's name with .yaml)")
    p.add_argument("--model", metavar="PATH", help="a local model folder (or hub id) instead of input_model's path")
    p.add_argument("--data", action="append", metavar="NAME=FILE",
                   help="a local data file instead of data config NAME's source (repeatable)")
    p.set_defaults(func=cmd_import_olive)

    p = sub.add_parser("cache", help="look after the artifact cache")
    p.add_argument("--cache-dir", type=Path, help="the artifact cache (default $XDG_CACHE_HOME/pipeline)")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    csub.add_parser("ls", help="artifacts with sizes and ages")
    v = csub.add_parser("verify", help="check every artifact against its manifest's digests")
    v.add_argument("--repair", action="store_true", help="move damaged entries to quarantine/ so the next run rebuilds them")
    g = csub.add_parser("gc", help="drop artifacts no run used recently, and stale temporary folders")
    g.add_argument("--older-than", default="30d", type=duration_seconds, help="unused for this long (e.g. 30d, 12h, 0s; default 30d)")
    g.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    c = csub.add_parser("clear", help="empty the cache")
    c.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_cache)
    return parser


def _track_flag(text: str) -> str:
    """`--track`'s value, checked while parsing (a bad one is an argument error, exit 2)."""
    from schemas.tracking import parse_track_flag

    try:
        parse_track_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _submit_parser(p: argparse.ArgumentParser) -> None:
    """`pipeline submit`'s flags; each workspace/job flag overrides the workflow's `azureml:` field."""
    p.add_argument("--mode", choices=("job", "pipeline"), default="job",
                   help="job: one command job runs `pipeline run`; pipeline: one node per step, along the DAG")
    p.add_argument("--dry-run", action="store_true", help="write the job YAML (and its code snapshot) instead of submitting")
    p.add_argument("-o", "--output", type=Path, help="with --dry-run: the job YAML file (default ./NAME-MODE.yaml)")
    for flag, name, help_ in (
        ("--subscription-id", "subscription_id", "the Azure subscription id"),
        ("--resource-group", "resource_group", "the workspace's resource group"),
        ("--workspace", "workspace", "the Azure ML workspace"),
        ("--workspace-config", "config", "a workspace config.json (default: found as the SDK finds it)"),
        ("--compute", "compute", "the compute cluster jobs run on"),
        ("--environment", "environment", "an existing environment, azureml:NAME:VERSION (default: built from the project)"),
        ("--experiment", "experiment", "the experiment name (default: the workflow's name)"),
        ("--display-name", "display_name", "the job's name in the studio"),
        ("--cache", "cache", "a datastore folder azureml://datastores/NAME/paths/DIR mounted as the artifact cache"),
    ):
        p.add_argument(flag, dest=name, metavar=name.split("_")[-1].upper(), help=help_)
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag on the job (repeatable)")
    p.add_argument("--input", action="append", metavar="STEP=URI",
                   help="read STEP's path from a datastore URI or data asset instead of uploading it (repeatable)")
    p.add_argument("--step-compute", action="append", metavar="STEP=COMPUTE",
                   help="--mode pipeline: run STEP's node on another compute, e.g. tune=gpu-cluster (repeatable)")
    p.add_argument("--wait", action="store_true", help="stream the job's log until it ends")
    p.add_argument("--register-model", metavar="NAME",
                   help="register the ONNX output as a model once the job completes (implies --wait), or of --job")
    p.add_argument("--job", metavar="JOB", help="with --register-model: a completed job (submitted from this workflow)")
    p.add_argument("--model-output", metavar="OUTPUT", help="which `outputs:` entry to register when there are several")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pipeline` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # after parsing: `--help` and argument errors exit above without loading the contract's models
    from schemas.errors import ConfigError, PipelineError

    from .interrupts import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(issue.format(), markup=False)
        err.print(f"{len(exc.issues)} problem{'s' if len(exc.issues) != 1 else ''}: nothing was run", style="red")
        return EXIT_INVALID
    except PipelineError as exc:
        err.print(str(exc), markup=False, style="red")
        return EXIT_FAILED
    except Terminated:
        err.print("stopped (SIGTERM)", style="red")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
