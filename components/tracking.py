"""MLflow access: sqlite under the tosguard home by default, any server by MLFLOW_TRACKING_URI."""
from __future__ import annotations

import contextlib
import logging
import os

from components.config import home

log = logging.getLogger(__name__)
EXPERIMENT = "tosguard"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (home()).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def _client():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def open_pipeline_run(run_name: str, params: dict, tags: dict | None = None, experiment: str = EXPERIMENT) -> str:
    """Create the one MLflow run of a pipeline run; returns its id."""
    mlflow = _client()
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_location = None
        if tracking_uri().startswith("sqlite:"):
            # Keep artifacts beside the sqlite file, not in whatever the step's cwd is.
            artifact_location = (home() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags or {}) as run:
        mlflow.log_params(params)
        return run.info.run_id


@contextlib.contextmanager
def pipeline_run(run_id: str):
    """Resume the pipeline's MLflow run inside a step; yields the mlflow module."""
    mlflow = _client()
    try:
        with mlflow.start_run(run_id=run_id):
            yield mlflow
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "Connection" in type(exc).__name__:
            raise RuntimeError(f"MLflow at {tracking_uri()} is unusable for run {run_id}: {exc}") from exc
        raise


def run_info(run_id: str) -> dict:
    """Params, metrics, tags and artifact URI of a run, for summaries."""
    mlflow = _client()
    run = mlflow.get_run(run_id)
    return {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "artifact_uri": run.info.artifact_uri,
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "tracking_uri": tracking_uri(),
    }
