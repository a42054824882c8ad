"""Resumable training checkpoints: trainable weights, optimizer, scheduler, every RNG and
the position in the epoch, written atomically where a re-run of the same step finds them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from tosguard.components.config import TrainConfig, home

log = logging.getLogger(__name__)
FILE_NAME = "checkpoint.pt"


def checkpoint_path(config: TrainConfig, data_fingerprint: str, folder: str | None = None) -> Path:
    """Where a run's checkpoint lives: keyed by the config and the data, so re-running the
    same step (after a kill or a preemption) finds it. TOSGUARD_CHECKPOINT_DIR can point at
    durable storage (a mounted volume in a cluster); `folder` overrides both."""
    if folder:
        return Path(folder) / FILE_NAME
    root = Path(os.environ.get("TOSGUARD_CHECKPOINT_DIR", home() / "checkpoints"))
    key = hashlib.sha256((config.to_json() + data_fingerprint).encode()).hexdigest()[:16]
    return root / key / FILE_NAME


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights that training changes."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save(path: Path, model, optimizer, scheduler, progress: dict) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact.
    `progress`: step, epoch, batch and the loop's bookkeeping (history, best, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), **progress}, tmp)
    tmp.replace(path)


def restore(path: Path, model, optimizer, scheduler) -> dict | None:
    """Load a checkpoint into the model, optimizer, scheduler and RNGs; returns the loop's
    progress, or None when there is no checkpoint."""
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    load_trainable(model, state.pop("trainable"))
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    restore_rng(state.pop("rng"))
    log.info("train: resuming from checkpoint %s at step %d (epoch %d, batch %d)", path, state["step"],
             state["epoch"], state["batch"])
    return state
