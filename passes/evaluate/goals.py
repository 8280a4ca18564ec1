"""`evaluate` goals: bounds on measured metrics, checked after the measurement, reported, and optionally failing the run.

A goal is `{min, max}` on one metric of one model (schemas/steps/evaluate.py: `goals`, `on_goal_miss`).
The step's results are kept either way: a missed goal is a finding about the models, not a broken step,
so the artifact is cached and `on_goal_miss: fail` is carried out by the runner (exit 1, status
`goals_missed`) from the step's meta (`goals_missed`, `goals_fail`).
"""

from __future__ import annotations

from typing import Any, Callable


#: Relative slack on bounds: differences of measured floats are not exact (0.985 - 0.99 is
#: -0.50000000000000044 points, which meets `min: -0.5`).
TOLERANCE = 1e-9


def miss(value: float, goal: Any) -> float:
    """How far `value` is outside `goal`'s bounds, relative to the bound it misses; 0.0 when it meets them."""
    for bound, gap in ((goal.min, (goal.min or 0) - value), (goal.max, value - (goal.max or 0))):
        if bound is not None and gap > TOLERANCE * max(1.0, abs(bound)):
            return gap / max(abs(bound), 1e-9)
    return 0.0


def check_goals(goals: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per goal: model, metric, min, max, the measured value (None when not measured) and `met`."""
    rows = []
    for model, bounds in goals.items():
        for metric, goal in bounds.items():
            value = results.get(model, {}).get(metric)
            met = value is not None and miss(value, goal) == 0.0
            rows.append({"model": model, "metric": metric, "min": goal.min, "max": goal.max, "value": value, "met": met})
    return rows


def bound_text(row: dict[str, Any]) -> str:
    """`≥ 0.98`, `≤ 0.3` or `0.1 to 0.3`."""
    if row["min"] is not None and row["max"] is not None:
        return f"{row['min']:g} to {row['max']:g}"
    return f"≥ {row['min']:g}" if row["min"] is not None else f"≤ {row['max']:g}"


def value_text(value: Any) -> str:
    return "not measured" if value is None else f"{value:.4g}"


def goals_line(rows: list[dict[str, Any]]) -> str:
    """`goals 4/4 met` or `goals 3/4 met, missed: int8 speedup 3.52 (≥ 4)`."""
    missed = [r for r in rows if not r["met"]]
    line = f"goals {len(rows) - len(missed)}/{len(rows)} met"
    if missed:
        line += ", missed: " + "; ".join(f"{r['model']} {r['metric']} {value_text(r['value'])} ({bound_text(r)})" for r in missed)
    return line


def with_goals(summary: str, rows: list[dict[str, Any]]) -> str:
    """A step summary with the goals line after it (unchanged without goals)."""
    return f"{summary}; {goals_line(rows)}" if rows else summary


def apply_goals(cfg: Any, results: dict[str, dict[str, Any]], log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Check the step's goals: (the rows for metrics.json and the report, the fields for the step's meta)."""
    if not cfg.goals:
        return [], {}
    rows = check_goals(cfg.goals, results)
    missed = sum(not r["met"] for r in rows)
    log(goals_line(rows) + (f" (on_goal_miss: {cfg.on_goal_miss})" if missed else ""))
    return rows, {"goals": rows, "goals_missed": missed, "goals_fail": cfg.on_goal_miss == "fail"}


def goals_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The report's goals table: header row first."""
    table = [["model", "metric", "goal", "measured", "met"]]
    table += [[r["model"], r["metric"], bound_text(r), value_text(r["value"]), "yes" if r["met"] else "NO"] for r in rows]
    return table
