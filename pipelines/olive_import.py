"""`pipeline import-olive`: an Olive run config (JSON) -> a commented workflow YAML, then validated.

Pure Python (json and our own YAML writing): Olive is never imported. Both forms of Olive configs are
read: the current flat one and the older one with nested `config` / `params_config` objects.
`input_model` -> a `model` step, `data_configs` -> `load_data` steps, `passes` (in order) -> steps
chained by `model:` (olive_import_passes), the engine's evaluator -> an `evaluate` step with goals
(olive_import_eval), the target system's accelerator -> `target`, an AzureML system and
`azureml_client` -> the `azureml:` section. Whatever is not converted is listed with the reason.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from schemas.errors import ConfigError, Issue, PipelineError

from . import yaml_writer as yw
from .olive_import_data import azure_client, convert_data, convert_model, convert_target
from .olive_import_eval import convert_evaluator, pick_evaluator
from .olive_import_passes import Chain, Emitted, convert_pass, finish

#: Engine settings with no workflow field, and why (anything else unknown is listed generically).
ENGINE_NOTES = {
    "search_strategy": "Olive's search was not converted: sweeps are not built yet; each step runs its config as "
                       "given (to compare alternatives, put them side by side as branches of one DAG)",
    "output_dir": "give `pipeline run --output DIR` (default ./outputs/<workflow name>)",
    "cache_dir": "the content cache replaces Olive's ($PIPELINE_CACHE_DIR or `--cache-dir`)",
    "cache_config": "the content cache replaces Olive's ($PIPELINE_CACHE_DIR or `--cache-dir`)",
    "clean_cache": "the content cache is never stale: nothing to clean",
    "clean_evaluation_cache": "the content cache is never stale: nothing to clean",
    "enable_shared_cache": "the cache is shared by all workflows on the machine; on Azure ML see azureml.cache",
    "packaging_config": "`outputs:` copies the final model, deployable with its inference.py",
    "evaluate_input_model": "the input model is always the evaluate step's baseline (goals are relative to it)",
    "auto_optimizer_config": "Olive's auto-optimizer picks passes by itself; the workflow runs the passes listed",
    "pass_flows": "several pass flows are a search over alternatives; the passes are converted in their order",
    "workflow_id": "used as the workflow's name",
}
_LOGGING = ("log_severity_level", "ort_log_severity_level", "ort_py_log_severity_level", "log_to_file", "verbose")
_TOP_LEVEL = {"input_model", "systems", "data_configs", "evaluators", "engine", "passes", "workflow_id",
              "azureml_client"}


class OliveImportError(PipelineError):
    """The Olive config cannot be read or is not an Olive run config (the message says where)."""


@dataclass
class ImportResult:
    """What `import_olive` wrote, what it could not convert and whether the workflow validates."""

    output: Path
    text: str
    unconverted: list[tuple[str, str]]
    issues: list[Issue] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when the written workflow validates, 2 when it does not."""
        return 2 if self.issues else 0


def read_olive_config(path: Path) -> dict:
    """The Olive config as a dict; an unreadable file or invalid JSON is an error at its line:column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OliveImportError(f"{path}: cannot read the Olive config: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OliveImportError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise OliveImportError(f"{path}:1:1: an Olive run config is a JSON object, not {type(data).__name__}")
    if not isinstance(data.get("input_model"), dict):
        line, col = _locate(text, "input_model")
        raise OliveImportError(f"{path}:{line}:{col}: `input_model` must be an object (the model Olive optimizes)")
    for key, kind in (("passes", dict), ("data_configs", list), ("systems", dict), ("evaluators", dict)):
        if key in data and not isinstance(data[key], kind):
            line, col = _locate(text, key)
            raise OliveImportError(f"{path}:{line}:{col}: `{key}` must be a JSON {'object' if kind is dict else 'array'}")
    return data


def _locate(text: str, key: str) -> tuple[int, int]:
    """Line and column of `"key":` in the JSON text (1, 1 when it is not there)."""
    found = re.search(rf'"{re.escape(key)}"\s*:', text)
    if not found:
        return 1, 1
    before = text[: found.start()]
    return before.count("\n") + 1, found.start() - before.rfind("\n")


def flatten(value: Any) -> Any:
    """The older form's `{"type": T, "config": {...}}` -> `{"type": T, ...}` (recursively)."""
    if isinstance(value, list):
        return [flatten(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: flatten(v) for k, v in value.items() if k != "config"}
    if isinstance(value.get("config"), dict) and "type" in value:
        out.update(flatten(value["config"]))
    elif "config" in value:
        out["config"] = flatten(value["config"])
    return out


class Names:
    """Unique step names that match the workflow's step-name pattern."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, wanted: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_\-]", "_", wanted)[:60] or "step"
        if not re.match(r"^[A-Za-z_]", base):
            base = f"p_{base}"
        name, i = base, 2
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def parse_data_options(items: Sequence[str]) -> dict[str, str]:
    """`--data NAME=FILE` options -> {name: file}."""
    out = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise OliveImportError(f"--data {item!r}: expected NAME=FILE, NAME being a data config's name")
        out[name] = file
    return out


def convert(config: dict, source: Path, out_dir: Path, model: str | None = None,
            data: dict[str, str] | None = None) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Convert a loaded Olive config; (the YAML text, what was not converted, the step names)."""
    config = flatten(config)
    engine = dict(config.get("engine") or {})
    engine.update({k: config[k] for k in config if k not in _TOP_LEVEL or k in ("evaluator", "host", "target")})
    unconverted: list[tuple[str, str]] = []
    names = Names()
    data = dict(data or {})
    unknown = [n for n in data if n not in {d.get("name") for d in config.get("data_configs") or []}]
    if unknown:
        known = ", ".join(str(d.get("name")) for d in config.get("data_configs") or []) or "none"
        raise OliveImportError(f"--data {unknown[0]}=...: the Olive config has no data config {unknown[0]!r} "
                               f"(its data configs: {known})")
    paths = _Paths(source.parent, out_dir)
    azure_inputs: dict[str, str] = {}
    base, task = convert_model(config["input_model"], names("base"), model, paths, azure_inputs, unconverted)
    chain = Chain(model=base.name, kind="hf_model", task=task, data={},
                  data_hints={}, unconverted=unconverted, new_name=names)
    steps: list[Emitted] = [base]
    for i, dc in enumerate(config.get("data_configs") or []):
        emitted = convert_data(dc, i, chain, data, paths, azure_inputs)
        if emitted:
            steps.append(emitted)
    for name, entry in (config.get("passes") or {}).items():
        if isinstance(entry, list):  # alternatives Olive searches over: the first is converted
            for j in range(1, len(entry)):
                unconverted.append((f"passes.{name}[{j}]", "an alternative Olive searches over; sweeps are not built "
                                    "yet (the first one is converted)"))
            entry = entry[0] if entry else {}
        steps += convert_pass(name, dict(entry), chain)
    steps += finish(chain)
    picked = pick_evaluator(config, engine, chain)
    if picked:
        evaluate = convert_evaluator(picked[0], picked[1], base.name, chain, names("evaluate"))
        if evaluate:
            steps.append(evaluate)
    target, target_note = convert_target(config.get("systems") or {}, engine, unconverted)
    azure, azure_note = azure_client(config, engine, azure_inputs, unconverted)
    for key in engine:
        if key in ("evaluator", "host", "target"):
            continue
        reason = ENGINE_NOTES.get(key) or ("logging: every run writes logs/run.log" if key in _LOGGING else None)
        where = f"engine.{key}" if key in (config.get("engine") or {}) else key
        unconverted.append((where, reason or "no equivalent in a workflow"))
    wf_name = _workflow_name(config.get("workflow_id"), source)
    text = _render(source, config, wf_name, target, target_note, steps, chain.model, azure, azure_note, unconverted)
    return text, unconverted, [s.name for s in steps]


class _Paths:
    """Olive's paths are relative to its config file; ours to the workflow file."""

    def __init__(self, source_dir: Path, out_dir: Path):
        self.source_dir, self.out_dir = source_dir, out_dir

    def from_olive(self, value: str) -> str:
        """A local path in the Olive config, rewritten relative to the workflow's folder."""
        return self._rel((self.source_dir / value) if not os.path.isabs(value) else Path(value))

    def from_cli(self, value: str) -> str:
        """A path given on the command line (relative to the current folder)."""
        return self._rel(Path(value).absolute())

    def _rel(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.out_dir.absolute())
        except ValueError:  # another drive (Windows)
            return str(path)


def _workflow_name(workflow_id: Any, source: Path) -> str:
    raw = workflow_id if isinstance(workflow_id, str) and workflow_id != "default_workflow" else source.stem
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", raw).strip(".-_")[:100]
    return name if name and name[0].isalnum() else f"olive-{name}".rstrip("-")


def _render(source: Path, config: dict, name: str, target: dict | None, target_note: str | None, steps: list[Emitted],
            final: str, azure: dict | None, azure_note: str | None, unconverted: list[tuple[str, str]]) -> str:
    chain_text = " -> ".join(str(p.get("type") if isinstance(p, dict) else p[0].get("type") if p else "?")
                             for p in (config.get("passes") or {}).values()) or "no passes"
    lines = yw.comment_lines(
        f"Imported from the Olive run config {source.name} by `pipeline import-olive`.\n"
        f"Olive passes: {chain_text}.\n"
        "Each item says which part of the Olive config it comes from; what could not be converted is listed\n"
        "at the end of this file, with the reason. Check: pipeline validate THIS_FILE; run: pipeline run THIS_FILE")
    lines += ["version: 1", f"name: {yw.scalar(name)}",
              f"description: {yw.scalar(f'Imported from Olive config {source.name}: {chain_text}')}", ""]
    if target:
        lines += [yw.with_comment("target:", target_note)] + yw.block(target, 2, _TARGET_NOTES) + [""]
    lines.append("steps:")
    for step in steps:
        lines += yw.comment_lines(step.note, 2)
        lines.append(f"  {step.name}:")
        lines += yw.block(step.body, 4, step.field_notes)
    lines += ["", "outputs:", yw.with_comment(f"  model: {final}", "the last pass's model, copied deployable")]
    if azure:
        lines += ["", yw.with_comment("azureml:", azure_note)] + yw.block(azure, 2)
    if unconverted:
        lines += ["", f"# Not converted ({len(unconverted)}):"]
        lines += [f"#   - {where}: {' '.join(reason.split())}" for where, reason in unconverted]
    return "\n".join(lines) + "\n"


_TARGET_NOTES = {"fallback": "cpu: validates and runs on a machine without this device (one warning); error refuses"}


def import_olive(config_path: str | Path, output: str | Path | None = None, model: str | None = None,
                 data: Sequence[str] = ()) -> ImportResult:
    """Convert, write the workflow (even when it does not validate) and validate it."""
    from .validate import load_workflow

    source = Path(config_path)
    out = Path(output) if output is not None else source.with_suffix(".yaml")
    if out.absolute() == source.absolute():
        raise OliveImportError(f"-o {out}: that is the Olive config itself; choose another file")
    config = read_olive_config(source)
    text, unconverted, names = convert(config, source, out.parent, model, parse_data_options(data))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OliveImportError(f"-o {out}: cannot write the workflow: {exc}") from exc
    result = ImportResult(out, text, unconverted, steps=names)
    try:
        load_workflow(out)
    except ConfigError as exc:
        result.issues = list(exc.issues)
    return result
