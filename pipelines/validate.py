"""From a workflow file to a checked workflow: every problem found and reported at once.

Order: YAML (syntax, duplicates, tags) -> `--set` overrides -> the header -> each step by its own
config class -> references, kinds and cycles -> local files -> outputs -> providers. Later checks run
even when earlier ones found problems wherever they still make sense, so the user sees everything.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError

from schemas import StepConfig, Target, Workflow, WorkflowHeader, step_types
from schemas.base import STEP_NAME_PATTERN, step_output_kind
from schemas.errors import ConfigError, Issue
from schemas.paths import PathResolutionError, looks_like_hub_id, resolve_local_path
from schemas.suggest import did_you_mean
from schemas.target import PROVIDER_SOURCES, TargetError, providers_from_packages, select_providers

from .graph import StepGraph, build_graph, find_cycles, run_order
from .matrix import SearchPlan, collapse_repeats, expand_matrices, search_issues
from .overrides import apply_overrides
from .yaml_loader import Positions, load_yaml, read_workflow_text

#: Execution providers and the onnxruntime distributions that ship each (checked without importing).
PROVIDER_PACKAGES = {name: src.packages + ((src.plugin[0],) if src.plugin else ()) for name, src in PROVIDER_SOURCES.items()}


@dataclass
class LoadedWorkflow:
    """A validated workflow with its file, folder, positions, graph and run order."""

    workflow: Workflow
    file: Path
    positions: Positions
    graph: StepGraph
    order: list[str]
    warnings: list[Issue]
    #: A `matrix:` step (or one fanned out behind it) -> its variants' names, in order.
    variants: dict[str, list[str]] = field(default_factory=dict)
    #: A matrix step -> its search (sampler, the whole product, the combinations in this DAG).
    searches: dict[str, SearchPlan] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Relative paths in the workflow resolve against this folder."""
        return self.file.parent


def load_workflow(path: str | Path, overrides: Sequence[str] = (),
                  trials: dict[str, list[dict]] | None = None) -> LoadedWorkflow:
    """Read, override and validate a workflow file; raise ConfigError listing every problem.

    `trials`: for a `search: {sampler: tpe}` matrix step, the combinations tried so far (runner.search).
    """
    file = Path(path)
    shown = str(path)
    data, positions = load_yaml(read_workflow_text(file), shown)
    apply_overrides(data, overrides, positions)
    return check_workflow(data, positions, file.resolve().parent, file.resolve(), trials)


def check_workflow(data: dict, positions: Positions, folder: Path, file: Path | None = None,
                   trials: dict[str, list[dict]] | None = None) -> LoadedWorkflow:
    """Validate loaded data (see the module docstring); raise ConfigError with every issue."""
    issues: list[Issue] = []
    expansion = expand_matrices(data, positions, trials)  # before anything reads `steps`: variants are steps
    issues += expansion.issues
    raw_steps = data.get("steps")
    header_data = {**data, "steps": raw_steps if isinstance(raw_steps, dict) else {}}
    header: WorkflowHeader | None = None
    try:
        header = WorkflowHeader.model_validate(header_data)
    except ValidationError as exc:
        issues += pydantic_issues(exc, WorkflowHeader, (), data, positions)
    if "steps" in data and not isinstance(raw_steps, dict):
        issues.append(positions.issue(("steps",), "`steps` must be a mapping of step name -> step config"))
    elif isinstance(raw_steps, dict) and not raw_steps:
        issues.append(positions.issue(("steps",), "the workflow has no steps"))

    generated = {v for names in expansion.variants.values() for v in names}
    steps = _check_steps(raw_steps if isinstance(raw_steps, dict) else {}, positions, issues, generated)
    steps = {name: cfg.with_defaults_from(steps) for name, cfg in steps.items()}
    known = set(raw_steps) if isinstance(raw_steps, dict) else set()
    issues += _check_references(steps, known, positions)
    graph = build_graph(steps)
    for cycle in find_cycles(graph):
        # edges run producer -> consumer; people read "a takes b's output", so show the reverse
        cycle = cycle[::-1]
        start = cycle.index(min(cycle))
        cycle = cycle[start:] + cycle[:start]
        loop = " -> ".join(cycle + [cycle[0]])
        issues.append(positions.issue(("steps", cycle[0]), f"the steps form a cycle: {loop} (each takes the next one's output)",
                                      "a step cannot depend on its own output; remove one of these references"))
    issues += _check_paths(steps, positions, folder)
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    for out_name, step in outputs.items():
        if isinstance(step, str) and step in expansion.variants:
            issues.append(positions.issue(("outputs", out_name), f"{step!r} is a matrix of {len(expansion.variants[step])} "
                                          "variants: an output is one model",
                                          "pick one with a `select` step, or name a variant, e.g. "
                                          f"{expansion.variants[step][0]!r}"))
        elif isinstance(step, str) and step not in known:
            issues.append(positions.issue(("outputs", out_name), f"unknown step {step!r}", did_you_mean(step, known)))
    if header is not None:  # the azureml: section names steps too: check them as references are checked
        issues += [positions.issue(("azureml",) + path, message, hint)
                   for path, message, hint in header.azureml.step_issues(steps, known | set(expansion.variants))]
    issues += search_issues(expansion, steps, positions)
    for name, cfg in steps.items():  # checks across steps that a config declares (select: its evaluate step)
        checker = getattr(cfg, "step_issues", None)
        if callable(checker):
            issues += [positions.issue(("steps", name) + tuple(p), m, h) for p, m, h in checker(steps)]
    target = header.target if header else Target()
    warnings = _check_targets(target, steps, positions, folder)
    issues += [w for w in warnings if w.severity == "error"]
    if issues:
        raise ConfigError(collapse_repeats(_sorted(issues)))
    assert header is not None
    workflow = Workflow(
        version=header.version, name=header.name, description=header.description,
        target=header.target, steps=steps, outputs=dict(header.outputs), azureml=header.azureml,
        tracking=header.tracking,
        isolation=header.isolation,
    )
    return LoadedWorkflow(workflow, file or folder / "<workflow>", positions, graph, run_order(graph),
                          collapse_repeats([w for w in warnings if w.severity != "error"]),
                          expansion.variants, expansion.searches)


def _check_steps(raw: dict, positions: Positions, issues: list[Issue], generated: set[str] = frozenset()) -> dict[str, StepConfig]:
    """Each step by its config class; `generated` are the matrix variants' names (brackets allowed there only)."""
    import re

    types = step_types()
    steps: dict[str, StepConfig] = {}
    for name, body in raw.items():
        path = ("steps", name)
        if name not in generated and (not isinstance(name, str) or not re.match(STEP_NAME_PATTERN, name)):
            issues.append(positions.issue(path, f"invalid step name {name!r}",
                                          "use letters, digits, `_` and `-`, starting with a letter", prefer_key=True))
            continue
        if not isinstance(body, dict):
            issues.append(positions.issue(path, "a step must be a mapping with a `type`"))
            continue
        step_type = body.get("type")
        if step_type is None:
            issues.append(positions.issue(path, "missing `type`", f"one of: {', '.join(types)}"))
            continue
        cls = types.get(step_type) if isinstance(step_type, str) else None
        if cls is None:
            hint = did_you_mean(str(step_type), types) or f"one of: {', '.join(types)}"
            issues.append(positions.issue(path + ("type",), f"unknown step type {step_type!r}", hint))
            continue
        try:
            steps[name] = cls.model_validate(body)
        except ValidationError as exc:
            issues += pydantic_issues(exc, cls, path, body, positions)
    return steps


def _check_references(steps: dict[str, StepConfig], known: set, positions: Positions) -> list[Issue]:
    issues = []
    for name, cfg in steps.items():
        for fld, (_, is_list) in cfg.reference_fields().items():
            value = getattr(cfg, fld)
            if value is None:
                continue
            for i, target in enumerate(value if is_list else [value]):
                path = ("steps", name, fld) + ((i,) if is_list else ())
                if target == name:
                    issues.append(positions.issue(path, f"step {name!r} references itself"))
                elif target not in known:
                    issues.append(positions.issue(path, f"unknown step {target!r}", did_you_mean(target, known)))
                elif target in steps and step_output_kind(steps[target]) not in cfg.reference_kinds(fld):
                    produced, wanted = step_output_kind(steps[target]), cfg.reference_kinds(fld)
                    issues.append(positions.issue(
                        path,
                        f"{_label(cfg)} needs {' or '.join(_a(k) for k in wanted)}; {target!r} produces {_a(produced)}",
                        _bridge_hint(produced, wanted),
                    ))
    return issues


def _label(cfg: StepConfig) -> str:
    """`quantize`, or `olive (Gptq)`: the step type, with the Olive pass it runs."""
    pass_name = getattr(cfg, "pass_name", None)
    return f"{cfg.step_type()} ({pass_name})" if pass_name else cfg.step_type()


def _check_paths(steps: dict[str, StepConfig], positions: Positions, folder: Path) -> list[Issue]:
    issues = []
    for name, cfg in steps.items():
        for fld, (spec, is_list) in cfg.path_fields().items():
            value = getattr(cfg, fld)
            for i, item in enumerate(value if is_list else [value] if value is not None else []):
                path = ("steps", name, fld) + ((i,) if is_list else ())
                if spec.allow_remote and looks_like_hub_id(item, folder):
                    continue  # a hub id: resolved (and reported if unreachable) when the step runs
                try:
                    resolved = resolve_local_path(item, folder)
                except PathResolutionError as exc:
                    issues.append(positions.issue(path, str(exc)))
                    continue
                if spec.must_exist and not resolved.exists():
                    issues.append(positions.issue(path, f"{item!r} does not exist (looked for {resolved})",
                                                  "relative paths are relative to the workflow file's folder"))
                elif resolved.exists() and not (resolved.is_file() or resolved.is_dir()):
                    # a FIFO or a device (/dev/zero) would block the run or never end: refuse it here
                    issues.append(positions.issue(path, f"{item!r} is {_special_kind(resolved)}, not a file or folder",
                                                  "point it at a regular file or a folder"))
    return issues


def _special_kind(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    return "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
        else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _check_targets(target: Target, steps: dict[str, StepConfig], positions: Positions, folder: Path) -> list[Issue]:
    """The workflow's target and every step's effective target: providers available here, step needs met.

    A target whose providers are missing is an error (fallback: error) or one warning (fallback: cpu),
    reported once however many steps share it. Passes that would pick something the target cannot do
    without more input (quantize on an npu needs calibration data) say so here, before anything runs.
    """
    installed = _installed_distributions()
    issues: list[Issue] = []
    seen: set[str] = set()

    def check(tgt: Target, path: tuple) -> None:
        issues.extend(i for i in _check_providers(tgt, positions, folder, installed, path) if i.message not in seen)
        seen.update(i.message for i in issues)

    check(target, ("target",))
    for name, cfg in steps.items():
        effective = target
        if cfg.target is not None:
            try:
                effective = target.overridden(cfg.target)
            except ValidationError as exc:
                messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
                issues.append(positions.issue(("steps", name, "target"), f"with the workflow's target: {messages}"))
                continue
            check(effective, ("steps", name, "target"))
        for fld, message, hint in cfg.target_issues(effective):
            issues.append(positions.issue(("steps", name) + tuple(fld), message, hint))
    return issues


def _check_providers(target: Target, positions: Positions, folder: Path, installed: set[str],
                     where: tuple = ("target",)) -> list[Issue]:
    """Refuse (fallback: error) or warn about (fallback: cpu) providers that are not available here."""
    issues = []
    plugins = []
    for provider, library in target.provider_libraries.items():
        try:
            found = resolve_local_path(library, folder).is_file()
        except PathResolutionError:
            found = False
        if found:
            plugins.append(provider)
        else:
            issues.append(positions.issue(where + ("provider_libraries", provider),
                                          f"plugin library {library!r} for {provider} does not exist",
                                          "relative paths are relative to the workflow file's folder"))
    try:
        choice = select_providers(target, providers_from_packages(installed, plugins))
    except TargetError as exc:
        path = where + (("providers",) if target.providers else ("device",))
        return issues + [positions.issue(path, exc.message, exc.hint)]
    if choice.warning:
        issues.append(positions.issue(where, choice.warning, severity="warning"))
    return issues


def _installed_distributions() -> set[str]:
    """Which of the distributions that bring providers are installed (importlib.metadata: nothing imported).

    Only those are looked up, each by name: reading every installed distribution's metadata takes
    0.1-0.3 s in a full environment, most of what `pipeline validate` would otherwise spend.
    """
    names = set()
    for name in sorted({pkg for pkgs in PROVIDER_PACKAGES.values() for pkg in pkgs}):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        names.add(name.lower().replace("_", "-"))
    return names


def pydantic_issues(exc: ValidationError, cls: type[BaseModel], prefix: tuple, data: Any,
                    positions: Positions) -> list[Issue]:
    """Map Pydantic's errors to issues with the file position, the field path and a hint."""
    grouped: dict[tuple, list[str]] = {}
    hints: dict[tuple, str | None] = {}
    extra_keys: set[tuple] = set()
    for err in exc.errors(include_url=False):
        loc = _data_path(err["loc"], data)
        path = prefix + loc
        kind = err["type"]
        if kind == "extra_forbidden":
            fields = _fields_at(cls, loc[:-1])
            grouped.setdefault(path, []).append(f"unknown field {loc[-1]!r}")
            hints[path] = did_you_mean(str(loc[-1]), fields) or (f"fields here: {', '.join(fields)}" if fields else None)
            extra_keys.add(path)
            continue
        message = err["msg"].removeprefix("Value error, ")
        ctx = err.get("ctx") or {}
        if ctx.get("hint") or ctx.get("at_key"):  # a validator's own error: its hint, and the key as the place
            grouped.setdefault(path, []).append(message)
            hints.setdefault(path, ctx.get("hint"))
            if ctx.get("at_key"):
                extra_keys.add(path)
            continue
        if kind == "missing":
            message = f"missing required field {loc[-1]!r}" if loc else "missing required field"
            fld = _field_info(cls, loc)
            hints[path] = fld.description if fld is not None else None
            path = prefix + loc[:-1] if loc else prefix
            grouped.setdefault(path, []).append(message)
            continue
        grouped.setdefault(path, []).append(message)
        hints.setdefault(path, None)
    out = []
    for path, messages in grouped.items():
        unique = list(dict.fromkeys(messages))
        out.append(positions.issue(path, " or ".join(unique), hints.get(path), prefer_key=path in extra_keys))
    return out


def _data_path(loc: tuple, data: Any) -> tuple:
    """Drop the parts of a Pydantic loc that are union-branch or validator names, not data keys."""
    out: list = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
        elif i == len(loc) - 1 and isinstance(node, dict) and not _looks_like_type_name(part):
            out.append(part)  # a missing field or an unknown key
    return tuple(out)


def _looks_like_type_name(part: Any) -> bool:
    return isinstance(part, str) and any(c in part for c in "[](),'\"") or part in ("str", "int", "float", "bool")


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    model = _model_at(cls, loc)
    return list(model.model_fields) if model else []


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: Any = cls
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        ann = info.annotation if info else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _field_info(cls: type[BaseModel], loc: tuple) -> Any:
    model = _model_at(cls, loc[:-1]) if loc else None
    return model.model_fields.get(loc[-1]) if model and isinstance(loc[-1], str) else None


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" or kind.startswith("hf_") else "a ") + kind


def _bridge_hint(produced: str, wanted: tuple[str, ...]) -> str | None:
    """Which step type turns `produced` into one of `wanted` (e.g. hf_model -> export_onnx -> onnx_model)."""
    for name, cls in step_types().items():
        if cls.output_kind not in wanted:
            continue
        for spec, _ in cls.reference_fields().values():
            if produced in spec.kinds:
                return f"add {_a(name)} step in between (it takes {_a(produced)} and produces {_a(cls.output_kind)})"
    return None


def _sorted(issues: list[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda i: (i.file, i.line or 0, i.column or 0, str(i.path)))
