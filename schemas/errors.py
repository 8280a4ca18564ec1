"""One exception hierarchy for the whole tool: config errors, graph errors and pass errors.

Every error the tool raises on purpose derives from `PipelineError`, so the CLI and the runner report
them with one branch: `ConfigError` (the workflow, every issue at once), `RegistryError` and
`UnknownStepTypeError` (step types and passes), `schemas.paths.PathResolutionError`,
`schemas.target.TargetError`, `pipelines.overrides.OverrideError` and `passes.PassError`.

Every error a user sees says what is wrong, where (file:line:column, step, field) and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class PipelineError(Exception):
    """Base of every error the tool raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One problem in a workflow: message, location and an optional hint."""

    message: str
    path: tuple = ()
    file: str = "<workflow>"
    line: int | None = None
    column: int | None = None
    hint: str | None = None
    severity: str = "error"  # or "warning"

    @property
    def step(self) -> str | None:
        """The step the issue is in, when it is inside `steps`."""
        return self.path[1] if len(self.path) > 1 and self.path[0] == "steps" else None

    @property
    def where(self) -> str:
        """`file:line:column` (or just the file when the position is unknown)."""
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def format(self) -> str:
        """`wf.yaml:12:5: steps.tune.epochs: message` plus an indented hint line."""
        dotted = ".".join(str(p) for p in self.path)
        text = f"{self.where}: {dotted + ': ' if dotted else ''}{self.message}"
        if self.severity != "error":
            text = f"{self.where}: {self.severity}: {dotted + ': ' if dotted else ''}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class ConfigError(PipelineError):
    """The workflow is invalid; `issues` holds every problem found, all at once."""

    def __init__(self, issues: Sequence[Issue]):
        self.issues = [i for i in issues if i.severity == "error"]
        super().__init__("\n".join(i.format() for i in self.issues))


class RegistryError(PipelineError, ValueError):
    """A step type or a pass cannot be registered: a bad name, an unknown kind, a name already taken.

    Also a ValueError: registration code written against the registry's earlier errors still catches it.
    """


class UnknownStepTypeError(PipelineError, KeyError):
    """No config or pass is registered under a step type; the message names it and how to register one.

    Also a KeyError, as a failed lookup in the registry was before.
    """

    def __str__(self) -> str:
        # KeyError's own str() quotes its argument (meant for a bare key); ours is a sentence
        return str(self.args[0]) if self.args else ""
