"""Step 2, tokenize: raw DatasetDict -> tokenized Arrow DatasetDict, no padding stored."""
from __future__ import annotations

import logging
from pathlib import Path

from tosguard.components.labels import multi_hot

log = logging.getLogger(__name__)


def tokenize(raw_dir: str, base_model: str, max_length: int, output_dir: str) -> dict:
    """Tokenize every split with the base model's fast tokenizer (batched, truncated).

    Stored columns: input_ids, attention_mask, length, and labels as a multi-hot float
    vector over the categories. Padding happens per batch at train time.
    """
    from datasets import load_from_disk

    from tosguard.components.modeling import load_tokenizer, resolve_base_model

    if max_length < 8:
        raise ValueError(f"max_length must be at least 8 tokens (got {max_length})")
    tokenizer = load_tokenizer(resolve_base_model(base_model))
    if not tokenizer.is_fast:
        raise ValueError(f"{base_model} has no fast tokenizer")
    raw = load_from_disk(raw_dir)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length, padding=False)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "length": [len(ids) for ids in enc["input_ids"]],
            "label_vector": [multi_hot(labels) for labels in batch["labels"]],
        }

    tokenized = raw.map(encode, batched=True, batch_size=1000, desc="tokenize")
    tokenized.save_to_disk(str(Path(output_dir)))
    stats = {
        split: {
            "rows": len(ds),
            "mean_tokens": float(sum(ds["length"]) / max(len(ds), 1)),
            "truncated": int(sum(1 for n in ds["length"] if n >= max_length)),
        }
        for split, ds in tokenized.items()
    }
    tokenizer.save_pretrained(str(Path(output_dir) / "tokenizer"))
    log.info("tokenize: %s", stats)
    return stats


def run_step(raw_dir: str, train_config: str, data_hash: str, mlflow_run_id: str, output_dir: str) -> dict:
    """The tokenize step: the base model and max length come from the training settings."""
    import time

    from tosguard.components.config import TrainConfig
    from tosguard.components.tracking import pipeline_run

    started = time.time()
    config = TrainConfig.from_json(train_config)
    stats = tokenize(raw_dir, config.base_model, config.max_length, output_dir)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.log_dict({**stats, "data_hash": data_hash}, "data/tokenize_stats.json")
        mlflow.log_metric("step_seconds.tokenize", time.time() - started)
    return stats
