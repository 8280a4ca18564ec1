"""What `select` decides: every candidate scored by the objective, checked against the constraints, ranked.

Pure functions over an evaluate step's results ({model: {metric: value}}), so the rule is tested without
any model. Ties (equal scores) go to the smaller model (`size_mb`), then to the earlier candidate in the
`candidates` order (the evaluate step's order by default): the same results always pick the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from passes.evaluate.goals import bound_text, miss, value_text


@dataclass
class Candidate:
    """One model's standing: its metrics, score (lower is better), the constraints it missed, its rank."""

    name: str
    metrics: dict[str, Any]
    score: float | None
    missed: list[dict[str, Any]] = field(default_factory=list)
    distance: float = 0.0  # how far outside the constraints (relative); 0 when all are met
    rank: int | None = None  # 1 = chosen; None when it misses a constraint

    @property
    def eligible(self) -> bool:
        """Meets every constraint and has every metric the objective reads."""
        return not self.missed and self.score is not None


def score(metrics: dict[str, Any], terms: list[Any]) -> float | None:
    """Σ sign x weight x value (maximized terms negative): lower is better; None when a metric is missing."""
    total = 0.0
    for term in terms:
        value = metrics.get(term.metric)
        if value is None:
            return None
        total += term.sign * term.weight * float(value)
    return total


def check(metrics: dict[str, Any], constraints: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """The constraints a model misses (as goal rows) and how far outside them it is, relative to each bound."""
    missed, distance = [], 0.0
    for metric, goal in constraints.items():
        value = metrics.get(metric)
        row = {"metric": metric, "min": goal.min, "max": goal.max, "value": value}
        if value is None:
            missed.append(row)
            distance += 1.0
            continue
        gap = miss(value, goal)  # the same rule (and float tolerance) as evaluate's goals
        if gap:
            missed.append(row)
            distance += gap
    return missed, distance


def rank(results: dict[str, dict[str, Any]], names: list[str], terms: list[Any],
         constraints: dict[str, Any]) -> list[Candidate]:
    """Every candidate in `names` order, the eligible ones ranked (1 = the choice; ties as the module says)."""
    out = []
    for name in names:
        metrics = results.get(name, {})
        missed, distance = check(metrics, constraints)
        out.append(Candidate(name, metrics, score(metrics, terms), missed, distance))
    eligible = [c for c in out if c.eligible]
    order = {c.name: i for i, c in enumerate(out)}
    eligible.sort(key=lambda c: (c.score, c.metrics.get("size_mb", float("inf")), order[c.name]))
    for i, c in enumerate(eligible, 1):
        c.rank = i
    return out


def missed_text(candidate: Candidate) -> str:
    """`accuracy_delta_pt -0.71 (≥ -0.5), size_ratio not measured (≤ 0.3)`."""
    return ", ".join(f"{r['metric']} {value_text(r['value'])} ({bound_text(r)})" for r in candidate.missed)


def closest(candidates: list[Candidate]) -> Candidate:
    """The candidate nearest to meeting the constraints (smallest relative distance, then the better score)."""
    return min(candidates, key=lambda c: (c.distance, c.score if c.score is not None else float("inf")))
