"""MLflow access: sqlite under the tosguard home by default, any server by MLFLOW_TRACKING_URI.

Steps log through RunLogger, which survives an MLflow outage: records are kept in memory
while the server is unreachable, the work goes on, and at the end they are replayed or the
step fails with one clear message (by then the step's results are already in the store).
The model registry holds the registered model ``tosguard``; each pipeline run adds a
version whose source is the model store URI, and the alias ``champion`` marks the version
that passed the gate last.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

from tosguard.components.config import CHAMPION_ALIAS as CHAMPION
from tosguard.components.config import NAME, home

log = logging.getLogger(__name__)
EXPERIMENT = NAME
REGISTERED_MODEL = NAME
RETRY_AFTER_S = 60.0  # after a failure, try MLflow again no sooner than this


class MlflowUnavailable(RuntimeError):
    """MLflow did not accept what a step had to record."""


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


def _unusable(exc: Exception, what: str) -> MlflowUnavailable:
    return MlflowUnavailable(f"MLflow at {tracking_uri()} is unusable ({what}): {type(exc).__name__}: {exc}")


def open_pipeline_run(run_name: str, params: dict, tags: dict | None = None, experiment: str = EXPERIMENT) -> str:
    """Create the one MLflow run of a pipeline run; returns its id."""
    mlflow = _client()
    try:
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
    except Exception as exc:
        raise _unusable(exc, "opening the pipeline run") from exc


class RunLogger:
    """The MLflow calls steps make, against one run by id, buffered across outages."""

    def __init__(self, run_id: str):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri())
        self.pending: list[tuple[str, tuple, dict]] = []
        self.error: Exception | None = None
        self.failed_at = 0.0

    # -- the calls steps make (the names of the mlflow module's fluent API)
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        self._call("log_batch", params=[Param(k, str(v)) for k, v in params.items()])

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._call("log_batch", metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def set_tag(self, key: str, value) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self._call("log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        self._call("log_dict", dictionary, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call("log_artifact", local_path, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", local_dir, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure, saved as `artifact_file` (e.g. a .png) among the run's artifacts."""
        self._call("log_figure", figure, artifact_file)

    # -- buffering
    def _call(self, method: str, *args, **kwargs) -> None:
        self.pending.append((method, args, kwargs))
        if self.error is None or time.time() - self.failed_at >= RETRY_AFTER_S:
            self._flush()

    def _flush(self) -> bool:
        while self.pending:
            method, args, kwargs = self.pending[0]
            try:
                getattr(self.client, method)(self.run_id, *args, **kwargs)
            except Exception as exc:  # an outage, or a server refusing the run
                if self.error is None:
                    log.warning("MLflow at %s failed (%s: %s); keeping records and going on", tracking_uri(),
                                type(exc).__name__, str(exc)[:200])
                self.error, self.failed_at = exc, time.time()
                return False
            self.pending.pop(0)
        self.error = None
        return True

    def close(self, safe: str = "") -> None:
        """Deliver what is pending, or raise MlflowUnavailable (saying what is safe)."""
        if self.pending and not self._flush():
            note = f" {safe}" if safe else ""
            raise MlflowUnavailable(
                f"MLflow at {tracking_uri()} did not accept {len(self.pending)} record(s) for run {self.run_id}: "
                f"{type(self.error).__name__}: {str(self.error)[:300]}.{note} Re-run the step once MLflow is back."
            )


@contextlib.contextmanager
def pipeline_run(run_id: str, safe: str = ""):
    """A RunLogger for the pipeline's MLflow run inside a step; delivers or fails at the end."""
    logger = RunLogger(run_id)
    yield logger
    logger.close(safe)


def open_run_step(run_name: str, source: str, train: dict, tags: dict | None = None,
                  serve_profile: str = "", settings: dict | None = None) -> tuple[str, str]:
    """The pipeline's first task: validate the inputs, then open the pipeline's MLflow run
    with every training setting logged once. Returns (run id, the validated settings as
    JSON), which every later step reads. `tags`: the KFP run id and name. serve_profile is
    checked here, so a bad one fails before training rather than at the deploy step, and so
    are `settings`, the pipeline's choice and count parameters (config.check_run_settings)."""
    from tosguard.components.config import PROFILES, TrainConfig, check_run_settings

    config = TrainConfig.from_dict(train)
    check_run_settings(**(settings or {}))
    if not source:
        raise ValueError("source must name a data source, e.g. 'bundled'")
    if serve_profile and serve_profile not in PROFILES:
        raise ValueError(f"serve_profile must be one of {', '.join(PROFILES)} or empty (got {serve_profile!r})")
    from tosguard.components.storage import redact

    run_id = open_pipeline_run(run_name, {"source": redact(source),
                                          **{f"train.{k}": v for k, v in config.to_dict().items()}},
                               tags=tags)
    return run_id, config.to_json()


def find_runs(filter_string: str, max_results: int = 1) -> list:
    """Runs of the tosguard experiment matching an MLflow filter, newest first."""
    mlflow = _client()
    return mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filter_string,
                              order_by=["attributes.start_time DESC"], max_results=max_results, output_format="list")


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


# --------------------------------------------------------------------------- registry


def champion(name: str = REGISTERED_MODEL) -> dict | None:
    """The version the alias `champion` points at, with its tags; None when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri())
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise _unusable(exc, "reading the champion") from exc
    except Exception as exc:
        raise _unusable(exc, "reading the champion") from exc
    tags = dict(version.tags)
    return {"version": version.version, "source": tags.get("store_uri", version.source), "model_uri": version.source,
            "run_id": version.run_id, "tags": tags}


def register_version(store_uri: str, run_id: str, tags: dict, promote: bool, model_uri: str | None = None,
                     name: str = REGISTERED_MODEL) -> str:
    """Add a version of `name`: the MLflow Model at `model_uri` (logged by log_mlflow_model),
    or without one the store folder itself; the store URI is always the tag `store_uri`.
    Moves `champion` to it when `promote`. Returns the version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri())
    tags = {**{k: str(v) for k, v in tags.items()}, "store_uri": store_uri}
    try:
        try:
            client.create_registered_model(name, description=f"{NAME}: unfair-clause classifiers (LexGLUE UNFAIR-ToS)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        if model_uri:
            mlflow = _client()
            version = mlflow.register_model(model_uri, name, tags=tags)
        else:
            version = client.create_model_version(name, store_uri, run_id=run_id, tags=tags)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except Exception as exc:
        raise _unusable(exc, f"registering {model_uri or store_uri}") from exc
    log.info("registered %s version %s (store %s)%s", name, version.version, store_uri,
             "; champion now" if promote else "")
    return str(version.version)


def _model_code(into) -> str:
    """A copy of the tosguard code a pyfunc needs (the package without its data), for the
    MLflow Model's code_paths: the model then loads where tosguard is not installed."""
    import shutil
    from pathlib import Path

    import tosguard

    package = Path(into) / "tosguard"
    package.mkdir(parents=True)
    shutil.copy(Path(tosguard.__file__), package / "__init__.py")
    import tosguard.components as comp

    components = Path(comp.__file__).parent
    shutil.copytree(components, package / "components",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "*.pyc"))
    return str(package)


def pip_requirements() -> list[str]:
    """What the MLflow Model needs, pinned as constraints.txt pins them (or as installed)."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    import tosguard

    needed = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "mlflow"]
    pins = {}
    constraints = Path(tosguard.__file__).resolve().parent.parent / "constraints.txt"
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            name, sep, pinned = line.strip().partition("==")
            if sep:
                pins[name.lower()] = pinned
    out = []
    for name in needed:
        pinned = pins.get(name)
        if pinned is None:
            try:
                pinned = version(name).split("+")[0]
            except PackageNotFoundError:
                out.append(name)
                continue
        out.append(f"{name}=={pinned}")
    return out


def log_mlflow_model(run_id: str, model_dir: str, categories: list[str]) -> str:
    """Log the model folder as an MLflow Model (pyfunc with a signature, an input example,
    pip requirements and its code) into the run; returns its model URI."""
    import tempfile
    from pathlib import Path

    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from tosguard.components import pyfunc_model

    mlflow = _client()
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "clause")]),
        outputs=Schema([ColSpec("boolean", "unfair"), ColSpec("string", "categories")]
                       + [ColSpec("double", c) for c in categories]),
    )
    example = pd.DataFrame({"clause": ["We may terminate your account at any time without notice."]})
    try:
        with tempfile.TemporaryDirectory(prefix="tosguard-pyfunc-") as tmp:
            code = _model_code(tmp)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(pyfunc_model.__file__)), artifacts={"model": model_dir},
                    code_paths=[code], signature=signature, input_example=example,
                    pip_requirements=pip_requirements(),
                )
    except Exception as exc:
        raise _unusable(exc, "logging the MLflow Model") from exc
    return info.model_uri


def model_source(uri: str) -> str:
    """A registry URI -> the model store URI its version points at; other URIs unchanged.

    ``models:/NAME@ALIAS`` (e.g. ``models:/tosguard@champion``) or ``models:/NAME/VERSION``.
    """
    if not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient

    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri())
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise ValueError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    except ValueError:
        raise
    except Exception as exc:
        raise FileNotFoundError(f"{uri}: not found in the registry at {tracking_uri()} ({exc})") from exc
    if version.tags.get("store_uri"):
        return version.tags["store_uri"]
    if version.source.startswith("models:/"):  # an MLflow Model without a store tag: its model artifact
        from pathlib import Path

        from tosguard.components.config import CARD_FILE

        local = Path(_client().artifacts.download_artifacts(artifact_uri=version.source))
        return str(next(local.rglob(CARD_FILE)).parent)
    return version.source
