"""Step 3, train: LoRA / 4-bit NF4 QLoRA / full fine-tuning of the clause classifier.

Dynamic padding per batch over length-grouped batches, a head started at the label
prior, validation LexGLUE macro-F1 after each epoch with early stopping, and the best
epoch's weights restored before export.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from components.config import TrainConfig
from components.labels import CATEGORIES
from components.metrics import lexglue_scores, predict_from_probabilities
from components.modeling import build_classifier, export, pad_batch, resolve_base_model, score_encoded

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator, group: int = 50):
    """Shuffle, then sort by length inside windows of `group` batches, then shuffle batches.

    Rows of similar length share a batch, so dynamic padding adds few pad tokens, while
    the window keeps the epoch's order random.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _subset(ds, n: int, seed: int):
    if n and n < len(ds):
        return ds.shuffle(seed=seed).select(range(n))
    return ds


def _validate(model, ds, pad_id: int, threshold: float) -> dict:
    scores = score_encoded(model, ds["input_ids"], pad_id)
    gold = np.asarray(ds["label_vector"], dtype=np.int64)
    return lexglue_scores(gold, predict_from_probabilities(scores, [threshold] * len(CATEGORIES)))


def train(tokenized_dir: str, config: TrainConfig, output_dir: str, mlflow=None) -> dict:
    """Train, pick the best validation epoch, export to output_dir. Returns a summary.

    mlflow: an active MLflow module (inside tracking.pipeline_run) or None.
    """
    from datasets import load_from_disk
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    config = config.validate()
    seed_everything(config.seed)
    base_path = resolve_base_model(config.base_model)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    compute_dtype = torch.bfloat16 if cuda else torch.float32

    data = load_from_disk(tokenized_dir)
    train_ds = _subset(data["train"], config.train_subset, config.seed)
    val_ds = _subset(data["validation"], config.validation_subset, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(tokenized_dir) / "tokenizer"))
    pad_id = tokenizer.pad_token_id

    targets = [t for t in config.target_modules.split(",") if t] or None
    model = build_classifier(
        base_path, config.method, config.lora_r, config.lora_alpha, config.lora_dropout, targets, compute_dtype
    )
    labels = np.asarray(train_ds["label_vector"], dtype=np.float32)
    model.init_bias_to_prior(labels.mean(axis=0))
    if config.method != "qlora":  # 4-bit weights are placed on load
        model.to(device)
    else:
        model.classifier.to(device)

    head_params = list(model.classifier.parameters())
    head_ids = {id(p) for p in head_params}
    encoder_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_ds) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    # Log at least ~20 points of the loss curve, even for short runs.
    log_every = max(1, min(config.log_every, total_steps // 20))

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "train: %s on %s, %d rows, %d steps, trainable %d of %d parameters, device %s",
        config.method, config.base_model, len(train_ds), total_steps, trainable, total, device,
    )
    if mlflow:
        mlflow.log_params({f"train.{k}": v for k, v in vars(config).items()})
        mlflow.log_params({"train.trainable_parameters": trainable, "train.total_parameters": total})

    lengths = list(train_ds["length"])
    ids_column = train_ds["input_ids"]
    rng = np.random.default_rng(config.seed)
    best = {"macro_f1": -1.0, "epoch": 0, "state": None}
    history, step, stale = [], 0, 0
    started = time.time()
    progress = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
    for epoch in range(1, config.epochs + 1):
        model.train()
        running, seen = 0.0, 0
        for batch in length_grouped_batches(lengths, config.batch_size, rng):
            ids, mask = pad_batch([ids_column[i] for i in batch], pad_id)
            target = torch.from_numpy(labels[batch]).to(device)
            with torch.autocast(device.type, dtype=compute_dtype, enabled=cuda):
                logits = model(ids.to(device), mask.to(device))
            loss = loss_fn(logits.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder_params + head_params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running += loss.item()
            seen += 1
            progress.update(1)
            progress.set_postfix(epoch=epoch, loss=f"{running / seen:.4f}")
            if mlflow and step % log_every == 0:
                mlflow.log_metric("train_loss", running / seen, step=step)
            if step >= total_steps:
                break
        val = _validate(model, val_ds, pad_id, config.threshold)
        record = {
            "epoch": epoch, "step": step, "train_loss": running / max(seen, 1),
            "val_micro_f1": val["micro_f1"], "val_macro_f1": val["macro_f1"],
        }
        history.append(record)
        log.info(
            "epoch %d: train loss %.4f, validation micro/macro-F1 %.1f/%.1f",
            epoch, record["train_loss"], val["micro_f1"], val["macro_f1"],
        )
        if mlflow:
            mlflow.log_metrics(
                {"val_micro_f1": val["micro_f1"], "val_macro_f1": val["macro_f1"], "epoch_train_loss": record["train_loss"]},
                step=step,
            )
        if val["macro_f1"] > best["macro_f1"]:
            snapshot = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
            best = {"macro_f1": val["macro_f1"], "epoch": epoch, "state": snapshot}
            stale = 0
        else:
            stale += 1
        if step >= total_steps or (config.patience and stale >= config.patience):
            break
    progress.close()
    train_seconds = time.time() - started

    # Restore the best validation epoch before export.
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in best["state"].items():
            params[name].copy_(value)
    card = {
        "categories": list(CATEGORIES),
        "thresholds": [config.threshold] * len(CATEGORIES),
        "base_model": config.base_model,
        "method": config.method,
        "max_length": config.max_length,
        "pooling": "mean",
        "best_epoch": best["epoch"],
        "val_macro_f1": best["macro_f1"],
    }
    model.cpu() if config.method != "qlora" else None
    export(model, base_path, config.method, tokenizer, output_dir, card)
    summary = {
        "best_epoch": best["epoch"],
        "best_val_macro_f1": best["macro_f1"],
        "steps": step,
        "train_seconds": train_seconds,
        "history": history,
        "trainable_parameters": trainable,
    }
    if mlflow:
        mlflow.log_metrics({"best_val_macro_f1": best["macro_f1"], "best_epoch": best["epoch"], "train_seconds": train_seconds})
    log.info("train: best epoch %d (validation macro-F1 %.1f) in %.0f s", best["epoch"], best["macro_f1"], train_seconds)
    return summary
