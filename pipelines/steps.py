"""The pipeline's tasks: thin KFP components over the step functions in components/.

Each body imports its heavy libraries itself, so compiling never imports torch. Every
step resumes the pipeline's one MLflow run and records its own wall time there.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from pipelines.images import BASE_IMAGE, TRAINER_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def open_run(
    run_name: str,
    source: str,
    base_model: str,
    method: str,
    epochs: int,
    max_steps: int,
    train_subset: int,
    validation_subset: int,
    batch_size: int,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    target_modules: str,
    max_length: int,
    patience: int,
    seed: int,
    threshold: float,
    log_every: int,
    checkpoint_every: int,
    gradient_checkpointing: bool,
) -> NamedTuple("RunOutputs", [("mlflow_run_id", str), ("train_config", str)]):
    """Validate the pipeline's inputs, then open its MLflow run.

    Returns the run id and the validated training config (JSON) that train reads.
    """
    from collections import namedtuple

    from components.config import TrainConfig
    from components.tracking import open_pipeline_run

    config = TrainConfig(
        base_model=base_model, method=method, epochs=epochs, max_steps=max_steps, train_subset=train_subset,
        validation_subset=validation_subset, batch_size=batch_size, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, weight_decay=weight_decay, warmup_ratio=warmup_ratio, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, max_length=max_length,
        patience=patience, seed=seed, threshold=threshold, log_every=log_every, checkpoint_every=checkpoint_every,
        gradient_checkpointing=gradient_checkpointing,
    ).validate()
    if not source:
        raise ValueError("source must name a data source, e.g. 'bundled'")
    run_id = open_pipeline_run(run_name, {"source": source, **{f"train.{k}": v for k, v in vars(config).items()}})
    return namedtuple("RunOutputs", ["mlflow_run_id", "train_config"])(run_id, config.to_json())


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def download_data(source: str, store: str, mlflow_run_id: str, raw_data: Output[Dataset]) -> str:
    """Fetch, verify and validate UNFAIR-ToS, mirror the snapshot to the store; returns the data hash."""
    import time

    from components.download import download
    from components.store import store_root
    from components.tracking import pipeline_run

    started = time.time()
    manifest = download(source, raw_data.path, store=store_root(store))
    raw_data.metadata.update({"data_hash": manifest["data_hash"], "rows": manifest["rows"],
                              "snapshot": manifest["snapshot"]["uri"]})
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"data_hash": manifest["data_hash"], "data_source": source,
                         "data_snapshot": manifest["snapshot"]["uri"]})
        mlflow.log_dict(manifest, "data/manifest.json")
        mlflow.log_metric("step_seconds.download", time.time() - started)
    return manifest["data_hash"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def tokenize_data(
    raw_data: Input[Dataset],
    data_hash: str,
    base_model: str,
    max_length: int,
    mlflow_run_id: str,
    tokenized_data: Output[Dataset],
):
    """Tokenize every split to Arrow with the base model's fast tokenizer."""
    import time

    from components.tokenize import tokenize
    from components.tracking import pipeline_run

    started = time.time()
    stats = tokenize(raw_data.path, base_model, max_length, tokenized_data.path)
    tokenized_data.metadata.update({"base_model": base_model, "max_length": max_length, "data_hash": data_hash})
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.log_dict(stats, "data/tokenize_stats.json")
        mlflow.log_metric("step_seconds.tokenize", time.time() - started)


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_model(
    tokenized_data: Input[Dataset],
    data_hash: str,
    train_config: str,
    store: str,
    source: str,
    gpus: int,
    reuse_stored_model: bool,
    mlflow_run_id: str,
    model: Output[Model],
    curves: Output[Metrics],
) -> str:
    """Fine-tune (LoRA / QLoRA / full), export adapter and merged model, keep them in the
    model store (or reuse the stored model for the same data and config); returns its URI.
    gpus > 1: data-parallel over that many GPUs (torchrun, one worker per GPU)."""
    from components.jobs import train_job
    from components.store import store_root

    summary = train_job(tokenized_data.path, data_hash, train_config, mlflow_run_id, model.path,
                        store=store_root(store), source=source, gpus=gpus, reuse=reuse_stored_model)
    model.metadata.update({"method": summary["method"], "base_model": summary["base_model"],
                           "best_epoch": summary["best_epoch"], "data_hash": data_hash,
                           "store_uri": summary["model_uri"], "reused": summary["reused"]})
    for record in summary["history"]:
        curves.log_metric(f"epoch{record['epoch']}_val_macro_f1", round(record["val_macro_f1"], 2))
        curves.log_metric(f"epoch{record['epoch']}_train_loss", round(record["train_loss"], 5))
    curves.log_metric("best_val_macro_f1", round(summary["best_val_macro_f1"], 2))
    return summary["model_uri"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(
    tokenized_data: Input[Dataset],
    model: Input[Model],
    model_uri: str,
    data_hash: str,
    mlflow_run_id: str,
    gate_floor: float,
    gate_tolerance: float,
    deploy: bool,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[Markdown],
    scores: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("micro_f1", float), ("macro_f1", float), ("gate_passed", bool),
                                    ("gate_reason", str), ("model_version", str)]):
    """LexGLUE 8+1 micro/macro-F1 on the full test split, the report, the gate decision;
    registers the model version and moves `champion` when the gate passes."""
    from collections import namedtuple

    from components.jobs import evaluate_job

    label = f"tosguard ({model.metadata.get('method', '?')}, this run)"
    out = evaluate_job(tokenized_data.path, model.path, model_uri, data_hash, mlflow_run_id, gate_floor,
                       gate_tolerance, deploy, label, scores.path, report.path)
    result, gate = out["scores"], out["gate"]
    metrics.log_metric("test_micro_f1", round(result["micro_f1"], 2))
    metrics.log_metric("test_macro_f1", round(result["macro_f1"], 2))
    for name, value in result["per_category_f1"].items():
        metrics.log_metric(f"f1 {name}", round(value, 2))
    metrics.log_metric("gate_passed", float(gate["passed"]))
    classification.log_confusion_matrix(result["confusion_matrix"]["labels"], result["confusion_matrix"]["matrix"])
    scores.metadata.update({"data_hash": data_hash, "model_version": out["model_version"]})
    outputs = namedtuple("EvaluateOutputs", ["micro_f1", "macro_f1", "gate_passed", "gate_reason", "model_version"])
    return outputs(result["micro_f1"], result["macro_f1"], gate["passed"], gate["reason"], out["model_version"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_local(model_uri: str, model_version: str, mlflow_run_id: str) -> str:
    """Embedded deploy: (re)start the local KServe ModelServer on 127.0.0.1 over the model
    in the store; returns its URL."""
    import time

    from components.deploy import start_local_server
    from components.tracking import pipeline_run

    started = time.time()
    state = start_local_server(model_uri)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": state["url"], "deployed_model_dir": state["model_dir"],
                         "deployed_version": model_version})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return state["url"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_kserve(
    model_uri: str,
    model_version: str,
    mlflow_run_id: str,
    service_name: str,
    namespace: str,
    serving_image: str,
    service_account: str,
    ready_timeout_s: int,
) -> str:
    """Cluster deploy: create or patch the InferenceService over the model store URI; returns its URL."""
    import time

    from components.deploy import build_inference_service, build_serving_runtime, deploy_inference_service
    from components.tracking import pipeline_run

    if not model_uri.startswith(("s3://", "gs://", "pvc://", "https://")):
        raise ValueError(f"KServe cannot fetch {model_uri!r}: set the pipeline's store to s3://BUCKET/PREFIX")
    started = time.time()
    runtime = build_serving_runtime(f"{service_name}-runtime", namespace, serving_image)
    isvc = build_inference_service(service_name, namespace, model_uri, f"{service_name}-runtime", service_account)
    result = deploy_inference_service(isvc, runtime, timeout=ready_timeout_s)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": result["url"], "inference_service": f"{namespace}/{service_name}",
                         "deployed_version": model_version})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return result["url"]
