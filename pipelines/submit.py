"""Submit the pipeline to a Kubeflow Pipelines API: one run, or a recurring (retraining) run."""
from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path

from tosguard.components.config import TrainConfig

_CASTS = {"Integer": int, "NUMBER_INTEGER": int, "Float": float, "Double": float, "NUMBER_DOUBLE": float,
          "Boolean": None, "BOOLEAN": None, "String": str, "STRING": str}
TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig))


def parse_params(pairs: list[str] | None, preset: str | None = None, drift_watch: bool = False) -> dict:
    """KEY=VALUE strings -> pipeline arguments, typed and checked against the pipeline.

    A training setting (`epochs=2`, or `train={"epochs": 2}` as JSON) goes into the one
    `train` block, built on `preset` (default: the default preset) and validated here, so
    a bad value fails before anything is submitted. drift_watch: check against the drift
    watch's parameters instead of the training pipeline's.
    """
    from tosguard.components.config import PRESET_GATE_FLOORS, PROFILES, check_drift_settings, check_gate, check_run_settings
    from tosguard.pipelines.pipeline import drift_watch_pipeline, tosguard_pipeline

    inputs = (drift_watch_pipeline if drift_watch else tosguard_pipeline).component_spec.inputs or {}
    params, train = {}, {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        if key in TRAIN_SETTINGS:
            train[key] = value
            continue
        if key == "train":
            try:
                block = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--param train=...: not valid JSON ({exc})") from None
            if not isinstance(block, dict):
                raise ValueError("--param train=...: expected a JSON object of training settings")
            train.update(block)
            continue
        if key not in inputs:
            known = sorted(set(inputs) - {"train"}) + list(TRAIN_SETTINGS)
            raise ValueError(f"--param {key}: not a pipeline parameter or training setting (known: {', '.join(known)})")
        kind = inputs[key].type
        try:
            if _CASTS.get(kind, str) is None:
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                params[key] = value.lower() == "true"
            else:
                params[key] = _CASTS.get(kind, str)(value)
        except ValueError:
            raise ValueError(f"--param {key}={value}: expected a {kind}") from None
        if key == "serve_profile" and value and value not in PROFILES:
            raise ValueError(f"--param serve_profile={value}: expected one of {', '.join(PROFILES)}")
    check_run_settings(**{k: params.get(k, inputs[k].default) for k in _RUN_SETTINGS if k in inputs})
    if "gate_floor" in inputs and "gate_tolerance" in inputs:
        check_gate(params.get("gate_floor", inputs["gate_floor"].default),
                   params.get("gate_tolerance", inputs["gate_tolerance"].default))
    if drift_watch:
        check_drift_settings(*(params.get(k, inputs[k].default) for k in ("psi_threshold", "ks_threshold",
                                                                           "min_clauses", "window_s")),
                             params.get("metric_reads", inputs["metric_reads"].default))
    named = train.pop("preset", preset)
    if train or named:
        params["train"] = TrainConfig.from_dict({"preset": named or "default", **train}).to_dict()
    if named and "gate_floor" in inputs and "gate_floor" not in params:
        # The preset's floor (quick: 0, as in `tosguard run`), sent even where it equals this
        # code's default: a --pipeline FILE compiled for another preset has another default.
        params["gate_floor"] = PRESET_GATE_FLOORS[named]
    return params


# The pipeline parameters config.check_run_settings checks (also in the pipeline's first task).
_RUN_SETTINGS = ("trainer", "deploy_target", "gpus", "nodes", "min_replicas", "max_replicas", "concurrency_target",
                 "ready_timeout_s")


def _package(pipeline_file: str | None, workdir: str, caching: bool | None = None, drift_watch: bool = False) -> str:
    """The pipeline YAML to send; with caching=False every task, nested ones too, uncached."""
    if pipeline_file:
        _check_pipeline_file(pipeline_file)
        path = pipeline_file
    else:
        from kfp import compiler

        from tosguard.pipelines.images import warn_if_untagged
        from tosguard.pipelines.pipeline import drift_watch_pipeline, tosguard_pipeline

        warn_if_untagged()
        path = str(Path(workdir) / "tosguard.yaml")
        compiler.Compiler().compile(drift_watch_pipeline if drift_watch else tosguard_pipeline, package_path=path)
    return _without_cache(path, workdir) if caching is False else path


def _without_cache(path: str, workdir: str) -> str:
    """kfp.Client's enable_caching=False reaches only the root DAG's tasks, not those inside
    condition branches (the train tasks): turn caching off in every component's DAG."""
    import yaml

    docs = list(yaml.safe_load_all(Path(path).read_text()))
    spec = docs[0]
    for component in [spec["root"]] + list(spec.get("components", {}).values()):
        for task in component.get("dag", {}).get("tasks", {}).values():
            if "cachingOptions" in task:
                task["cachingOptions"] = {}
    out = Path(workdir) / "tosguard-no-cache.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(out)


def _check_pipeline_file(pipeline_file: str | None) -> None:
    if pipeline_file and not Path(pipeline_file).is_file():
        raise FileNotFoundError(f"{pipeline_file}: no such pipeline file")


def _client(host: str, namespace: str | None):
    import kfp

    return kfp.Client(host=host, namespace=namespace)


def submit(host: str, namespace: str | None, experiment: str, run_name: str, params: dict,
           enable_caching: bool | None = None, pipeline_file: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _check_pipeline_file(pipeline_file)  # before connecting: a typo is named at once
        client = _client(host, namespace)
        result = client.create_run_from_pipeline_package(
            _package(pipeline_file, tmp, enable_caching), arguments=params, run_name=run_name, experiment_name=experiment,
            namespace=namespace, enable_caching=enable_caching,
        )
    return {"run_id": result.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}


def schedule(host: str, namespace: str | None, experiment: str, name: str, cron: str, params: dict,
             enable_caching: bool | None = None, pipeline_file: str | None = None, drift_watch: bool = False) -> dict:
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(
            f"--cron {cron!r}: KFP takes 6 fields, seconds first (e.g. '0 0 3 * * 1' for Mondays at 03:00)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        _check_pipeline_file(pipeline_file)  # before connecting: a typo is named at once
        client = _client(host, namespace)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=1,  # a retraining run never overlaps the previous one
            no_catchup=True, params=params, pipeline_package_path=_package(pipeline_file, tmp, enable_caching, drift_watch),
            enable_caching=enable_caching,
        )
    return {"recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id}
