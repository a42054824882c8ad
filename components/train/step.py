"""The train step: reuse the complete model the store holds for this data and config, or
train one (in this process, or data-parallel under torchrun), keep it in the store, and
record it in MLflow.

The model reaches the store before MLflow is asked for anything it must accept, so an
MLflow outage fails the step with the model already safe; the re-run finds it there.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tosguard.components import figures, storage
from tosguard.components.config import ADAPTER_DIR, CARD_FILE, COMPLETE_MARK, TrainConfig
from tosguard.components.store import (
    code_version, mark_complete, model_key, model_uri, new_version, newest_complete, save_model, version_of,
)
from tosguard.components.tracking import pipeline_run

log = logging.getLogger(__name__)


def _log_curves(mlflow, summary: dict) -> None:
    """Per-epoch validation metrics of a training that did not log live (reused, or torchrun workers)."""
    for record in summary["history"]:
        mlflow.log_metrics({"val_micro_f1": record["val_micro_f1"], "val_macro_f1": record["val_macro_f1"],
                            "epoch_train_loss": record["train_loss"]}, step=record["step"])
    mlflow.log_metrics({"best_val_macro_f1": summary["best_val_macro_f1"], "best_epoch": summary["best_epoch"],
                        **({"val_macro_f1_out_of_fold": summary["val_macro_f1_out_of_fold"]}
                           if summary.get("val_macro_f1_out_of_fold") is not None else {})})


class _LossRecorder:
    """The RunLogger as train() sees it: every call goes through, and the per-step train
    loss it logs is kept for the training-curves figure (after a resume: from there on)."""

    def __init__(self, logger):
        self.logger = logger
        self.losses: list[tuple[int, float]] = []

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "train_loss" in metrics and step is not None:
            self.losses.append((int(step), float(metrics["train_loss"])))
        self.logger.log_metrics(metrics, step=step)

    def __getattr__(self, name):
        return getattr(self.logger, name)


def _draw_curves(summary: dict, output_dir: str, losses=()):
    """The training-curves figure, also written as training_curves.png into the model folder
    (it is stored with the model). A picture never costs a trained model: a drawing error
    is logged and the step goes on without it (returns None)."""
    try:
        figure = figures.training_curves(summary.get("history", []), losses, best_epoch=summary.get("best_epoch"))
        (Path(output_dir) / figures.TRAINING_CURVES_FILE).write_bytes(figures.png_bytes(figure))
        return figure
    except Exception as exc:  # noqa: BLE001 (a figure is optional)
        log.warning("train: could not draw the training curves (%s: %s)", type(exc).__name__, exc)
        return None


def _train_with_trainjob(tokenized_dir: str, key: str, config: TrainConfig, uri: str, store: str, checkpoints: str,
                         nodes: int, gpus: int, image: str, namespace: str, output_dir: str,
                         teacher: str | None = None) -> dict:
    """Kubeflow Trainer: the nodes read the tokenized data from the store, rank 0 uploads
    the model to `uri`; the model is then fetched into output_dir. Returns the summary."""
    from tosguard.components.train.launch import RESULT_FILE
    from tosguard.components.train.trainjob import build_train_job, job_name, run_train_job

    if not storage.is_s3(store):
        raise ValueError("training as a TrainJob needs an s3:// store: its nodes read the data from it and "
                         "write checkpoints and the model to it")
    tokenized = storage.join(store, "tokenized", key)
    if not storage.exists(storage.join(tokenized, ".complete")):
        storage.upload_folder(tokenized_dir, tokenized)
        storage.write_text(storage.join(tokenized, ".complete"), key)
    worker_args = ["--tokenized", tokenized, "--config", config.to_json(), "--output", "/tmp/tosguard-model",
                   "--summary", "/tmp/tosguard-train-summary.json", "--checkpoint-dir", checkpoints, "--upload", uri]
    if teacher:  # in the s3:// store, where every node reads it
        worker_args += ["--teacher", teacher]
    job = build_train_job(job_name(uri), namespace, image, nodes, max(gpus, 1), worker_args, gpus_per_node=gpus)
    run_train_job(job)
    storage.download_folder(uri, output_dir)
    return json.loads(storage.read_text(storage.join(uri, RESULT_FILE)))


def teachers_sha(uri: str) -> str:
    from tosguard.components import teachers

    return teachers.record(uri)["sha256"]


def _teacher(config: TrainConfig, store: str, data_hash: str, tokenized_dir: str) -> str | None:
    """With distillation on: the store URI of the teacher's train-split scores (teachers.py)."""
    if not config.distill_weight:
        return None
    from datasets import load_from_disk

    from tosguard.components import teachers

    rows = len(load_from_disk(tokenized_dir)["train"])
    return teachers.ensure(store, data_hash, config.teacher, rows)


def run_step(tokenized_dir: str, data_hash: str, train_config: str, mlflow_run_id: str, output_dir: str,
             store: str = "", source: str = "", gpus: int = 1, reuse: bool = True, trainer: str = "pod",
             nodes: int = 1, trainjob_image: str = "", namespace: str = "tosguard") -> dict:
    """Train (or reuse) and store the model; returns the summary with `model_uri` and `reused`.

    train_config: the validated settings (JSON) open-run handed on; `auto` resolves here.
    reuse=False trains afresh even when the store holds this model (a forced fresh run).
    trainer: "pod" trains in this process (data-parallel over `gpus` under torchrun when
    gpus > 1); "trainjob" runs a Kubeflow Trainer TrainJob of `nodes` x `gpus` workers.
    """
    import torch

    from tosguard.components.train.launch import train_data_parallel
    from tosguard.components.train.loop import train

    if trainer not in ("pod", "trainjob"):
        raise ValueError(f"trainer must be 'pod' or 'trainjob' (got {trainer!r})")
    cuda = gpus > 0 if trainer == "trainjob" else torch.cuda.is_available()
    config = TrainConfig.from_json(train_config).resolved(cuda=cuda)
    # Checkpoints live under the store (S3 in a cluster), so a retried step resumes even on
    # another node; TOSGUARD_CHECKPOINT_DIR (a mounted volume, say) overrides.
    checkpoints = os.environ.get("TOSGUARD_CHECKPOINT_DIR") or (storage.join(store, "checkpoints") if store else None)
    started = time.time()
    # The teacher's scores are part of what is trained on: their sha256 joins the key.
    teacher = _teacher(config, store, data_hash, tokenized_dir)
    teacher_sha = {"teacher_sha256": teachers_sha(teacher)} if teacher else None
    key = model_key(data_hash, config.key_json(teacher_sha))
    found = newest_complete(store, key) if reuse else None
    if found:
        version = version_of(found[0])
    elif trainer == "trainjob":  # one version per pipeline run: a retried step follows the same TrainJob
        version = f"{key}/run-{mlflow_run_id}"
    else:
        version = new_version(key)
    uri = found[0] if found else model_uri(store, version)
    with pipeline_run(mlflow_run_id, safe=f"The trained model is safe in the store at {uri}.") as mlflow:
        summary = found[1] if found else None
        if summary:
            log.info("train: the store already holds a complete model for this data and config at %s; reusing it",
                     uri)
            storage.download_folder(uri, output_dir)
            _log_curves(mlflow, summary)
            # A model stored before the figure existed has none: draw it here (not stored).
            curves = Path(output_dir) / figures.TRAINING_CURVES_FILE
            figure = None if curves.is_file() else _draw_curves(summary, output_dir)
            reused = True
        else:
            losses = ()  # the per-step loss, where this process trains and sees it
            if trainer == "trainjob":
                summary = _train_with_trainjob(tokenized_dir, key, config, uri, store, checkpoints, nodes, gpus,
                                               trainjob_image, namespace, output_dir, teacher)
                _log_curves(mlflow, summary)
            elif gpus > 1:  # workers run under torchrun; their curves are recorded once they finish
                summary = train_data_parallel(tokenized_dir, config, output_dir, gpus, checkpoint_dir=checkpoints,
                                              teacher=teacher)
                _log_curves(mlflow, summary)
            else:
                recorder = _LossRecorder(mlflow)
                summary = train(tokenized_dir, config, output_dir, mlflow=recorder, checkpoint_dir=checkpoints,
                                teacher=teacher)
                losses = recorder.losses
            summary.update({
                "version": version, "data_hash": data_hash, "base_model": config.base_model, "method": config.method,
                "source": source, "code_version": code_version(), "mlflow_run_id": mlflow_run_id,
                "config": config.to_dict(), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            figure = _draw_curves(summary, output_dir, losses)
            curves = Path(output_dir) / figures.TRAINING_CURVES_FILE
            if trainer == "trainjob":  # the workers uploaded the files; the figure, then the mark, go last
                if figure is not None:
                    storage.upload_file(curves, storage.join(uri, figures.TRAINING_CURVES_FILE))
                mark_complete(uri, summary)
            else:
                stored = save_model(output_dir, uri, summary)
                log.info("train: model stored at %s (%d files, %.1f MiB)", uri, stored["files"],
                         stored["bytes"] / 2**20)
            (Path(output_dir) / COMPLETE_MARK).write_text(json.dumps(summary, indent=2, default=str))
            reused = False
        if teacher:
            mlflow.set_tags({"train.teacher": config.teacher, "train.teacher_uri": teacher})
        mlflow.set_tags({"model_uri": uri, "model_store_version": version, "train.reused": reused,
                         "train.method_used": config.method})
        if (Path(output_dir) / ADAPTER_DIR).is_dir():  # LoRA and QLoRA; full fine-tuning has none
            mlflow.log_artifacts(str(Path(output_dir) / ADAPTER_DIR), "model/adapter")
        mlflow.log_artifact(str(Path(output_dir) / CARD_FILE), "model")
        if figure is not None:
            mlflow.log_figure(figure, f"model/{figures.TRAINING_CURVES_FILE}")
        elif curves.is_file():  # the reused model's stored picture
            mlflow.log_artifact(str(curves), "model")
        mlflow.log_dict(summary, "model/train_summary.json")
        mlflow.log_metric("step_seconds.train", time.time() - started)
    return {**summary, "model_uri": uri, "reused": reused}


def summary_outputs(summary: dict, data_hash: str, model, curves) -> str:
    """What the KFP train tasks show: the model artifact's metadata and the validation curve
    as Metrics on the run page; returns the model's store URI."""
    model.metadata.update({k: summary[k] for k in ("method", "base_model", "best_epoch", "reused")})
    model.metadata.update({"data_hash": data_hash, "store_uri": summary["model_uri"]})
    for record in summary["history"]:
        curves.log_metric(f"epoch{record['epoch']}_val_macro_f1", round(record["val_macro_f1"], 2))
        curves.log_metric(f"epoch{record['epoch']}_train_loss", round(record["train_loss"], 5))
    curves.log_metric("best_val_macro_f1", round(summary["best_val_macro_f1"], 2))
    if summary.get("val_macro_f1_out_of_fold") is not None:  # the exported model's, with a refit lexical side
        curves.log_metric("val_macro_f1_out_of_fold", round(summary["val_macro_f1_out_of_fold"], 2))
    return summary["model_uri"]
