"""What the train and evaluate steps do around the model: the store, MLflow, the registry
and the gate. The KFP components in pipelines/steps.py are thin wrappers over these, so
tests can run a step's whole logic (its faults included) without KFP.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from components import storage
from components.config import TrainConfig
from components.store import COMPLETE_MARK, code_version, find_model, model_card, model_uri, model_version, save_model
from components.tracking import pipeline_run

log = logging.getLogger(__name__)


def _log_curves(mlflow, summary: dict) -> None:
    """Per-epoch validation metrics of a training that did not log live (reused, or torchrun workers)."""
    for record in summary["history"]:
        mlflow.log_metrics({"val_micro_f1": record["val_micro_f1"], "val_macro_f1": record["val_macro_f1"],
                            "epoch_train_loss": record["train_loss"]}, step=record["step"])
    mlflow.log_metrics({"best_val_macro_f1": summary["best_val_macro_f1"], "best_epoch": summary["best_epoch"]})


def train_job(tokenized_dir: str, data_hash: str, train_config: str, mlflow_run_id: str, output_dir: str,
              store: str = "", source: str = "", gpus: int = 1, reuse: bool = True) -> dict:
    """Train (or reuse the complete model the store already holds for this data and config),
    keep the model in the store, then record it in MLflow.

    reuse=False trains afresh even when the store holds this model (a forced fresh run).
    The model reaches the store before MLflow is asked for anything it must accept, so an
    MLflow outage fails the step with the model already safe; the re-run finds it there.
    """
    from components.train import train, train_data_parallel

    config = TrainConfig.from_json(train_config)
    started = time.time()
    version = model_version(data_hash, config.to_json())
    uri = model_uri(store, version)
    with pipeline_run(mlflow_run_id, safe=f"The trained model is safe in the store at {uri}.") as mlflow:
        summary = find_model(uri) if reuse else None
        if summary:
            log.info("train: the store already holds a complete model for this data and config at %s; reusing it",
                     uri)
            storage.download_folder(uri, output_dir)
            _log_curves(mlflow, summary)
            reused = True
        else:
            if gpus > 1:
                # Workers run under torchrun; their curves are recorded here once they finish.
                summary = train_data_parallel(tokenized_dir, config, output_dir, gpus)
                _log_curves(mlflow, summary)
            else:
                summary = train(tokenized_dir, config, output_dir, mlflow=mlflow)
            summary.update({
                "version": version, "data_hash": data_hash, "base_model": config.base_model, "method": config.method,
                "source": source, "code_version": code_version(), "mlflow_run_id": mlflow_run_id,
                "config": json.loads(config.to_json()), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            stored = save_model(output_dir, uri, summary)
            (Path(output_dir) / COMPLETE_MARK).write_text(json.dumps(summary, indent=2, default=str))
            log.info("train: model stored at %s (%d files, %.1f MiB)", uri, stored["files"], stored["bytes"] / 2**20)
            reused = False
        mlflow.set_tags({"model_uri": uri, "model_store_version": version, "train.reused": reused})
        mlflow.log_artifacts(str(Path(output_dir) / "adapter"), "model/adapter")
        mlflow.log_artifact(str(Path(output_dir) / "tosguard.json"), "model")
        mlflow.log_dict(summary, "model/train_summary.json")
        mlflow.log_metric("step_seconds.train", time.time() - started)
    return {**summary, "model_uri": uri, "reused": reused}


def evaluate_job(tokenized_dir: str, model_dir: str, model_store_uri: str, data_hash: str, mlflow_run_id: str,
                 gate_floor: float, gate_tolerance: float, deploy_requested: bool, run_label: str,
                 scores_path: str, report_path: str) -> dict:
    """Score on the test split, decide the gate against the champion, write the report and
    the model card into the store, register the version, move `champion` if it passed."""
    from components.evaluate import evaluate, report_markdown
    from components.gate import decide, report_section
    from components.tracking import champion, register_version

    started = time.time()
    scores = evaluate(model_dir, tokenized_dir)
    summary_path = Path(model_dir) / COMPLETE_MARK
    trained = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    card = json.loads((Path(model_dir) / "tosguard.json").read_text())
    with pipeline_run(mlflow_run_id, safe=f"The model and its scores are in the store at {model_store_uri}.") as mlflow:
        current = champion()
        decision = decide(scores["macro_f1"], gate_floor, gate_tolerance, current)
        report = report_markdown(scores, run_label) + report_section(decision, deploy_requested)
        scored = json.dumps({**scores, "gate": decision}, indent=2)
        Path(report_path).write_text(report)
        Path(scores_path).write_text(scored)
        info = {
            "version": Path(model_store_uri).name, "base_model": card["base_model"], "method": card["method"],
            "data_hash": data_hash, "source": trained.get("source", "?"),
            "code_version": trained.get("code_version", code_version()), "mlflow_run_id": mlflow_run_id,
            "best_epoch": card.get("best_epoch"), "best_val_macro_f1": card.get("val_macro_f1", float("nan")),
            "thresholds": dict(zip(card["categories"], card["thresholds"])), "scores": scores,
        }
        storage.write_text(storage.join(model_store_uri, "report.md"), report)
        storage.write_text(storage.join(model_store_uri, "scores.json"), scored)
        storage.write_text(storage.join(model_store_uri, "MODEL_CARD.md"), model_card(info))
        version = register_version(
            model_store_uri, mlflow_run_id, promote=decision["passed"],
            tags={"data_hash": data_hash, "test_macro_f1": round(scores["macro_f1"], 4),
                  "test_micro_f1": round(scores["micro_f1"], 4), "base_model": card["base_model"],
                  "method": card["method"], "gate_passed": decision["passed"], "code_version": info["code_version"]},
        )
        decision["model_version"] = version
        mlflow.log_metrics({"test_micro_f1": scores["micro_f1"], "test_macro_f1": scores["macro_f1"]})
        mlflow.log_metrics({f"test_f1.{k.replace(' ', '_').replace('(', '').replace(')', '')}": v
                            for k, v in scores["per_category_f1"].items()})
        mlflow.set_tags({"gate.passed": decision["passed"], "gate": json.dumps(decision), "model_version": version})
        mlflow.log_artifact(report_path, "evaluation")
        mlflow.log_dict({**scores, "gate": decision}, "evaluation/scores.json")
        mlflow.log_dict(decision, "evaluation/gate.json")
        mlflow.log_metric("step_seconds.evaluate", time.time() - started)
    log.info("gate: %s", decision["reason"])
    return {"scores": scores, "gate": decision, "model_version": version}
