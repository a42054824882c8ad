"""The training loop: LoRA / 4-bit NF4 QLoRA / full fine-tuning of the clause classifier.

Dynamic padding per batch over length-grouped batches, a head started at the label
prior, validation LexGLUE macro-F1 after each epoch with early stopping, and the best
epoch's weights restored before export. Checkpoints (checkpoint.py) make a killed run
resumable; under torchrun (launch.py) each worker trains on its share of every epoch.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tosguard.components import calibration, lexical
from tosguard.components.config import TrainConfig
from tosguard.components.labels import CATEGORIES
from tosguard.components.metrics import lexglue_scores, predict_from_probabilities
from tosguard.components.modeling import build_classifier, export, pad_batch, resolve_base_model, score_encoded
from tosguard.components.progress import ProgressLine
from tosguard.components.train import checkpoint

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


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bf16 matrix products natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe
        return False


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _subset(ds, n: int, seed: int):
    if n and n < len(ds):
        return ds.shuffle(seed=seed).select(range(n))
    return ds


@dataclass
class Progress:
    """Where the loop stands; what a checkpoint saves besides the weights and optimizer."""

    step: int = 0
    epoch: int = 1
    batch: int = 0  # batches of `epoch` already done
    epoch_rng_state: dict | None = None  # the batch-order RNG at the start of `epoch`
    running: float = 0.0  # summed loss over `seen` batches of this epoch
    seen: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"macro_f1": -1.0, "epoch": 0, "state": None})
    stale: int = 0  # epochs since validation macro-F1 last improved


@dataclass
class Setup:
    """Everything one training run works with, built in a fixed order so a seed reproduces."""

    config: TrainConfig
    base_path: str
    device: torch.device
    autocast: bool  # the training step runs under bf16 autocast
    rank: int
    world: int
    train_ds: object
    val_ds: object
    tokenizer: object
    labels: np.ndarray
    soft: np.ndarray | None  # the teacher's scores per train row (distillation), or None
    lexical: lexical.LexicalModel | None  # the lexical side (lexical_weight > 0), or None
    val_lexical: np.ndarray | None  # its logits on the validation rows
    model: torch.nn.Module
    forward: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    clipped: list
    total_steps: int
    log_every: int


def _set_up(tokenized_dir: str, config: TrainConfig, teacher_scores: np.ndarray | None = None) -> Setup:
    from datasets import load_from_disk
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    seed_everything(config.seed)
    base_path = resolve_base_model(config.base_model)
    cuda = torch.cuda.is_available()
    # Data-parallel under torchrun: one process per GPU (gloo on CPU), each on its share of
    # every epoch's batches; gradients are averaged by DistributedDataParallel.
    rank, world, local_rank = distributed()
    if cuda and world > 1:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    compute_dtype = torch.bfloat16 if cuda else torch.float32
    # bf16 autocast for the training step: always on CUDA; on a CPU only when asked and native.
    autocast = cuda or (config.cpu_bf16 and cpu_bf16_native())
    if config.cpu_bf16 and not cuda and not autocast and rank == 0:
        log.info("cpu_bf16: this CPU has no native bf16 (AVX512-BF16/AMX); training in fp32")

    data = load_from_disk(tokenized_dir)
    train_ds = data["train"]
    if config.distill_weight:
        if teacher_scores is None:
            raise ValueError("distill_weight is set but no teacher scores were given")
        if teacher_scores.shape != (len(train_ds), len(CATEGORIES)):
            raise ValueError(f"teacher scores have shape {teacher_scores.shape}; the train split needs "
                             f"({len(train_ds)}, {len(CATEGORIES)})")
        # A column, so a train subset keeps each row's teacher scores beside it.
        train_ds = train_ds.add_column("teacher_scores", teacher_scores.astype(np.float32).tolist())
    train_ds = _subset(train_ds, config.train_subset, config.seed)
    val_ds = _subset(data["validation"], config.validation_subset, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(tokenized_dir) / "tokenizer"))

    model = build_classifier(
        base_path, config.method, config.lora_r, config.lora_alpha, config.lora_dropout, config.target_list(),
        compute_dtype, config.gradient_checkpointing,
    )
    labels = np.asarray(train_ds["label_vector"], dtype=np.float32)
    soft = np.asarray(train_ds["teacher_scores"], dtype=np.float32) if config.distill_weight else None
    model.init_bias_to_prior(labels.mean(axis=0))
    lexical_side, val_lexical = _fit_lexical(config, train_ds, labels, val_ds, tokenizer)
    if config.method != "qlora":  # 4-bit weights are placed on load
        model.to(device)
    else:
        model.classifier.to(device)

    head_params = list(model.classifier.parameters())
    head_ids = {id(p) for p in head_params}
    encoder_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": config.learning_rate}, {"params": head_params, "lr": config.head_learning_rate}],
        weight_decay=config.weight_decay,
    )
    # One optimizer step takes world x gradient_accumulation micro-batches of batch_size.
    steps_per_epoch = math.ceil(len(train_ds) / config.batch_size) // (world * config.gradient_accumulation)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    return Setup(
        config=config, base_path=base_path, device=device, autocast=autocast, rank=rank, world=world,
        train_ds=train_ds, val_ds=val_ds, tokenizer=tokenizer, labels=labels, soft=soft, lexical=lexical_side,
        val_lexical=val_lexical, model=model, forward=forward,
        optimizer=optimizer, scheduler=scheduler, clipped=encoder_params + head_params, total_steps=total_steps,
        # Log at least ~20 points of the loss curve, even for short runs.
        log_every=max(1, min(config.log_every, total_steps // 20)),
    )


def _fit_lexical(config: TrainConfig, train_ds, labels: np.ndarray, val_ds, tokenizer):
    """The lexical side fit on the train rows' text (as the encoder sees it: cut where the
    tokenizer truncates) and gold labels, and its validation logits; (None, None) when
    lexical_weight is 0. Seconds on 2 cores; refit (identically) after a resume rather than
    checkpointed."""
    if not config.lexical_weight:
        return None, None
    started = time.time()
    seen = lexical.encoder_view(tokenizer, train_ds["text"], config.max_length)
    side = lexical.LexicalModel.fit(seen, labels, config.lexical_c, config.lexical_weight)
    val_logits = side.logits(lexical.encoder_view(tokenizer, val_ds["text"], config.max_length))
    log.info("lexical: %d terms fit on %d clauses in %.1f s; blended at weight %.2f", len(side.vocabulary),
             len(train_ds), time.time() - started, config.lexical_weight)
    return side, val_logits


def _validate(s: Setup) -> tuple[dict, np.ndarray, dict | None, np.ndarray]:
    """Validation LexGLUE scores at the configured threshold and the scores they came from
    (blended with the lexical side where there is one), the encoder's own LexGLUE scores
    (None without a lexical side), and the encoder's own sigmoid scores."""
    encoder = score_encoded(s.model, s.val_ds["input_ids"], s.tokenizer.pad_token_id)
    gold = np.asarray(s.val_ds["label_vector"], dtype=np.int64)
    thresholds = [s.config.threshold] * len(CATEGORIES)
    encoder_only, scores = None, encoder
    if s.lexical is not None:
        encoder_only = lexglue_scores(gold, predict_from_probabilities(encoder, thresholds))
        scores = lexical.blend(encoder, s.val_lexical, s.lexical.weight)
    return lexglue_scores(gold, predict_from_probabilities(scores, thresholds)), scores, encoder_only, encoder


def _refit_lexical(s: Setup, encoder_val: np.ndarray, val_gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lexical_refit: the lexical side fit again on the train and validation clauses (the
    one exported), and the validation scores calibration is fit on: the encoder's blended
    with out-of-fold lexical logits, so no clause is scored by a side that was fit on it.
    Returns (those blended scores, the out-of-fold logits)."""
    started = time.time()
    config = s.config
    seen_train = lexical.encoder_view(s.tokenizer, s.train_ds["text"], config.max_length)
    seen_val = lexical.encoder_view(s.tokenizer, s.val_ds["text"], config.max_length)
    s.lexical, out_of_fold = lexical.LexicalModel.cross_fit(
        seen_train, s.labels, seen_val, val_gold, config.lexical_c, config.lexical_weight,
        folds=min(5, len(seen_val)), seed=config.seed)
    log.info("lexical: refit on %d train + %d validation clauses (%d terms) and scored out of fold in %.1f s",
             len(seen_train), len(seen_val), len(s.lexical.vocabulary), time.time() - started)
    return lexical.blend(encoder_val, out_of_fold, s.lexical.weight), out_of_fold


class _Ticker:
    """One optimizer step done: the tqdm bar and, under `tosguard run`, its progress line."""

    def __init__(self, bar, progress: ProgressLine | None):
        self.bar, self.progress = bar, progress

    def tick(self, step: int, epoch: int, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}")
        if self.progress:
            self.progress.update(step, f"epoch {epoch}, loss {loss:.4f}")

    def close(self) -> None:
        self.bar.close()


def micro_batch_seed(seed: int, epoch: int, position: int) -> int:
    """The torch seed for one micro-batch, from its place in the epoch's whole batch order."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


def _train_epoch(s: Setup, p: Progress, rng: np.random.Generator, resuming: bool, ckpt_uri: str, mlflow, bar) -> None:
    """One epoch (or its rest after a resume) of optimizer steps; checkpoints on the way.

    An optimizer step takes world x gradient_accumulation consecutive micro-batches of the
    epoch's batch order: rank r takes positions r, r + world, ... of each step's share. When
    a step is split like that, dropout is seeded per micro-batch from its position, so two
    nodes of one worker, one node of two workers and one worker accumulating two
    micro-batches draw the same masks and reach the same weights. An unsplit step (one
    worker, no accumulation) keeps the single RNG stream of the measured default recipe.
    """
    config = s.config
    accumulate = config.gradient_accumulation
    split = s.world > 1 or accumulate > 1
    skip = p.batch if resuming else 0  # micro-batches this epoch did before the kill
    if resuming:
        rng.bit_generator.state = p.epoch_rng_state  # the same batch order as before the kill
    else:
        p.running, p.seen = 0.0, 0
    p.epoch_rng_state = rng.bit_generator.state
    s.model.train()
    batches = length_grouped_batches(list(s.train_ds["length"]), config.batch_size, rng)
    # Every rank draws the same order, keeps whole steps only, then takes its share.
    positions = list(range(len(batches) // (s.world * accumulate) * s.world * accumulate))[s.rank :: s.world]
    ids_column, pad_id = s.train_ds["input_ids"], s.tokenizer.pad_token_id
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step_loss = 0.0
    for index, position in enumerate(positions):
        if index < skip:
            continue
        batch = batches[position]
        if split:
            torch.manual_seed(micro_batch_seed(config.seed, p.epoch, position))
        last = (index + 1) % accumulate == 0  # this micro-batch ends an optimizer step
        # Under DDP only the step's last backward all-reduces; the others accumulate locally.
        syncing = contextlib.nullcontext() if last or s.world == 1 else s.forward.no_sync()
        with syncing:
            ids, mask = pad_batch([ids_column[i] for i in batch], pad_id)
            target = torch.from_numpy(s.labels[batch]).to(s.device)
            if s.soft is not None:  # the gold labels mixed with the teacher's scores
                w = config.distill_weight
                target = (1 - w) * target + w * torch.from_numpy(s.soft[batch]).to(s.device)
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
                logits = s.forward(ids.to(s.device), mask.to(s.device))
            loss = loss_fn(logits.float(), target)
            (loss / accumulate).backward()
        step_loss += loss.item() / accumulate
        if not last:
            continue
        loss, step_loss = step_loss, 0.0
        torch.nn.utils.clip_grad_norm_(s.clipped, 1.0)
        s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        p.running += loss
        p.seen += 1
        bar.tick(p.step, p.epoch, p.running / p.seen)
        if mlflow and p.step % s.log_every == 0:
            mlflow.log_metric("train_loss", p.running / p.seen, step=p.step)
        if config.checkpoint_every and p.step % config.checkpoint_every == 0 and p.step < s.total_steps and s.rank == 0:
            p.batch = index + 1
            checkpoint.save(ckpt_uri, s.model, s.optimizer, s.scheduler, vars(p))
        if p.step >= s.total_steps:
            break


def _end_of_epoch(s: Setup, p: Progress, mlflow) -> bool:
    """Validate, keep the best epoch's weights; True when training should stop.

    With a lexical side the epoch is still chosen by the encoder's own validation macro-F1,
    so the encoder trains and stops exactly as it would alone; the blend's validation
    scores are what calibration is fit on and what is reported. (Choosing on the blend
    stopped one seed at epoch 2, where the encoder alone was 4 points weaker on test.)"""
    val, val_scores, encoder_only, encoder_scores = _validate(s)
    chosen_by = encoder_only or val
    record = {"epoch": p.epoch, "step": p.step, "train_loss": p.running / max(p.seen, 1),
              "val_micro_f1": val["micro_f1"], "val_macro_f1": val["macro_f1"]}
    if encoder_only is not None:
        record["val_macro_f1_encoder"] = encoder_only["macro_f1"]
    p.history.append(record)
    log.info("epoch %d: train loss %.4f, validation micro/macro-F1 %.1f/%.1f%s", p.epoch, record["train_loss"],
             val["micro_f1"], val["macro_f1"],
             f" (encoder alone macro {encoder_only['macro_f1']:.1f})" if encoder_only is not None else "")
    if mlflow:
        mlflow.log_metrics({"val_micro_f1": val["micro_f1"], "val_macro_f1": val["macro_f1"],
                            "epoch_train_loss": record["train_loss"]}, step=p.step)
    if chosen_by["macro_f1"] > p.best.get("chosen_by", p.best["macro_f1"]):
        p.best = {"macro_f1": val["macro_f1"], "chosen_by": chosen_by["macro_f1"], "epoch": p.epoch,
                  "state": checkpoint.trainable_state(s.model), "val_scores": val_scores.tolist(),
                  "val_encoder": encoder_scores.tolist()}
        p.stale = 0
    else:
        p.stale += 1
    return p.step >= s.total_steps or bool(s.config.patience and p.stale >= s.config.patience)


def _refit_on_export(output_dir: str, val_ds, val_gold: np.ndarray, threshold: float,
                     val_lexical: np.ndarray | None) -> float | None:
    """QLoRA trains on a 4-bit base, but the export merges the adapter into the full-precision
    base, whose scores differ: fit the calibration and profiles again on the exported
    model's own validation scores, so what is served is what was fit. val_lexical: the
    lexical logits calibration was fit with (out of fold after a refit), or None. Returns
    the exported model's out-of-fold validation macro-F1 (None without a refit side)."""
    import json

    from tosguard.components.config import CARD_FILE
    from tosguard.components.modeling import load_exported

    model, tokenizer, card = load_exported(output_dir)
    scores = score_encoded(model, val_ds["input_ids"], tokenizer.pad_token_id)
    if val_lexical is not None and card.get("lexical"):
        scores = lexical.blend(scores, val_lexical, float(card["lexical"]["weight"]))
    out_of_fold = (card.get("lexical") or {}).get("fit_on", "train") != "train"
    fitted, out_of_fold_macro = _calibrate(scores, val_gold, threshold, out_of_fold)
    card.update(fitted)
    if out_of_fold_macro is not None:
        card["val_macro_f1_out_of_fold"] = out_of_fold_macro
    (Path(output_dir) / CARD_FILE).write_text(json.dumps(card, indent=2))
    return out_of_fold_macro


def _calibrate(scores: np.ndarray, val_gold: np.ndarray, threshold: float,
               out_of_fold: bool) -> tuple[dict, float | None]:
    """The card's calibration and decision profiles fit on validation scores; when those
    carry out-of-fold lexical logits (a refit side), the card says so and the validation
    macro-F1 they give is returned (else None)."""
    fitted = calibration.fit(scores, val_gold, threshold)
    if not out_of_fold:
        return fitted, None
    fitted["calibration"]["lexical_scores"] = "out of fold"
    macro = lexglue_scores(val_gold, predict_from_probabilities(scores, [threshold] * len(CATEGORIES)))["macro_f1"]
    return fitted, macro


def train(tokenized_dir: str, config: TrainConfig, output_dir: str, mlflow=None, checkpoint_dir: str | None = None,
          teacher: np.ndarray | str | None = None) -> dict:
    """Train, pick the best validation epoch, export to output_dir. Returns a summary.

    config: a concrete method (not `auto`; see TrainConfig.resolved).
    mlflow: a tracking.RunLogger (live curves) or None.
    teacher: with distill_weight > 0, the teacher's scores on the train split (rows x
    categories), or the store URI teachers.ensure gave for them.
    checkpoint_dir: a folder or s3:// URI under which the resumable checkpoint is kept,
    keyed by config and data (default: TOSGUARD_CHECKPOINT_DIR, else the tosguard home). A
    run finding its checkpoint there continues from it.
    """
    from tqdm.auto import tqdm

    config = config.validate()
    if config.method == "auto":
        raise ValueError("train needs a concrete method: resolve `auto` with TrainConfig.resolved() first")
    if isinstance(teacher, str):
        from tosguard.components import teachers

        teacher = teachers.read(teacher)
    s = _set_up(tokenized_dir, config, teacher)
    trainable = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in s.model.parameters())
    log.info("train: %s on %s, %d rows, %d steps, trainable %d of %d parameters, device %s%s",
             config.method, config.base_model, len(s.train_ds), s.total_steps, trainable, total, s.device,
             f", rank {s.rank} of {s.world}" if s.world > 1 else "")

    rng = np.random.default_rng(config.seed)
    lengths = list(s.train_ds["length"])
    fingerprint = f"{len(s.train_ds)}:{sum(lengths)}:{s.labels.sum():.0f}:{Path(tokenized_dir).name}"
    if s.soft is not None:  # another teacher's scores: another run
        import hashlib

        fingerprint += ":" + hashlib.sha256(s.soft.tobytes()).hexdigest()[:16]
    ckpt_uri = checkpoint.checkpoint_uri(config, fingerprint, checkpoint_dir)
    saved = checkpoint.restore(ckpt_uri, s.model, s.optimizer, s.scheduler) if config.checkpoint_every else None
    p = Progress(**saved) if saved else Progress()
    resumed_from = p.step
    if mlflow:
        mlflow.log_params({"train.trainable_parameters": trainable, "train.total_parameters": total})
        if resumed_from:
            mlflow.set_tag("train.resumed_from_step", resumed_from)

    started = time.time()
    bar = _Ticker(tqdm(total=s.total_steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=2.0, disable=s.rank != 0),
                  ProgressLine("train", s.total_steps) if s.rank == 0 else None)
    first_epoch = p.epoch
    for epoch in range(first_epoch, config.epochs + 1):
        if p.step >= s.total_steps:
            break
        p.epoch = epoch
        _train_epoch(s, p, rng, bool(resumed_from) and epoch == first_epoch, ckpt_uri, mlflow, bar)
        if _end_of_epoch(s, p, mlflow):
            break
    bar.close()
    train_seconds = time.time() - started

    checkpoint.load_trainable(s.model, p.best["state"])  # the best validation epoch
    # Calibration and decision profiles from the best epoch's validation scores (calibration.py).
    val_gold = np.asarray(s.val_ds["label_vector"], dtype=np.int64)
    best_scores, best_encoder = p.best.get("val_scores"), p.best.get("val_encoder")
    if best_scores is None or best_encoder is None:  # a checkpoint from before they were kept
        _, best_scores, _, best_encoder = _validate(s)
    best_scores, val_lexical = np.asarray(best_scores), s.val_lexical
    fit_on = "train"
    if s.lexical is not None and config.lexical_refit:
        if len(s.val_ds) >= 2:
            best_scores, val_lexical = _refit_lexical(s, np.asarray(best_encoder), val_gold)
            fit_on = "train+validation"
        else:
            log.warning("lexical_refit: validation has %d clause(s), too few to score out of fold; "
                        "the lexical side stays fit on the train split", len(s.val_ds))
    fitted, out_of_fold_macro = _calibrate(best_scores, val_gold, config.threshold, fit_on != "train")
    if out_of_fold_macro is not None:
        log.info("validation macro-F1 with the refit side, out of fold: %.1f", out_of_fold_macro)
    card = {
        "categories": list(CATEGORIES),
        "base_model": config.base_model, "method": config.method, "max_length": config.max_length,
        "pooling": "mean", "train_precision": "bf16" if s.autocast else "fp32", "best_epoch": p.best["epoch"], "val_macro_f1": p.best["macro_f1"], **fitted,
    }
    if out_of_fold_macro is not None:
        card["val_macro_f1_out_of_fold"] = out_of_fold_macro
    if config.method != "qlora":
        s.model.cpu()
    if s.rank == 0:
        if s.lexical is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            card["lexical"] = s.lexical.save(output_dir, fit_on)
            if fit_on != "train":  # how the out-of-fold scores were made, to make them again
                card["lexical"].update(c=config.lexical_c, folds=min(5, len(s.val_ds)), fold_seed=config.seed,
                                       rows={"train": len(s.train_ds), "validation": len(s.val_ds)})
        export(s.model, s.base_path, config.method, s.tokenizer, output_dir, card)
        if config.method == "qlora":
            exported = _refit_on_export(output_dir, s.val_ds, val_gold, config.threshold, val_lexical)
            out_of_fold_macro = exported if exported is not None else out_of_fold_macro
        checkpoint.remove(ckpt_uri)  # finished and exported: the checkpoint has done its job
    if s.world > 1:
        import torch.distributed as dist

        dist.barrier()
    if mlflow:
        mlflow.log_metrics({"best_val_macro_f1": p.best["macro_f1"], "best_epoch": p.best["epoch"],
                            "train_seconds": train_seconds,
                            **({"val_macro_f1_out_of_fold": out_of_fold_macro} if out_of_fold_macro is not None else {})})
    log.info("train: best epoch %d (validation macro-F1 %.1f) in %.0f s", p.best["epoch"], p.best["macro_f1"],
             train_seconds)
    return {
        "best_epoch": p.best["epoch"], "best_val_macro_f1": p.best["macro_f1"], "steps": p.step,
        "resumed_from_step": resumed_from, "train_seconds": train_seconds, "history": p.history,
        "trainable_parameters": trainable, "world_size": s.world, "val_macro_f1_out_of_fold": out_of_fold_macro,
    }
