"""`matrix:` sweeps: one step per combination of listed field values, and fan-out downstream.

Runs on the loaded data, after `--set` overrides and before each step is validated, so every variant is
an ordinary step: validated by its config class (a bad combination is reported at the matrix's line),
keyed, cached, planned and run like any other. Names: `q[method=static_int8,per_channel=false]`.

- A step that references a matrix step through a single reference (`model: q`) becomes a matrix too:
  one variant per variant of `q`, with the same coordinates in its name. Two fanned references are
  combined, keeping only variants whose shared coordinates agree (a diamond does not multiply).
- A list reference (`models: [onnx, q]`) names every variant of `q` in place: one `evaluate` times them
  all in one interleaved run.
- `search:` picks which combinations exist: grid (in order), random (a seeded permutation: the first N
  are the same whatever `max_samples`), or tpe (the trials `runner.search` asks Optuna for).
"""

from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas import step_types
from schemas.errors import Issue
from schemas.suggest import did_you_mean
from schemas.sweep import MATRIX_KEY, MAX_VARIANTS, SEARCH_KEY, Search

from .yaml_loader import Positions

#: A variant's coordinates: ((matrix step, field), value) pairs, in the order they name it.
Coord = tuple[tuple[tuple[str, str], Any], ...]


@dataclass
class SearchPlan:
    """A matrix step's search: its settings, the whole product, and the combinations in this DAG."""

    step: str
    search: Search
    fields: list[str]
    product: list[dict[str, Any]]
    chosen: list[dict[str, Any]]


@dataclass
class Expansion:
    """What the expansion did: matrix/fanned step -> its variants, the searches, and the problems found."""

    variants: dict[str, list[str]] = field(default_factory=dict)
    searches: dict[str, SearchPlan] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)


def value_text(value: Any) -> str:
    """A value as it appears in a variant's name: YAML-like (`true`, `null`), lists joined with `+`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "+".join(value_text(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}:{value_text(v)}" for k, v in value.items())
    return str(value).replace("[", "(").replace("]", ")").replace(",", ";")


def variant_name(base: str, coord: Coord) -> str:
    """`q[method=static_int8,per_channel=false]`; a field swept by two steps is prefixed with its step."""
    counts: dict[str, set[str]] = {}
    for (origin, fld), _ in coord:
        counts.setdefault(fld, set()).add(origin)
    parts = [f"{origin + '.' if len(counts[fld]) > 1 else ''}{fld}={value_text(v)}" for (origin, fld), v in coord]
    return f"{base}[{','.join(parts)}]"


def expand_matrices(data: dict, positions: Positions, trials: dict[str, list[dict]] | None = None) -> Expansion:
    """Expand every `matrix:` in `data["steps"]` in place (and copy positions to the variants)."""
    out = Expansion()
    raw = data.get("steps")
    if not isinstance(raw, dict) or not any(isinstance(b, dict) and MATRIX_KEY in b for b in raw.values()):
        for name, body in (raw or {}).items() if isinstance(raw, dict) else ():
            if isinstance(body, dict) and SEARCH_KEY in body:
                out.issues.append(positions.issue(("steps", name, SEARCH_KEY), "`search` applies to a `matrix`: add one",
                                                  prefer_key=True))
        return out
    types = step_types()
    refs = {name: _ref_fields(body, types) for name, body in raw.items()}
    done: dict[str, list[tuple[str, Coord]]] = {}  # step -> its variants (name, coordinates)
    new_steps: dict[str, Any] = {}
    dropped: set[str] = set()
    for name in _order(raw, refs):
        body = raw[name]
        if not isinstance(body, dict) or not isinstance(name, str):
            continue
        if "[" in name or "]" in name:
            out.issues.append(positions.issue(("steps", name), f"invalid step name {name!r}: `[` and `]` name matrix variants",
                                              "use letters, digits, `_` and `-`", prefer_key=True))
            dropped.add(name)  # reported here; kept out so it cannot pass for (or replace) a variant
            continue
        own = _own_coords(name, body, types, positions, out, (trials or {}).get(name))
        if own is None:  # the matrix is reported; the rest of the step is still validated as one step
            own = [{}]
            body = {k: v for k, v in body.items() if k not in (MATRIX_KEY, SEARCH_KEY)}
        combos = _combine(name, body, refs[name], own, done)
        if len(combos) > MAX_VARIANTS:
            out.issues.append(positions.issue(("steps", name), f"{len(combos)} variants: more than {MAX_VARIANTS}",
                                              "list fewer values, or add `search: {max_samples: N}`"))
            continue
        fanned = any(c for _, c in combos)
        done[name] = [(variant_name(name, coord) if fanned else name, coord) for _, coord in combos]
        if fanned:
            out.variants[name] = [v for v, _ in done[name]]
        for (assigned, coord), (vname, _) in zip(combos, done[name]):
            new_steps[vname] = _variant_body(name, vname, body, assigned, coord, refs[name], done, positions)
    # keep the file's order: each step (or its variants) where it was written
    ordered = {}
    for name in raw:
        for vname in out.variants.get(name, [name]):
            if vname in new_steps:
                ordered[vname] = new_steps[vname]
            elif vname == name and name not in done and name not in dropped:
                ordered[name] = raw[name]  # left as written: its own problems are reported by validation
    data["steps"] = ordered
    return out


def _ref_fields(body: Any, types: dict) -> dict[str, bool]:
    """A raw step's reference fields -> is_list (nothing for an unknown type: validation reports it)."""
    cls = types.get(body.get("type")) if isinstance(body, dict) and isinstance(body.get("type"), str) else None
    return {f: is_list for f, (_, is_list) in cls.reference_fields().items()} if cls else {}


def _named(body: dict, fld: str, is_list: bool) -> list[str]:
    value = body.get(fld)
    if is_list:
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    return [value] if isinstance(value, str) else []


def _order(raw: dict, refs: dict[str, dict[str, bool]]) -> list:
    """Producers before consumers (depth-first; a cycle is left to validation, which names it)."""
    seen: dict[Any, bool] = {}
    order: list = []

    def visit(name: Any) -> None:
        if name in seen:
            return
        seen[name] = False
        body = raw[name]
        for fld, is_list in refs.get(name, {}).items():
            for target in _named(body, fld, is_list) if isinstance(body, dict) else []:
                if target in raw and target != name:
                    visit(target)
        seen[name] = True
        order.append(name)

    for name in raw:
        visit(name)
    return order


def _own_coords(name: str, body: dict, types: dict, positions: Positions, out: Expansion,
                trials: list[dict] | None) -> list[dict] | None:
    """The combinations of the step's own matrix ([{}] without one); None when the matrix is invalid."""
    path = ("steps", name)
    matrix, search_raw = body.get(MATRIX_KEY), body.get(SEARCH_KEY)
    if matrix is None:
        if search_raw is not None:
            out.issues.append(positions.issue(path + (SEARCH_KEY,), "`search` applies to a `matrix`: add one", prefer_key=True))
            return None
        return [{}]
    cls = types.get(body.get("type")) if isinstance(body.get("type"), str) else None
    if not isinstance(matrix, dict) or not matrix:
        out.issues.append(positions.issue(path + (MATRIX_KEY,), "`matrix` must map fields to lists of values, "
                                          "e.g. {method: [dynamic_int8, static_int8]}"))
        return None
    ok = cls is not None  # an unknown type is reported by validation
    for fld, values in matrix.items():
        where = path + (MATRIX_KEY, fld)
        if cls is not None and (fld not in cls.model_fields or fld == "type"):
            fields = [f for f in cls.model_fields if f != "type"]
            out.issues.append(positions.issue(where, f"{body.get('type')} has no field {fld!r} to sweep",
                                              did_you_mean(str(fld), fields) or f"fields: {', '.join(fields)}", prefer_key=True))
            ok = False
        elif fld in body:
            out.issues.append(positions.issue(where, f"{fld!r} is set on the step and swept by its matrix",
                                              f"remove `{fld}: {value_text(body[fld])}` or its matrix entry", prefer_key=True))
            ok = False
        if not isinstance(values, list) or not values:
            out.issues.append(positions.issue(where, "a matrix entry is a non-empty list of values"))
            ok = False
        elif len({value_text(v) for v in values}) != len(values):
            out.issues.append(positions.issue(where, f"{fld!r} lists a value twice"))
            ok = False
    search = Search()
    if search_raw is not None:
        try:
            search = Search.model_validate(search_raw)
        except ValidationError as exc:
            out.issues += _search_errors(exc, path + (SEARCH_KEY,), positions)
            ok = False
    if not ok:
        return None
    fields = list(matrix)
    product = [dict(zip(fields, values)) for values in itertools.product(*matrix.values())]
    chosen = _choose(search, product, trials)
    out.searches[name] = SearchPlan(name, search, fields, product, chosen)
    return chosen


def _search_errors(exc: ValidationError, prefix: tuple, positions: Positions) -> list[Issue]:
    """`search:`'s own errors at their place (its fields are few and flat: the loc is the path)."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or p.isidentifier())
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}"
        out.append(positions.issue(prefix + loc, message, did_you_mean(str(loc[-1]), Search.model_fields)
                                   if err["type"] == "extra_forbidden" else None, prefer_key=err["type"] == "extra_forbidden"))
    return out


def _choose(search: Search, product: list[dict], trials: list[dict] | None) -> list[dict]:
    """The combinations a search runs: grid in order, random as a seeded permutation, tpe as told."""
    n = min(search.max_samples or len(product), len(product))
    if search.sampler == "random":
        order = list(range(len(product)))
        random.Random(search.seed).shuffle(order)  # the whole permutation: raising N keeps the first N
        return [product[i] for i in order[:n]]
    if search.sampler == "tpe":
        return product if trials is None else [t for t in trials if t in product]
    return product[:n]  # grid; tpe before its trials are known: every combination, to validate them all


def _combine(name: str, body: dict, refs: dict[str, bool], own: list[dict],
             done: dict[str, list[tuple[str, Coord]]]) -> list[tuple[dict, Coord]]:
    """Every (field assignments, coordinates) of the step: own combinations x fanned single references."""
    combos: list[tuple[dict, Coord]] = [(dict(c), tuple(((name, f), v) for f, v in c.items())) for c in own]
    for fld, is_list in refs.items():
        target = body.get(fld)
        if is_list or not isinstance(target, str) or not _fanned(done, target):
            continue
        grown = []
        for (assigned, coord), (vname, vcoord) in itertools.product(combos, done[target]):
            merged = _merge(vcoord, coord)
            if merged is not None:
                grown.append(({**assigned, fld: vname}, merged))
        combos = grown
    return combos


def _fanned(done: dict[str, list[tuple[str, Coord]]], target: str) -> bool:
    return any(coord for _, coord in done.get(target, []))


def _merge(upstream: Coord, own: Coord) -> Coord | None:
    """Upstream coordinates then own; None when they disagree on a shared one."""
    merged = dict(upstream)
    for key, value in own:
        if key in merged and merged[key] != value:
            return None
        merged[key] = value
    return tuple(merged.items())


def _variant_body(base: str, vname: str, body: dict, assigned: dict, coord: Coord, refs: dict[str, bool],
                  done: dict[str, list[tuple[str, Coord]]], positions: Positions) -> dict:
    """The step config of one variant; its positions point at the base step (own swept values: the matrix)."""
    new = {k: copy.deepcopy(v) for k, v in body.items() if k not in (MATRIX_KEY, SEARCH_KEY)}
    new.update(assigned)
    if vname != base:
        _copy_positions(positions, ("steps", base), ("steps", vname))
        if MATRIX_KEY in body:  # a rejected combination is reported at the matrix's line
            for table in (positions.values, positions.keys):
                where = table.get(("steps", base, MATRIX_KEY))
                if where:
                    table[("steps", vname)] = where
        for fld, value in assigned.items():
            if fld in body.get(MATRIX_KEY, {}) and fld not in refs:
                idx = body[MATRIX_KEY][fld].index(value)
                for table in (positions.values, positions.keys):
                    where = positions.values.get(("steps", base, MATRIX_KEY, fld, idx)) or table.get(("steps", base, MATRIX_KEY, fld))
                    if where:
                        table[("steps", vname, fld)] = where
    for fld, is_list in refs.items():
        items = new.get(fld)
        if not is_list or not isinstance(items, list):
            continue
        expanded, where = [], []
        for i, item in enumerate(items):
            options = [v for v, c in done.get(item, []) if _merge(c, coord) is not None] if isinstance(item, str) \
                and _fanned(done, item) else [item]
            expanded += options
            where += [i] * len(options)
        new[fld] = expanded
        for j, i in enumerate(where):
            pos = positions.values.get(("steps", base, fld, i))
            if pos:
                positions.values[("steps", vname, fld, j)] = pos
    return new


def _copy_positions(positions: Positions, src: tuple, dst: tuple) -> None:
    n = len(src)
    for table in (positions.values, positions.keys, positions.origins):
        for path, where in list(table.items()):
            if path[:n] == src:
                table.setdefault(dst + path[n:], where)


def collapse_repeats(issues: list[Issue]) -> list[Issue]:
    """One issue per place and message: a bad matrix value fails every combination that holds it."""
    seen: set[tuple] = set()
    out = []
    for issue in issues:
        key = (issue.where, issue.message, issue.path[:1], _base(issue.step))
        if issue.line is not None and issue.step and "[" in issue.step:
            if key in seen:
                continue
            seen.add(key)
        out.append(issue)
    return out


def _base(step: str | None) -> str | None:
    return step.split("[", 1)[0] if step else step


def expand_names(names: list[str] | tuple[str, ...], variants: dict[str, list[str]]) -> list[str]:
    """`--only q` / `--force q` on a matrix step means every variant of it."""
    return [v for n in names for v in variants.get(n, [n])]


def search_issues(expansion: Expansion, steps: dict, positions: Positions) -> list[Issue]:
    """A search's objective must name an evaluate step that measures its metric and evaluates the variants."""
    from schemas.steps.evaluate import GOAL_METRICS

    issues = []
    for name, plan in expansion.searches.items():
        objective = plan.search.objective
        if objective is None:
            continue
        where = ("steps", name, SEARCH_KEY, "objective")
        target = steps.get(objective.evaluate)
        if target is None or not isinstance(getattr(target, "models", None), list):
            what = "is not a step" if target is None else f"is a {target.step_type()} step"
            issues.append(positions.issue(where + ("evaluate",), f"{objective.evaluate!r} {what}: the objective is read "
                                          "from an evaluate step's metrics", did_you_mean(objective.evaluate, steps)))
            continue
        if GOAL_METRICS[objective.metric] not in (getattr(target, "metrics", None) or []):
            issues.append(positions.issue(where, f"{objective.evaluate!r} does not measure {objective.metric}",
                                          f"add `{GOAL_METRICS[objective.metric]}` to its `metrics`"))
        downstream = set(expansion.variants.get(name, []))
        if plan.chosen and not any(_base(m) in _fanned_from(expansion, name) or m in downstream for m in target.models):
            issues.append(positions.issue(where + ("evaluate",), f"{objective.evaluate!r} does not evaluate {name!r}'s "
                                          "variants (nor steps fanned out from them)", f"add {name!r} to its `models`"))
    return issues


def _fanned_from(expansion: Expansion, name: str) -> set[str]:
    """`name` and the steps whose variants carry its coordinates (their names hold its fields)."""
    swept = {f"{f}=" for f in expansion.searches[name].fields}
    return {base for base, names in expansion.variants.items()
            if base == name or any(s in names[0] for s in swept)}
