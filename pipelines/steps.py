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
    lora_r: int,
    max_length: int,
    seed: int,
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
        base_model=base_model, method=method, epochs=epochs, max_steps=max_steps,
        train_subset=train_subset, validation_subset=validation_subset, batch_size=batch_size,
        learning_rate=learning_rate, lora_r=lora_r, max_length=max_length, seed=seed,
        checkpoint_every=checkpoint_every, gradient_checkpointing=gradient_checkpointing,
    ).validate()
    if not source:
        raise ValueError("source must name a data source, e.g. 'bundled'")
    run_id = open_pipeline_run(run_name, {"source": source, **{f"train.{k}": v for k, v in vars(config).items()}})
    return namedtuple("RunOutputs", ["mlflow_run_id", "train_config"])(run_id, config.to_json())


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def download_data(source: str, mlflow_run_id: str, raw_data: Output[Dataset]) -> str:
    """Fetch, verify and validate UNFAIR-ToS; returns the data hash."""
    import time

    from components.download import download
    from components.tracking import pipeline_run

    started = time.time()
    manifest = download(source, raw_data.path)
    raw_data.metadata.update({"data_hash": manifest["data_hash"], "rows": manifest["rows"]})
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"data_hash": manifest["data_hash"], "data_source": source})
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
    mlflow_run_id: str,
    model: Output[Model],
    curves: Output[Metrics],
):
    """Fine-tune (LoRA / QLoRA / full) and export the adapter and the merged model."""
    import time

    from components.config import TrainConfig
    from components.tracking import pipeline_run
    from components.train import train

    config = TrainConfig.from_json(train_config)
    started = time.time()
    with pipeline_run(mlflow_run_id) as mlflow:
        summary = train(tokenized_data.path, config, model.path, mlflow=mlflow)
        mlflow.log_artifacts(model.path, "model")
        mlflow.set_tag("model_uri", model.uri)
        mlflow.log_metric("step_seconds.train", time.time() - started)
    model.metadata.update({"method": config.method, "base_model": config.base_model,
                           "best_epoch": summary["best_epoch"], "data_hash": data_hash})
    for record in summary["history"]:
        curves.log_metric(f"epoch{record['epoch']}_val_macro_f1", round(record["val_macro_f1"], 2))
        curves.log_metric(f"epoch{record['epoch']}_train_loss", round(record["train_loss"], 5))
    curves.log_metric("best_val_macro_f1", round(summary["best_val_macro_f1"], 2))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(
    tokenized_data: Input[Dataset],
    model: Input[Model],
    data_hash: str,
    mlflow_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[Markdown],
    scores: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("micro_f1", float), ("macro_f1", float)]):
    """LexGLUE 8+1 micro/macro-F1 on the full test split, and the report."""
    import time
    from collections import namedtuple

    from components.evaluate import evaluate, write_outputs
    from components.tracking import pipeline_run

    started = time.time()
    result = evaluate(model.path, tokenized_data.path)
    label = f"tosguard ({model.metadata.get('method', '?')}, this run)"
    write_outputs(result, label, scores.path, report.path)
    metrics.log_metric("test_micro_f1", round(result["micro_f1"], 2))
    metrics.log_metric("test_macro_f1", round(result["macro_f1"], 2))
    for name, value in result["per_category_f1"].items():
        metrics.log_metric(f"f1 {name}", round(value, 2))
    classification.log_confusion_matrix(result["confusion_matrix"]["labels"], result["confusion_matrix"]["matrix"])
    scores.metadata["data_hash"] = data_hash
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.log_metrics({"test_micro_f1": result["micro_f1"], "test_macro_f1": result["macro_f1"]})
        mlflow.log_metrics({f"test_f1.{k.replace(' ', '_').replace('(', '').replace(')', '')}": v
                            for k, v in result["per_category_f1"].items()})
        mlflow.log_artifact(report.path, "evaluation")
        mlflow.log_dict(result, "evaluation/scores.json")
        mlflow.log_metric("step_seconds.evaluate", time.time() - started)
    outputs = namedtuple("EvaluateOutputs", ["micro_f1", "macro_f1"])
    return outputs(result["micro_f1"], result["macro_f1"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_local(model: Input[Model], mlflow_run_id: str) -> str:
    """Embedded deploy: (re)start the local KServe ModelServer on 127.0.0.1; returns its URL."""
    import time

    from components.deploy import start_local_server
    from components.tracking import pipeline_run

    started = time.time()
    state = start_local_server(model.path)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": state["url"], "deployed_model_dir": state["model_dir"]})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return state["url"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_kserve(
    model: Input[Model],
    mlflow_run_id: str,
    service_name: str,
    namespace: str,
    serving_image: str,
    service_account: str,
    ready_timeout_s: int,
) -> str:
    """Cluster deploy: create or patch the InferenceService over the model's URI; returns its URL."""
    import time

    from components.deploy import build_inference_service, build_serving_runtime, deploy_inference_service
    from components.tracking import pipeline_run

    started = time.time()
    runtime = build_serving_runtime(f"{service_name}-runtime", namespace, serving_image)
    isvc = build_inference_service(service_name, namespace, model.uri, f"{service_name}-runtime", service_account)
    result = deploy_inference_service(isvc, runtime, timeout=ready_timeout_s)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": result["url"], "inference_service": f"{namespace}/{service_name}"})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return result["url"]
