"""`search: {sampler: tpe}`: trials proposed by Optuna's TPE from the objective of the earlier trials.

grid and random searches are fixed before anything runs (`pipelines.matrix` picks their combinations).
TPE needs each trial's result before proposing the next, so this module drives the ordinary executor:

1. Ask the seeded TPE sampler for a combination of the matrix's values.
2. Run, through `run_workflow`, the workflow restricted to that one combination, only as far as the
   objective's evaluate step (`--only`): the trial's variant, the steps fanned out from it, and an
   evaluation of the trial next to the evaluate step's other models. Each is an ordinary cached step.
3. Read the objective from that evaluation, tell the sampler, repeat up to `max_samples` distinct trials.
4. Run the whole workflow with every trial as the matrix's variants: the evaluate step times them all in
   one interleaved run, and a `select` step picks among them.

Re-running costs nothing: each trial's steps are cache hits, so the sampler is told the same values and
(seeded) proposes the same next trials. Raising `max_samples` replays the first trials from the cache
and runs only the new ones (and the final evaluation, whose model list grew). Optuna is imported here
only, when a tpe search runs: `validate` and `plan` never import it.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from pipelines.matrix import SearchPlan, expand_names
from pipelines.validate import LoadedWorkflow, load_workflow
from schemas.errors import PipelineError

from .console import RunConsole
from .execute import PlanRow, run_workflow
from .records import RunOptions, RunResult

#: Proposals that repeat an earlier trial are told its value again; this many in a row end the search
#: (TPE has settled on the space it can reach; a small matrix is then searched exhaustively anyway).
MAX_REPEATS = 50


def tpe_searches(loaded: LoadedWorkflow) -> list[SearchPlan]:
    """The workflow's tpe searches (the ones this module runs)."""
    return [p for p in loaded.searches.values() if p.search.sampler == "tpe"]


def mark_tpe_trials(loaded: LoadedWorkflow, rows: list[PlanRow]) -> list[PlanRow]:
    """`plan` lists every combination of a tpe search: those not cached `may run` (TPE picks at run time)."""
    for plan in tpe_searches(loaded):
        budget = min(plan.search.max_samples or len(plan.product), len(plan.product))
        for row in rows:
            if row.name in loaded.variants.get(plan.step, ()) and row.status != "cached":
                row.status, row.reason = "may run", f"tpe tries {budget} of these {len(plan.product)} at run time"
    return rows


def run_with_search(loaded: LoadedWorkflow, options: RunOptions, overrides: Sequence[str] = ()) -> RunResult:
    """Run the workflow; a tpe search first chooses its trials (see the module docstring)."""
    plans = tpe_searches(loaded)
    if not plans:  # `--only q` / `--force q` on a matrix step: every variant of it
        return run_workflow(loaded, replace(options, only=expand_names(options.only, loaded.variants),
                                            force=expand_names(options.force, loaded.variants)))
    if len(plans) > 1:
        raise PipelineError(f"{len(plans)} tpe searches ({', '.join(p.step for p in plans)}): one workflow runs one; "
                            "make the others grid or random")
    plan = plans[0]
    console = RunConsole(quiet=options.quiet)
    trials, failed = _search(loaded, plan, options, overrides, console)
    if failed is not None:
        return failed
    final = load_workflow(loaded.file, overrides, trials={plan.step: trials})
    console.line(f"search {plan.step}: {len(trials)} trials; running the workflow with all of them", style="bold")
    return run_workflow(final, replace(options, only=expand_names(options.only, final.variants),
                                       force=expand_names(options.force, final.variants)))


def _search(loaded: LoadedWorkflow, plan: SearchPlan, options: RunOptions, overrides: Sequence[str],
            console: RunConsole) -> tuple[list[dict], RunResult | None]:
    """The distinct trials TPE proposed, in order; with the failed trial's run when one failed."""
    try:
        import optuna
    except ImportError:
        raise PipelineError(f"search {plan.step}: the tpe sampler runs on Optuna, which is not installed: "
                            "pip install optuna (the `olive` extra brings it), or use sampler random") from None

    objective = plan.search.objective
    assert objective is not None  # schemas.sweep.Search requires it for tpe
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    values = {f: list(dict.fromkeys(c[f] for c in plan.product)) for f in plan.fields}
    space = {f: optuna.distributions.CategoricalDistribution(list(range(len(v)))) for f, v in values.items()}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=plan.search.seed))
    budget = min(plan.search.max_samples or len(plan.product), len(plan.product))
    trials: list[dict] = []
    scores: list[float] = []
    repeats = 0
    while len(trials) < budget and repeats < MAX_REPEATS:
        trial = study.ask(space)
        combo = {f: values[f][trial.params[f]] for f in plan.fields}
        if combo in trials:  # already measured: tell TPE again, spend no budget
            study.tell(trial, scores[trials.index(combo)])
            repeats += 1
            continue
        repeats = 0
        one = load_workflow(loaded.file, overrides, trials={plan.step: [combo]})
        with tempfile.TemporaryDirectory(prefix="pipeline-trial-") as out:
            result = run_workflow(one, replace(options, output=Path(out), force=(),
                                               only=expand_names([objective.evaluate], one.variants)))
        name = one.variants.get(plan.step, [plan.step])[0]
        if result.status == "interrupted":
            return trials, result
        if result.status not in ("ok", "goals_missed"):
            console.line(f"search {plan.step}: trial {len(trials) + 1} ({name}) failed; stopping the search", style="red")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return trials + [combo], result
        score = _trial_score(result, objective, one, plan.step)
        study.tell(trial, score)
        trials.append(combo)
        scores.append(score)
        console.line(f"search {plan.step}: trial {len(trials)}/{budget} {name}: {objective.metric} "
                     f"{objective.sign * score:.4g}", style="bold")
    return trials, None


def _trial_score(result: RunResult, objective, one: LoadedWorkflow, step: str) -> float:
    """The objective of one trial: the best of its models (the variant, or steps fanned out from it)."""
    record = result.steps.get(objective.evaluate)
    metrics = (record.meta.get("metrics") if record else None) or {}
    ours = {v for names in one.variants.values() for v in names}
    values = [m[objective.metric] for name, m in metrics.items() if name in ours and objective.metric in m]
    if not values:
        raise PipelineError(f"search {step}: {objective.evaluate!r} measured no {objective.metric} for the trial "
                            f"({', '.join(sorted(ours))}): list {step!r} (or a step fanned out from it) in its `models`")
    return min(objective.sign * v for v in values)
