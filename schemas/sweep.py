"""Sweeps: the `matrix:` and `search:` keys any step may carry, and the objectives `search` and `select` read.

A step with `matrix: {method: [dynamic_int8, static_int8], per_channel: [true, false]}` stands for one
ordinary step per combination of the listed values (`pipelines.matrix` expands it before the steps are
validated, so each variant is checked, keyed and cached as any step). `search:` picks which
combinations run: all of them in order (`grid`), a seeded sample (`random`), or trials proposed by
Optuna's TPE from the objective measured on the earlier ones (`tpe`, run by `runner.search`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StepName, StrictModel

#: The two keys a step may carry besides its config's fields; taken away by the expansion.
MATRIX_KEY, SEARCH_KEY = "matrix", "search"
#: Largest product of a matrix: each variant is a step, and `plan` lists them all.
MAX_VARIANTS = 256


class ObjectiveTerm(StrictModel):
    """One metric to minimize or maximize, optionally weighted (a weighted list sums the terms)."""

    minimize: str | None = Field(None, description="A metric the evaluate step measures, lower is better (latency_p50_ms).")
    maximize: str | None = Field(None, description="A metric the evaluate step measures, higher is better (accuracy).")
    weight: float = Field(1.0, gt=0, description="In a weighted list: this term's weight in the sum.")

    @model_validator(mode="after")
    def _one_direction(self) -> "ObjectiveTerm":
        if (self.minimize is None) == (self.maximize is None):
            raise ValueError("an objective term needs exactly one of `minimize` or `maximize`")
        from .steps.evaluate import GOAL_METRICS  # here: schemas.steps imports this module

        if self.metric not in GOAL_METRICS:
            raise ValueError(f"no metric {self.metric!r}; an objective can read {', '.join(GOAL_METRICS)}")
        return self

    @property
    def metric(self) -> str:
        """The metric this term reads."""
        return self.minimize or self.maximize or ""

    @property
    def sign(self) -> float:
        """+1 for minimize, -1 for maximize: a score to minimize is `sign * weight * value`."""
        return 1.0 if self.minimize else -1.0


Objective = ObjectiveTerm | list[ObjectiveTerm]


def objective_terms(objective: ObjectiveTerm | list[ObjectiveTerm]) -> list[ObjectiveTerm]:
    """A single term or a weighted list, as a list."""
    return objective if isinstance(objective, list) else [objective]


def objective_text(objective: ObjectiveTerm | list[ObjectiveTerm]) -> str:
    """`minimize latency_p50_ms`, or `minimize latency_p50_ms - 100*accuracy` for a weighted list."""
    terms = objective_terms(objective)
    if len(terms) == 1 and terms[0].weight == 1.0:
        return f"{'minimize' if terms[0].minimize else 'maximize'} {terms[0].metric}"
    parts = [f"{'+' if t.minimize else '-'} {'' if t.weight == 1 else f'{t.weight:g}*'}{t.metric}" for t in terms]
    return "minimize " + " ".join(parts).removeprefix("+ ")


class SearchObjective(ObjectiveTerm):
    """What a search optimizes: a metric of one model of an `evaluate` step that evaluates the variants."""

    evaluate: StepName = Field(description="The evaluate step whose metrics score each trial.")


class Search(StrictModel):
    """Which combinations of a `matrix:` run."""

    sampler: Literal["grid", "random", "tpe"] = Field(
        "grid", description="grid: every combination in order; random: a seeded sample; tpe: Optuna's TPE, "
        "each trial proposed from the objective of the earlier ones (needs `objective`).")
    max_samples: int | None = Field(None, ge=1, description="Run at most this many combinations (default: all).")
    seed: int = Field(0, description="Seed of the random and tpe samplers: the same seed proposes the same trials.")
    objective: SearchObjective | None = Field(
        None, description="tpe: the metric to optimize, e.g. {evaluate: compare, minimize: latency_p50_ms}.")

    @model_validator(mode="after")
    def _tpe_needs_objective(self) -> "Search":
        if self.sampler == "tpe" and self.objective is None:
            raise ValueError("the tpe sampler proposes each trial from the earlier trials' objective: set "
                             "`objective`, e.g. {evaluate: compare, minimize: latency_p50_ms}")
        return self
