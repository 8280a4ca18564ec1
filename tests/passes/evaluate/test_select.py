"""`select`'s rule without any model: scores, constraints, ties, the closest miss and the Pareto front."""

from __future__ import annotations

from passes.evaluate.choose import check, closest, missed_text, rank
from passes.evaluate.select import pareto_front
from schemas.steps.evaluate import Goal
from schemas.sweep import ObjectiveTerm, objective_text

RESULTS = {
    "fp32": {"accuracy": 0.99, "accuracy_delta_pt": 0.0, "latency_p50_ms": 9.0, "size_mb": 90.0},
    "int8": {"accuracy": 0.985, "accuracy_delta_pt": -0.5000000000000004, "latency_p50_ms": 3.0, "size_mb": 23.0},
    "int4": {"accuracy": 0.97, "accuracy_delta_pt": -2.0, "latency_p50_ms": 2.0, "size_mb": 15.0},
    "qdq": {"accuracy": 0.99, "accuracy_delta_pt": 0.0, "latency_p50_ms": 3.0, "size_mb": 23.0},
}
FASTEST = [ObjectiveTerm(minimize="latency_p50_ms")]


def chosen(results, names, terms, constraints=None) -> str | None:
    return next((c.name for c in rank(results, names, terms, constraints or {}) if c.rank == 1), None)


def test_the_objective_under_constraints_picks_and_float_noise_at_a_bound_still_meets_it():
    names = list(RESULTS)
    assert chosen(RESULTS, names, FASTEST) == "int4"
    # int8's -0.5000000000000004 points meets min -0.5 (a difference of floats), int4's -2 does not
    assert chosen(RESULTS, names, FASTEST, {"accuracy_delta_pt": Goal(min=-0.5)}) in ("int8", "qdq")


def test_ties_go_to_the_smaller_model_then_to_the_earlier_candidate():
    names = list(RESULTS)
    assert chosen(RESULTS, names, [ObjectiveTerm(maximize="accuracy")]) == "qdq"  # ties fp32, 23 MB < 90 MB
    # int8 and qdq tie on latency and size: the earlier in the candidates' order wins, whichever it is
    assert chosen(RESULTS, ["qdq", "int8"], FASTEST, {"accuracy_delta_pt": Goal(min=-0.5)}) == "qdq"
    assert chosen(RESULTS, ["int8", "qdq"], FASTEST, {"accuracy_delta_pt": Goal(min=-0.5)}) == "int8"


def test_a_weighted_objective_sums_signed_weighted_terms():
    terms = [ObjectiveTerm(minimize="latency_p50_ms"), ObjectiveTerm(maximize="accuracy", weight=1000)]
    # fp32: 9 - 990 = -981; int8: 3 - 985 = -982; int4: 2 - 970; qdq: 3 - 990 = -987
    assert chosen(RESULTS, list(RESULTS), terms) == "qdq"
    assert objective_text(terms) == "minimize latency_p50_ms - 1000*accuracy"


def test_no_candidate_meeting_the_constraints_names_the_closest_and_what_it_missed():
    constraints = {"accuracy_delta_pt": Goal(min=-0.5), "size_mb": Goal(max=20)}
    ranked = rank(RESULTS, list(RESULTS), FASTEST, constraints)
    assert not any(c.rank for c in ranked)
    near = closest(ranked)
    assert near.name == "int8"  # 23 MB is 15% over 20 MB; int4 misses accuracy by 1.5 points (300%)
    assert missed_text(near) == "size_mb 23 (≤ 20)"
    missed, _ = check({"accuracy": 0.9}, {"size_mb": Goal(max=20)})
    assert missed[0]["value"] is None  # not measured counts as missed


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    points = [("fp32", 9, 0.99), ("int8", 3, 0.985), ("int4", 2, 0.97), ("qdq", 3, 0.99), ("bad", 5, 0.96)]
    assert sorted(pareto_front(points)) == ["int4", "qdq"]


def test_goals_and_select_share_one_bound_rule_with_float_tolerance():
    """0.985 - 0.99 in points is -0.50000000000000044: it meets `min: -0.5` in evaluate's goals and in select."""
    from types import SimpleNamespace

    from passes.evaluate.goals import check_goals

    goal = SimpleNamespace(min=-0.5, max=None)
    value = (0.985 - 0.99) * 100
    assert value < -0.5
    assert check_goals({"m": {"delta": goal}}, {"m": {"delta": value}})[0]["met"]
    assert check({"delta": value}, {"delta": goal}) == ([], 0.0)
    assert not check_goals({"m": {"delta": goal}}, {"m": {"delta": -0.6}})[0]["met"]
    assert check({"delta": -0.6}, {"delta": goal})[1] > 0
