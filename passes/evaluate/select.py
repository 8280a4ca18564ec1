"""The `select` pass: pick one model from an evaluate step's results; its artifact is that model's.

The chosen model's folder is copied as it is (so `outputs: {model: best}` deploys it and its
`inference.py` runs), with `selection/` beside the model files: `selection.json`, `report.md`,
`report.html` and `pareto.png` (accuracy vs latency, and vs size, the Pareto front drawn and the choice
marked). The rule (score, constraints, ties) is `passes.evaluate.choose`.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from schemas.steps.select import SelectConfig
from schemas.sweep import objective_terms, objective_text

from passes.base import Artifact, Pass, PassError
from passes.evaluate.choose import Candidate, closest, missed_text, rank
from passes.evaluate.goals import bound_text
from passes.evaluate.report import _html_table, _md, _page
from passes.registry import register_pass

#: Where the selection's report lives inside the artifact (the runner copies it to reports/<step>/).
REPORT_DIR = "selection"
PARETO_PNG = "pareto.png"


@register_pass
class Select(Pass[SelectConfig]):
    """Rank the candidates by the objective under the constraints; copy the winner's artifact."""

    config_class = SelectConfig
    version = 1
    packages = ("matplotlib",)

    def run(self, inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """Match the evaluate step's results to the candidates, rank them, write the winner and the report."""
        cfg: SelectConfig = self.config
        evaluation: Artifact = inputs["evaluate"]
        models: list[Artifact] = list(inputs["candidates"])
        names = list(cfg.candidates or [])
        results = _results_by_name(evaluation, cfg.evaluated)
        baseline = cfg.evaluated[0] if cfg.evaluated else None
        terms = objective_terms(cfg.objective)
        ranked = rank(results, names, terms, cfg.constraints)
        winners = [c for c in ranked if c.rank == 1]
        if not winners:
            raise PassError(_no_candidate(ranked, cfg))
        chosen = winners[0]
        art = models[names.index(chosen.name)]
        shutil.copytree(art.path, ctx.out_dir, dirs_exist_ok=True)
        if (ctx.out_dir / REPORT_DIR).exists():  # a model selected from an earlier selection: keep only ours
            shutil.rmtree(ctx.out_dir / REPORT_DIR)
        report = ctx.out_dir / REPORT_DIR
        report.mkdir()
        why = _why(chosen, ranked, cfg)
        doc = {"selected": chosen.name, "objective": objective_text(cfg.objective), "why": why, "baseline": baseline,
               "constraints": {m: g.model_dump() for m, g in cfg.constraints.items()},
               "candidates": [_row_json(c) for c in ranked]}
        (report / "selection.json").write_text(json.dumps(doc, indent=2) + "\n")
        chart = _pareto(report, ranked, chosen.name)
        _write_report(report, ctx.step, doc, ranked, cfg, chart)
        ctx.log(why)
        numbers = {k: v for k, v in chosen.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {**art.meta, "summary": f"selected {chosen.name}: {why.split(': ', 1)[-1]}", "selected": chosen.name,
                "metrics": numbers, "report_dir": REPORT_DIR}


def _results_by_name(evaluation: Artifact, evaluated: list[str]) -> dict[str, dict[str, Any]]:
    """The evaluate step's results under this workflow's names.

    An evaluate artifact found in the cache may have been built by a workflow that named the same models
    differently (keys do not depend on names): its results are then matched by position, which its key fixes.
    """
    results = evaluation.meta.get("metrics") or {}
    if not isinstance(results, dict) or not results:
        raise PassError(f"{evaluation.step!r} recorded no metrics: select reads an evaluate step's results")
    if set(evaluated) <= set(results):
        return results
    if len(results) == len(evaluated):
        return dict(zip(evaluated, results.values()))
    raise PassError(f"the results of {evaluation.step!r} ({', '.join(results)}) do not match its models "
                    f"({', '.join(evaluated)}): run it again with --force {evaluation.step}")


def _why(chosen: Candidate, ranked: list[Candidate], cfg: SelectConfig) -> str:
    eligible = sum(c.rank is not None for c in ranked)
    bounds = ", ".join(f"{m} {bound_text({'min': g.min, 'max': g.max})}" for m, g in cfg.constraints.items())
    within = f" among the {eligible} of {len(ranked)} candidates with {bounds}" if bounds else f" among {len(ranked)} candidates"
    terms = objective_terms(cfg.objective)
    if len(terms) == 1:
        best = f"{'lowest' if terms[0].minimize else 'highest'} {terms[0].metric} ({chosen.metrics[terms[0].metric]:.4g})"
    else:
        best = f"lowest score {chosen.score:.4g} ({objective_text(cfg.objective)})"
    tie = [c for c in ranked if c.rank and c.rank > 1 and c.score == chosen.score]
    tied = f" (tied with {', '.join(c.name for c in tie)}: the smaller model, then the earlier candidate, wins)" if tie else ""
    return f"{chosen.name}: {best}{within}{tied}"


def _no_candidate(ranked: list[Candidate], cfg: SelectConfig) -> str:
    bounds = ", ".join(f"{m} {bound_text({'min': g.min, 'max': g.max})}" for m, g in cfg.constraints.items())
    unscored = [c.name for c in ranked if c.score is None]
    if not any(c.missed for c in ranked) and unscored:
        return (f"no candidate has the objective's metrics ({objective_text(cfg.objective)}); not measured for: "
                f"{', '.join(unscored)}: measure them in {cfg.evaluate!r}")
    near = closest(ranked)
    return (f"no candidate meets the constraints ({bounds}); the closest is {near.name}, which missed "
            f"{missed_text(near) or 'the objective metrics'}: relax the constraints or add candidates")


def _row_json(c: Candidate) -> dict[str, Any]:
    return {"name": c.name, "score": c.score, "rank": c.rank, "eligible": c.eligible, "missed": c.missed,
            "metrics": {k: v for k, v in c.metrics.items() if isinstance(v, (int, float, str)) and k != "confusion_matrix"}}


def _columns(cfg: SelectConfig) -> list[str]:
    """The metrics the table shows: the objective's and the constraints', then the usual comparison ones."""
    wanted = [t.metric for t in objective_terms(cfg.objective)] + list(cfg.constraints)
    wanted += ["accuracy", "accuracy_delta_pt", "latency_p50_ms", "speedup", "size_mb", "size_ratio"]
    return list(dict.fromkeys(wanted))


def _table(ranked: list[Candidate], cfg: SelectConfig) -> list[list[str]]:
    cols = [c for c in _columns(cfg) if any(c in r.metrics for r in ranked)]
    rows = [["candidate", *cols, "score", "constraints", "rank"]]
    for c in ranked:
        cells = [f"{c.metrics[k]:.4g}" if isinstance(c.metrics.get(k), (int, float)) else "–" for k in cols]
        verdict = "met" if not c.missed else "missed: " + missed_text(c)
        rows.append([f"**{c.name}**" if c.rank == 1 else c.name, *cells,
                     "–" if c.score is None else f"{c.score:.4g}", verdict, str(c.rank or "–")])
    return rows


def _write_report(folder: Path, step: str, doc: dict[str, Any], ranked: list[Candidate], cfg: SelectConfig,
                  chart: str | None) -> None:
    constraints = [f"- {m}: {bound_text({'min': g.min, 'max': g.max})}" for m, g in cfg.constraints.items()] or ["- none"]
    md = [f"# Selection: {step}", "", f"Chose **{doc['selected']}** ({doc['why'].split(': ', 1)[-1]}).", "",
          f"Objective: {doc['objective']} (over the results of `{cfg.evaluate}`, baseline {doc['baseline']}). "
          "Ties go to the smaller model, then the earlier candidate.", "", "Constraints:", *constraints, "",
          _md(_table(ranked, cfg))]
    if chart:
        md += ["", f"![Pareto front: accuracy vs latency and size]({chart})"]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    body = [f"<h1>Selection: {html.escape(step)}</h1>", f"<p>{html.escape(doc['why'])}</p>",
            f"<p>Objective: {html.escape(doc['objective'])}</p><ul>",
            *[f"<li>{html.escape(c[2:])}</li>" for c in constraints], "</ul>",
            _html_table([[cell.strip('*') for cell in row] for row in _table(ranked, cfg)])]
    if chart:
        body.append(f"<img src='{chart}' alt='Pareto front'>")
    (folder / "report.html").write_text(_page(step, body))


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both: lower x (latency, size) and higher y (accuracy)."""
    return [n for n, x, y in points
            if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for _, x2, y2 in points)]


def _pareto(folder: Path, ranked: list[Candidate], chosen: str) -> str | None:
    """accuracy vs p50 latency, and vs size: every candidate (grey when it misses a constraint), the front, the choice."""
    panels = [(x, label) for x, label in (("latency_p50_ms", "p50 latency (ms)"), ("size_mb", "size (MB)"))
              if any(x in c.metrics and "accuracy" in c.metrics for c in ranked)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # points are numbered (variant names are long and overlap); the legend below says which is which
    number = {c.name: i for i, c in enumerate(ranked, 1)}
    ok = {c.name for c in ranked if c.eligible}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4 + 0.22 * len(ranked)), squeeze=False)
    handles = {}
    for ax, (metric, label) in zip(axes[0], panels):
        points = [(c.name, float(c.metrics[metric]), float(c.metrics["accuracy"])) for c in ranked
                  if metric in c.metrics and "accuracy" in c.metrics]
        front = sorted((p for p in points if p[0] in pareto_front(points)), key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[2] for p in front], "--", color="tab:blue", alpha=0.6)
        for name, x, y in points:
            style = dict(marker="*", s=260, color="tab:red", zorder=4) if name == chosen else \
                dict(marker="o", s=50, color="tab:blue" if name in ok else "lightgrey", zorder=3)
            handles[name] = ax.scatter([x], [y], **style)
            ax.annotate(str(number[name]), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(f"{label}, lower is better")
        ax.set_ylabel("accuracy")
        ax.set_title(f"accuracy vs {label.split(' (')[0]}: Pareto front dashed", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
    notes = {chosen: " (chosen)", **{n: " (misses a constraint)" for n in number if n not in ok}}
    fig.legend([handles[n] for n in number if n in handles], [f"{number[n]}: {n}{notes.get(n, '')}" for n in number
               if n in handles], loc="lower center", ncol=2 if len(panels) > 1 else 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.04 * (len(ranked) + 1) / (2 if len(panels) > 1 else 1), 1, 1))
    fig.savefig(folder / PARETO_PNG, dpi=110)
    plt.close(fig)
    return PARETO_PNG
