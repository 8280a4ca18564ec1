"""Checks on a job document that the Azure ML SDK does not make before submitting.

The SDK checks that a command job's `${{inputs.X}}` are declared, and nothing else: a command that
names an undeclared output, a node bound to a missing upstream output or pipeline input, or an input
that is declared (and uploaded) but never used all fail, or waste an upload, only in the cloud. These
checks read the job's YAML form (what `dump` writes and `load_job` reads), so they see what is sent.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from schemas.errors import PipelineError

_PLACEHOLDER = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_IO = re.compile(r"^(inputs|outputs)\.([A-Za-z_][A-Za-z0-9_]*)$")
_PARENT = re.compile(r"^\$\{\{\s*parent\.(?:jobs\.([A-Za-z0-9_]+)\.outputs|(inputs)|(outputs))\.([A-Za-z0-9_]+)\s*\}\}$")


def command_problems(where: str, command: str, inputs: Iterable[str], outputs: Iterable[str]) -> list[str]:
    """Every `${{inputs.X}}` / `${{outputs.X}}` in `command` is declared, and every declared one is used."""
    declared = {"inputs": set(inputs), "outputs": set(outputs)}
    used: dict[str, set[str]] = {"inputs": set(), "outputs": set()}
    problems = []
    for expression in _PLACEHOLDER.findall(command):
        match = _IO.match(expression)
        if not match:
            problems.append(f"{where}: the command uses ${{{{{expression}}}}}, which is neither an input nor an output")
            continue
        used[match.group(1)].add(match.group(2))
    for kind in ("inputs", "outputs"):
        problems += [f"{where}: the command uses ${{{{{kind}.{n}}}}}, but {kind} declares no {n!r}"
                     for n in sorted(used[kind] - declared[kind])]
        problems += [f"{where}: {kind}.{n} is declared but the command never uses it"
                     for n in sorted(declared[kind] - used[kind])]
    return problems


def _binding(value: Any) -> str | None:
    """The data-binding expression of a node's input or output, if it is one."""
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, str) and value.strip().startswith("${{") else None


def pipeline_problems(doc: dict) -> list[str]:
    """Each node's command against its component's inputs and outputs, and each binding's target."""
    problems = []
    jobs = doc.get("jobs") or {}
    pipeline_inputs, pipeline_outputs = set(doc.get("inputs") or {}), set(doc.get("outputs") or {})
    for name, node in jobs.items():
        component = node.get("component") if isinstance(node.get("component"), dict) else {}
        declared_in, declared_out = set(component.get("inputs") or {}), set(component.get("outputs") or {})
        problems += command_problems(f"jobs.{name}", component.get("command", ""), declared_in, declared_out)
        bound_in = node.get("inputs") or {}
        for key in sorted(declared_in - set(bound_in)):
            problems.append(f"jobs.{name}: input {key!r} is declared but the node binds nothing to it")
        for key, value in bound_in.items():
            where = f"jobs.{name}.inputs.{key}"
            if key not in declared_in:
                problems.append(f"{where}: bound, but the node's command declares no such input")
            problems += _target_problems(where, _binding(value), jobs, pipeline_inputs, pipeline_outputs, "input")
        for key, value in (node.get("outputs") or {}).items():
            where = f"jobs.{name}.outputs.{key}"
            if key not in declared_out:
                problems.append(f"{where}: bound, but the node's command declares no such output")
            problems += _target_problems(where, _binding(value), jobs, pipeline_inputs, pipeline_outputs, "output")
    return problems


def _target_problems(where: str, expression: str | None, jobs: dict, pipeline_inputs: set, pipeline_outputs: set,
                     side: str) -> list[str]:
    if expression is None:
        return []
    match = _PARENT.match(expression)
    if not match:
        return [f"{where}: {expression} is not a binding this project writes"]
    job, is_input, is_output, key = match.groups()
    if job is not None:
        if side != "input":
            return [f"{where}: an output cannot be bound to another node's output"]
        upstream = jobs.get(job)
        if upstream is None:
            return [f"{where}: {expression} names no node {job!r}"]
        outputs = (upstream.get("component") or {}).get("outputs") or {}
        return [] if key in outputs else [f"{where}: node {job!r} has no output {key!r}"]
    if is_input:
        return [] if key in pipeline_inputs else [f"{where}: the pipeline declares no input {key!r}"]
    if side != "output":
        return [f"{where}: an input cannot read a pipeline output"]
    return [] if key in pipeline_outputs else [f"{where}: the pipeline declares no output {key!r}"]


def check_document(doc: dict) -> None:
    """Raise PipelineError listing every problem in a command or pipeline job document."""
    if doc.get("type") == "pipeline":
        problems = pipeline_problems(doc)
    else:
        problems = command_problems("job", doc.get("command", ""), doc.get("inputs") or {}, doc.get("outputs") or {})
    if problems:
        raise PipelineError("the job is inconsistent (a bug in pipeline submit; please report it):\n  "
                            + "\n  ".join(problems))
