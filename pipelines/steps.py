"""The pipeline's tasks: a few lines each over the step entry points in components/.

Each body imports its heavy libraries itself, so compiling never imports torch. Every
step records into the pipeline's one MLflow run (opened by open-run).
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from tosguard.pipelines.images import BASE_IMAGE, TRAINER_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def open_run(run_name: str, source: str, train: dict, kfp_run_id: str, kfp_run_name: str,
             serve_profile: str, trainer: str, deploy_target: str, gpus: int, nodes: int, min_replicas: int,
             max_replicas: int, concurrency_target: int, ready_timeout_s: int,
             ) -> NamedTuple("RunOutputs", [("mlflow_run_id", str), ("train_config", str)]):
    """Validate the pipeline's inputs, open this pipeline run's own MLflow run (tagged with
    the KFP run id and name); hand on the run id and the validated training settings."""
    from tosguard.components.tracking import open_run_step

    return open_run_step(run_name, source, train, {"kfp.run_id": kfp_run_id, "kfp.run_name": kfp_run_name},
                         serve_profile, dict(trainer=trainer, deploy_target=deploy_target, gpus=gpus, nodes=nodes,
                                             min_replicas=min_replicas, max_replicas=max_replicas,
                                             concurrency_target=concurrency_target, ready_timeout_s=ready_timeout_s))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def download_data(source: str, store: str, mlflow_run_id: str, raw_data: Output[Dataset]) -> str:
    """Fetch, verify and validate UNFAIR-ToS, mirror the snapshot to the store; returns the data hash."""
    from tosguard.components.download import run_step

    manifest = run_step(source, raw_data.path, store, mlflow_run_id)
    raw_data.metadata.update({"data_hash": manifest["data_hash"], "rows": manifest["rows"],
                              "snapshot": manifest["snapshot"]["uri"]})
    return manifest["data_hash"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def tokenize_data(raw_data: Input[Dataset], data_hash: str, train_config: str, mlflow_run_id: str,
                  tokenized_data: Output[Dataset]):
    """Tokenize every split to Arrow with the base model's fast tokenizer."""
    from tosguard.components.tokenize import run_step

    run_step(raw_data.path, train_config, data_hash, mlflow_run_id, tokenized_data.path)
    tokenized_data.metadata["data_hash"] = data_hash


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_model(tokenized_data: Input[Dataset], data_hash: str, train_config: str, store: str, source: str,
                gpus: int, reuse_stored_model: bool, mlflow_run_id: str, model: Output[Model],
                curves: Output[Metrics]) -> str:
    """Fine-tune (LoRA / QLoRA / full), keep the model in the store (or reuse the stored
    model for the same data and settings); returns its store URI. gpus > 1: data-parallel."""
    from tosguard.components.store import store_root
    from tosguard.components.train.step import run_step, summary_outputs

    summary = run_step(tokenized_data.path, data_hash, train_config, mlflow_run_id, model.path,
                       store=store_root(store), source=source, gpus=gpus, reuse=reuse_stored_model)
    return summary_outputs(summary, data_hash, model, curves)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_with_trainjob(tokenized_data: Input[Dataset], data_hash: str, train_config: str, store: str, source: str,
                        nodes: int, gpus: int, trainer_image: str, namespace: str, reuse_stored_model: bool,
                        mlflow_run_id: str, model: Output[Model], curves: Output[Metrics]) -> str:
    """Train across `nodes` x `gpus` with a Kubeflow Trainer TrainJob; follow it; take the
    model from the (s3://) store; returns its store URI."""
    from tosguard.components.store import store_root
    from tosguard.components.train.step import run_step, summary_outputs

    summary = run_step(tokenized_data.path, data_hash, train_config, mlflow_run_id, model.path,
                       store=store_root(store), source=source, gpus=gpus, reuse=reuse_stored_model,
                       trainer="trainjob", nodes=nodes, trainjob_image=trainer_image, namespace=namespace)
    return summary_outputs(summary, data_hash, model, curves)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(
    tokenized_data: Input[Dataset], model: Input[Model], model_uri: str, data_hash: str, mlflow_run_id: str,
    gate_floor: float, gate_tolerance: float, deploy: bool, metrics: Output[Metrics],
    classification: Output[ClassificationMetrics], report: Output[Markdown], report_html: Output[HTML],
    scores: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("micro_f1", float), ("macro_f1", float), ("gate_passed", bool),
                                    ("gate_reason", str), ("model_version", str)]):
    """LexGLUE 8+1 micro/macro-F1 on the full test split, the report (Markdown, and HTML with
    the training curves and a confusion per category), the gate decision; registers the
    model version and moves `champion` when the gate passes."""
    from tosguard.components.evaluate import run_step

    label = f"tosguard ({model.metadata.get('method', '?')}, this run)"
    out = run_step(tokenized_data.path, model.path, model_uri, data_hash, mlflow_run_id, gate_floor,
                   gate_tolerance, deploy, label, scores.path, report.path, report_html.path)
    result, gate = out["scores"], out["gate"]
    metrics.log_metric("test_micro_f1", round(result["micro_f1"], 2))
    metrics.log_metric("test_macro_f1", round(result["macro_f1"], 2))
    for name, value in result["per_category_f1"].items():
        metrics.log_metric(f"f1 {name}", round(value, 2))
    metrics.log_metric("gate_passed", float(gate["passed"]))
    classification.log_confusion_matrix(result["confusion_matrix"]["labels"], result["confusion_matrix"]["matrix"])
    scores.metadata.update({"data_hash": data_hash, "model_version": out["model_version"]})
    return result["micro_f1"], result["macro_f1"], gate["passed"], gate["reason"], out["model_version"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_local(model_uri: str, model_version: str, mlflow_run_id: str, serve_profile: str) -> str:
    """Embedded deploy: (re)start the local KServe ModelServer on 127.0.0.1; returns its URL."""
    from tosguard.components.deploy import run_local_step

    return run_local_step(model_uri, model_version, mlflow_run_id, serve_profile)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_kserve(model_uri: str, model_version: str, mlflow_run_id: str, service_name: str, namespace: str,
                  serving_image: str, service_account: str, ready_timeout_s: int, min_replicas: int,
                  max_replicas: int, concurrency_target: int, expose: bool, auth_secret: str,
                  serve_profile: str) -> str:
    """Cluster deploy: create or patch the InferenceService over the model store URI; returns its URL."""
    from tosguard.components.deploy import run_kserve_step

    return run_kserve_step(model_uri, model_version, mlflow_run_id, service_name, namespace, serving_image,
                           service_account, ready_timeout_s, min_replicas, max_replicas, concurrency_target,
                           expose, auth_secret, serve_profile)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def check_drift(url: str, model: str, window_s: float, psi_threshold: float, ks_threshold: float, min_clauses: int,
                since_last_check: bool, store: str, run_id: str, metric_reads: int, drift: Output[Metrics],
                report: Output[Markdown]) -> bool:
    """Read the endpoint's metrics, compare per-category scores with the served model's test
    reference (PSI, KS); returns True (retrain) when drift crosses the thresholds. With
    since_last_check (and window_s 0) only the traffic since the last judged check counts,
    its mark kept in the store. metric_reads: reads of /metrics, the replicas they reach
    judged together. One plain output: kfp.local resolves a root-level condition
    on `Output` but not on a named output."""
    from tosguard.components.monitor import run_step

    return run_step(url, model, window_s, psi_threshold, ks_threshold, min_clauses, drift, report.path,
                    since_last_check=since_last_check, store=store, run=run_id, reads=metric_reads)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def acknowledge_drift(url: str, window_s: float, since_last_check: bool, store: str, run_id: str) -> str:
    """After a retrain that ran to the end: the endpoint's mark moves past the traffic that
    asked for it (until then, a failed retrain is asked for again by the next check)."""
    from tosguard.components.monitor import acknowledge_step

    return acknowledge_step(url, window_s, since_last_check, store, run_id)
