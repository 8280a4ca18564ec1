"""One exception hierarchy for the whole tool: config errors, graph errors and pass errors.

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


class StepFailedError(PipelineError):
    """A step raised while running; the runner records it and exits 1."""

    def __init__(self, step: str, error: BaseException):
        self.step, self.error = step, error
        super().__init__(f"step {step!r} failed: {type(error).__name__}: {error}")
