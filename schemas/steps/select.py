"""`select`: pick one model from an `evaluate` step's results by an objective under constraints."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from ..base import HfModel, Metrics, OnnxModel, Ref, StepConfig, step_output_kind
from ..registry import register_step
from ..sweep import ObjectiveTerm
from .evaluate import GOAL_METRICS, Goal


@register_step
class SelectConfig(StepConfig):
    """Pick the best model an evaluate step measured (objective, constraints); its artifact is that model's."""

    type: Literal["select"] = Field(description="Pick one model from an evaluate step's results.")
    evaluate: Ref[Metrics] = Field(description="The evaluate step whose metrics decide.")
    candidates: list[Ref[HfModel, OnnxModel]] | None = Field(
        None, min_length=1, description="The models to choose from (a matrix step names all its variants); "
        "default: every model of the evaluate step, the baseline included.")
    objective: ObjectiveTerm | list[ObjectiveTerm] = Field(
        description="What is best: {minimize: latency_p50_ms}, {maximize: accuracy}, or a weighted list "
        "[{minimize: latency_p50_ms, weight: 1}, {maximize: accuracy, weight: 100}] (the sum of weight x value, "
        "maximized terms counted negative, is minimized).")
    constraints: dict[str, Goal] = Field(
        default_factory=dict, description="Bounds a candidate must meet, written as evaluate goals: "
        "{accuracy_delta_pt: {min: -0.5}, size_ratio: {max: 0.3}} (deltas and ratios are against the evaluate "
        "step's baseline, its first model).")

    output_kind: ClassVar[str] = "onnx_model"
    #: The kind of the candidates (checked to be one kind); what this step's artifact is.
    _kind: str = PrivateAttr("onnx_model")
    #: The evaluate step's models in its order: its results are matched to them by position.
    _evaluated: list[str] = PrivateAttr(default_factory=list)

    @field_validator("constraints")
    @classmethod
    def _known_metrics(cls, constraints: dict[str, Goal]) -> dict[str, Goal]:
        for metric in constraints:
            if metric not in GOAL_METRICS:
                raise ValueError(f"no metric {metric!r}; constraints can bound {', '.join(GOAL_METRICS)}")
        return constraints

    def produced_kind(self) -> str:
        """The candidates' kind (an ONNX model or a Hugging Face folder): the chosen one is this step's output."""
        return self._kind

    @property
    def evaluated(self) -> list[str]:
        """The evaluate step's models, in its order (filled from the workflow by `with_defaults_from`)."""
        return list(self._evaluated)

    def with_defaults_from(self, steps: dict[str, StepConfig]) -> StepConfig:
        """Candidates default to the evaluate step's models; remember that step's model order and their kind."""
        source = steps.get(self.evaluate)
        models = list(getattr(source, "models", None) or [])
        new = self if self.candidates is not None or not models else self.model_copy(update={"candidates": models})
        kinds = {step_output_kind(steps[c]) for c in new.candidates or [] if c in steps}
        new._evaluated = models
        new._kind = kinds.pop() if len(kinds) == 1 else "onnx_model"
        return new

    def step_issues(self, steps: dict[str, StepConfig]) -> list[tuple[tuple, str, str | None]]:
        """The evaluate step must evaluate every candidate, measure what is read, and the candidates be one kind."""
        source = steps.get(self.evaluate)
        if source is None or not isinstance(getattr(source, "models", None), list):
            return []  # an unknown step or a wrong kind is reported with the references
        out: list[tuple[tuple, str, str | None]] = []
        models = list(source.models)
        for i, cand in enumerate(self.candidates or []):
            if cand not in models:
                out.append((("candidates", i), f"{self.evaluate!r} does not evaluate {cand!r}",
                            f"add it to {self.evaluate}'s `models`"))
        metrics = [t.metric for t in (self.objective if isinstance(self.objective, list) else [self.objective])]
        measured = getattr(source, "metrics", None) or []
        for metric in metrics + list(self.constraints):
            if GOAL_METRICS[metric] not in measured:
                where = ("constraints", metric) if metric in self.constraints else ("objective",)
                out.append((where, f"{self.evaluate!r} does not measure {metric}",
                            f"add `{GOAL_METRICS[metric]}` to its `metrics`"))
        kinds: dict[str, Any] = {c: step_output_kind(steps[c]) for c in self.candidates or [] if c in steps}
        if len(set(kinds.values())) > 1:
            listed = ", ".join(f"{c} ({k})" for c, k in kinds.items())
            out.append((("candidates",), f"the candidates are of different kinds ({listed}); the chosen one is "
                        "this step's output, so they must be one kind", "list the ONNX models in `candidates`"))
        return out
