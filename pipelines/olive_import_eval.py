"""Olive evaluators and metric goals -> an `evaluate` step with `goals`, for `pipeline import-olive`.

Olive states goals relative to the input model (`max-degradation`, `percent-min-improvement`, ...) or
as `threshold`s; `evaluate` bounds absolute values, points against the baseline (`accuracy_delta_pt`)
and ratios (`speedup`). A goal with no exact equivalent is listed as not converted, never approximated.
"""

from __future__ import annotations

from typing import Any

from .olive_import_passes import Chain, Emitted

#: Olive accuracy sub-types -> our metric.
_QUALITY = {"accuracy_score": "accuracy", "f1_score": "f1", "precision": "precision", "recall": "recall"}
#: Olive latency sub-types -> our latency goal field (Olive's avg is read as the median p50, noted).
_LATENCY = {"avg": "latency_p50_ms", "mean": "latency_p50_ms", "p50": "latency_p50_ms", "p90": "latency_p90_ms",
            "p99": "latency_p99_ms"}


def _round(value: float) -> float:
    return round(value, 4)


def _quality_goal(metric: str, goal_type: str, value: float) -> dict | None:
    if goal_type == "threshold":
        return {metric: {"min": value}}
    if metric == "accuracy" and goal_type == "max-degradation":
        return {"accuracy_delta_pt": {"min": _round(-value * 100)}}
    if metric == "accuracy" and goal_type == "min-improvement":
        return {"accuracy_delta_pt": {"min": _round(value * 100)}}
    return None


def _latency_goal(field: str, goal_type: str, value: float) -> dict | None:
    if goal_type == "threshold":
        return {field: {"max": value}}
    if goal_type == "percent-min-improvement" and 0 <= value < 100:  # new <= base * (1 - v/100)
        return {"speedup": {"min": _round(1 / (1 - value / 100))}}
    if goal_type == "percent-max-degradation" and value >= 0:  # new <= base * (1 + v/100)
        return {"speedup": {"min": _round(1 / (1 + value / 100))}}
    return None


def _throughput_goal(goal_type: str, value: float) -> dict | None:
    if goal_type == "threshold":
        return {"throughput_sps": {"min": value}}
    if goal_type == "percent-min-improvement":  # one input at a time: throughput is 1 / latency
        return {"speedup": {"min": _round(1 + value / 100)}}
    if goal_type == "percent-max-degradation" and value < 100:
        return {"speedup": {"min": _round(1 - value / 100)}}
    return None


def pick_evaluator(config: dict, engine: dict, chain: Chain) -> tuple[str, dict] | None:
    """The evaluator Olive would use: the engine's (a name or inline), else the only one defined."""
    evaluators = config.get("evaluators") or {}
    chosen = engine.get("evaluator")
    if isinstance(chosen, dict):
        return "engine.evaluator", chosen
    if isinstance(chosen, str):
        if chosen in evaluators:
            return f"evaluators.{chosen}", evaluators[chosen]
        chain.skip("engine.evaluator", f"names {chosen!r}, which is not in evaluators")
        return None
    if len(evaluators) == 1:
        name = next(iter(evaluators))
        return f"evaluators.{name}", evaluators[name]
    for name in evaluators:
        chain.skip(f"evaluators.{name}", "the engine uses no evaluator, so neither does the workflow")
    return None


def convert_evaluator(where: str, evaluator: dict, base: str, chain: Chain, step: str) -> Emitted | None:
    """An Olive evaluator -> an evaluate step comparing the input model (baseline) with the final model."""
    if evaluator.get("type") not in (None, "OliveEvaluator"):
        chain.skip(where, f"evaluator type {evaluator.get('type')}: lm-eval tasks and custom evaluators are not "
                   "measured here (evaluate measures accuracy/F1/latency/size, or perplexity and tokens/s for LMs)")
        return None
    metrics: list[str] = []
    goals: dict[str, Any] = {}
    data_steps: list[str] = []
    priorities = False
    for i, metric in enumerate(evaluator.get("metrics") or []):
        at = f"{where}.metrics[{i}]"
        mtype, name = metric.get("type"), metric.get("name", metric.get("type"))
        data = metric.get("data_config")
        if isinstance(data, str) and data in chain.data:
            data_steps.append(chain.data[data])
        for key in sorted(set(metric) - {"name", "type", "sub_types", "data_config"}):
            chain.skip(f"{at}.{key}", "no equivalent in evaluate")
        if chain.task == "causal-lm":
            chain.skip(at, f"{name} ({mtype}) on a causal LM: evaluate measures LMs by perplexity and tokens/s")
            continue
        for sub in metric.get("sub_types") or [{"name": {"accuracy": "accuracy_score", "latency": "avg"}.get(mtype)}]:
            sub_name = sub.get("name")
            priorities = priorities or "priority" in sub
            goal = sub.get("goal") or {}
            goal_type, value = goal.get("type"), goal.get("value")
            measured, bound = _sub_metric(mtype, sub_name, goal_type, value)
            if measured is None:
                chain.skip(f"{at}.sub_types.{sub_name}", f"{mtype} {sub_name!r} is not measured here")
                continue
            if measured not in metrics:
                metrics.append(measured)
            if goal and bound is None:
                chain.skip(f"{at}.sub_types.{sub_name}.goal", f"{goal_type} {value} on {sub_name}: no exact equivalent "
                           "(goals here are absolute, points of accuracy against the baseline, or speedup ratios)")
            for key, limits in (bound or {}).items():
                goals.setdefault(key, {}).update(limits)
    if priorities:
        chain.skip(f"{where}.metrics.sub_types.priority", "priorities rank candidates in Olive's search; nothing is "
                   "searched here")
    if not metrics:
        return None
    data_step = data_steps[0] if data_steps else next(iter(chain.data.values()), None)
    if data_step is None:
        chain.skip(where, "evaluate needs a dataset and the Olive config has no data config to map")
        return None
    body: dict = {"type": "evaluate", "models": [base] if chain.model == base else [base, chain.model],
                  "data": data_step, "split": "test", "metrics": metrics + ["size"]}
    if goals and chain.model != base:
        body["goals"] = {chain.model: goals}
    elif goals:
        chain.skip(f"{where}.goals", "the goals compare a converted model with the input model, and no pass converted one")
    return Emitted(step, body, f"from {where}: the input model is the baseline, as Olive compares against it",
                   {"split": "load_data splits the data; the held-out test split is measured"})


def _sub_metric(mtype: str, sub: str | None, goal_type: str | None, value: Any) -> tuple[str | None, dict | None]:
    """(our metric, goal bounds or None) for one Olive sub-type."""
    if not isinstance(value, (int, float)):
        goal_type = None
    if mtype == "accuracy" and sub in _QUALITY:
        return _QUALITY[sub], _quality_goal(_QUALITY[sub], goal_type, value) if goal_type else None
    if mtype == "latency" and sub in _LATENCY:
        return "latency", _latency_goal(_LATENCY[sub], goal_type, value) if goal_type else None
    if mtype == "throughput":
        return "latency", _throughput_goal(goal_type, value) if goal_type else None
    if mtype == "size_on_disk":
        return "size", None
    return None, None
