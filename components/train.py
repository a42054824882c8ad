"""Step 3, train: LoRA / 4-bit NF4 QLoRA / full fine-tuning of the clause classifier.

Dynamic padding per batch over length-grouped batches, a head started at the label
prior, validation LexGLUE macro-F1 after each epoch with early stopping, and the best
epoch's weights restored before export.
"""
from __future__ import annotations

import logging
import math
import os
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


def checkpoint_dir_for(config: TrainConfig, data_fingerprint: str) -> Path:
    """Where a run's checkpoints live: keyed by the config and the data, so re-running the
    same step (after a kill or a preemption) finds them. TOSGUARD_CHECKPOINT_DIR can point
    at durable storage (a mounted volume in a cluster)."""
    import hashlib
    import os

    from components.config import home

    root = Path(os.environ.get("TOSGUARD_CHECKPOINT_DIR", home() / "checkpoints"))
    key = hashlib.sha256((config.to_json() + data_fingerprint).encode()).hexdigest()[:16]
    return root / key


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(
    tokenized_dir: str, config: TrainConfig, output_dir: str, mlflow=None, checkpoint_dir: str | None = None
) -> dict:
    """Train, pick the best validation epoch, export to output_dir. Returns a summary.

    mlflow: an active MLflow module (inside tracking.pipeline_run) or None.
    checkpoint_dir: where to keep resumable checkpoints (default: keyed by config and data
    under the tosguard home). A run finding a checkpoint there continues from it.
    """
    from datasets import load_from_disk
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    config = config.validate()
    seed_everything(config.seed)
    base_path = resolve_base_model(config.base_model)
    cuda = torch.cuda.is_available()
    # Data-parallel under torchrun: one process per GPU (gloo on CPU), each on its share of
    # every epoch's batches; gradients are averaged by DistributedDataParallel.
    rank, world, local_rank = _distributed()
    if cuda and world > 1:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    compute_dtype = torch.bfloat16 if cuda else torch.float32

    data = load_from_disk(tokenized_dir)
    train_ds = _subset(data["train"], config.train_subset, config.seed)
    val_ds = _subset(data["validation"], config.validation_subset, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(tokenized_dir) / "tokenizer"))
    pad_id = tokenizer.pad_token_id

    model = build_classifier(
        base_path, config.method, config.lora_r, config.lora_alpha, config.lora_dropout, config.target_list(),
        compute_dtype, config.gradient_checkpointing,
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
    steps_per_epoch = math.ceil(len(train_ds) / config.batch_size) // world
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    # Log at least ~20 points of the loss curve, even for short runs.
    log_every = max(1, min(config.log_every, total_steps // 20))

    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "train: %s on %s, %d rows, %d steps, trainable %d of %d parameters, device %s%s",
        config.method, config.base_model, len(train_ds), total_steps, trainable, total, device,
        f", rank {rank} of {world}" if world > 1 else "",
    )

    lengths = list(train_ds["length"])
    ids_column = train_ds["input_ids"]
    rng = np.random.default_rng(config.seed)
    best = {"macro_f1": -1.0, "epoch": 0, "state": None}
    history, step, stale = [], 0, 0
    start_epoch, start_batch, running, seen = 1, 0, 0.0, 0
    epoch_rng_state = None

    fingerprint = f"{len(train_ds)}:{sum(lengths)}:{labels.sum():.0f}:{Path(tokenized_dir).name}"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else checkpoint_dir_for(config, fingerprint)
    ckpt_path = ckpt_dir / "checkpoint.pt"
    resumed_from = 0
    if config.checkpoint_every and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _restore_rng(ckpt["rng"])
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        epoch_rng_state, running, seen = ckpt["epoch_rng_state"], ckpt["running"], ckpt["seen"]
        history, best, stale = ckpt["history"], ckpt["best"], ckpt["stale"]
        resumed_from = step
        log.info("train: resuming from checkpoint %s at step %d (epoch %d, batch %d)", ckpt_path, step,
                 start_epoch, start_batch)
    if mlflow:
        mlflow.log_params({f"train.{k}": v for k, v in vars(config).items()})
        mlflow.log_params({"train.trainable_parameters": trainable, "train.total_parameters": total})
        if resumed_from:
            mlflow.set_tag("train.resumed_from_step", resumed_from)

    started = time.time()
    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0,
                    disable=rank != 0)
    for epoch in range(start_epoch, config.epochs + 1):
        if step >= total_steps:
            break
        resuming_epoch = resumed_from and epoch == start_epoch
        if resuming_epoch:
            rng.bit_generator.state = epoch_rng_state  # the same batch order as before the kill
        else:
            running, seen = 0.0, 0
        epoch_rng_state = rng.bit_generator.state
        model.train()
        batches = length_grouped_batches(lengths, config.batch_size, rng)
        if world > 1:  # every rank draws the same order, then takes its share
            batches = batches[: len(batches) // world * world][rank::world]
        for index, batch in enumerate(batches):
            if resuming_epoch and index < start_batch:
                continue
            ids, mask = pad_batch([ids_column[i] for i in batch], pad_id)
            target = torch.from_numpy(labels[batch]).to(device)
            with torch.autocast(device.type, dtype=compute_dtype, enabled=cuda):
                logits = forward(ids.to(device), mask.to(device))
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
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps and rank == 0:
                _save_checkpoint(ckpt_path, {
                    "trainable": {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                    "step": step, "epoch": epoch, "batch": index + 1, "epoch_rng_state": epoch_rng_state,
                    "running": running, "seen": seen, "history": history, "best": best, "stale": stale,
                })
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
    if config.method != "qlora":
        model.cpu()
    if rank == 0:
        export(model, base_path, config.method, tokenizer, output_dir, card)
        # Finished and exported: the checkpoint has done its job.
        ckpt_path.unlink(missing_ok=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary = {
        "best_epoch": best["epoch"],
        "best_val_macro_f1": best["macro_f1"],
        "steps": step,
        "resumed_from_step": resumed_from,
        "train_seconds": train_seconds,
        "history": history,
        "trainable_parameters": trainable,
        "world_size": world,
    }
    if mlflow:
        mlflow.log_metrics({"best_val_macro_f1": best["macro_f1"], "best_epoch": best["epoch"], "train_seconds": train_seconds})
    log.info("train: best epoch %d (validation macro-F1 %.1f) in %.0f s", best["epoch"], best["macro_f1"], train_seconds)
    return summary


def train_data_parallel(tokenized_dir: str, config: TrainConfig, output_dir: str, processes: int,
                        checkpoint_dir: str | None = None) -> dict:
    """Train with `processes` data-parallel workers under torchrun (one per GPU; gloo
    processes on a machine without CUDA). Rank 0 exports and writes the summary."""
    import json
    import subprocess
    import sys
    import tempfile

    if processes < 1:
        raise ValueError(f"processes must be >= 1 (got {processes})")
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise ValueError(f"{processes} data-parallel workers asked for, {torch.cuda.device_count()} GPU(s) visible")
    with tempfile.TemporaryDirectory(prefix="tosguard-ddp-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "components.train", "--tokenized", tokenized_dir, "--config", config.to_json(),
            "--output", output_dir, "--summary", str(summary_path),
        ]
        if checkpoint_dir:
            command += ["--checkpoint-dir", checkpoint_dir]
        env = dict(os.environ)
        if not torch.cuda.is_available():  # share the cores out instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        log.info("train: %d data-parallel workers: %s", processes, " ".join(command[:6]))
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"data-parallel training failed (torchrun exit code {done.returncode}); "
                               "re-run the step to resume from the last checkpoint")
        return json.loads(summary_path.read_text())


def main(argv: list[str] | None = None) -> int:
    """Worker entry point under torchrun: python -m components.train --tokenized ... --config JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m components.train")
    parser.add_argument("--tokenized", required=True)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    parser.add_argument("--output", required=True)
    parser.add_argument("--summary", required=True, help="where rank 0 writes the summary JSON")
    parser.add_argument("--checkpoint-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = train(args.tokenized, TrainConfig.from_json(args.config), args.output,
                    checkpoint_dir=args.checkpoint_dir)
    rank, world, _ = _distributed()
    if rank == 0:
        Path(args.summary).write_text(json.dumps(summary, default=str))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
