"""The `tracking:` section and `pipeline run --track`: where a run is logged as an experiment (MLflow).

Only the contract lives here (Pydantic, no MLflow import): which tracker, its URI and the experiment.
`runner.tracking` logs the run from the steps' results, importing MLflow only when a run is tracked.
Nothing here enters a cache key: tracking says where results are shown, never what they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import StrictModel

#: The trackers `--track` and `tracking.backend` take.
BACKENDS = ("mlflow",)


class Tracking(StrictModel):
    """Log each run to an experiment tracker: the run as a run, each step as a nested run."""

    backend: Literal["mlflow"] = Field(description="The tracker: `mlflow` (needs the `track` extra).")
    uri: str | None = Field(
        None, min_length=1,
        description="The MLflow tracking URI (a server `http://host:5000`, `sqlite:///file.db`, `databricks`, "
        "`azureml://...`). Default: $MLFLOW_TRACKING_URI when set (Azure ML sets it inside its jobs), else an "
        "SQLite store in the output folder (`mlflow/mlflow.db`, viewable with `mlflow ui`).",
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=255, description="The MLflow experiment; default: the workflow's name."
    )
    enabled: bool = Field(True, description="false keeps the settings but logs nothing (as `--track none`).")


def parse_track_flag(text: str) -> Tracking | None:
    """`--track mlflow`, `--track mlflow:URI` or `--track none` (None: tracking off); ValueError otherwise."""
    backend, _, uri = text.partition(":")
    if backend == "none" and not uri:
        return None
    if backend not in BACKENDS:
        raise ValueError(f"{text!r}: expected mlflow, mlflow:URI (e.g. mlflow:http://localhost:5000) or none")
    if _ and not uri:
        raise ValueError(f"{text!r}: the URI after `mlflow:` is empty")
    return Tracking(backend="mlflow", uri=uri or None)
