"""Resumable training checkpoints without pickle: one safetensors file holding every tensor
(trainable weights, the best epoch's weights, optimizer moments, the torch and CUDA RNG
states) with the rest of the state as JSON in its metadata (position in the epoch, loss
sums, history, scheduler, Python and NumPy RNG states).

Written atomically (a temporary file renamed into place), locally or to S3 (for example
under the model store, so that a KFP retry on another node resumes). A checkpoint that
cannot be read is set aside with a warning and training starts afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tosguard.components import storage
from tosguard.components.config import TrainConfig, home

log = logging.getLogger(__name__)
FILE_NAME = "checkpoint.safetensors"
FORMAT = "tosguard-checkpoint-1"


def checkpoint_uri(config: TrainConfig, data_fingerprint: str, folder: str | None = None) -> str:
    """Where a run's checkpoint lives: keyed by the config and the data, so re-running the
    same step (after a kill or a preemption) finds it. `folder` (a path or s3:// URI, the
    store's checkpoints/ in a pipeline) or TOSGUARD_CHECKPOINT_DIR, else the tosguard home.
    lexical_refit only acts after the last epoch (the checkpointed state is the same either
    way), so it does not key the checkpoint: a run interrupted before the setting existed
    resumes under it. The other side of that: two runs differing only in lexical_refit share
    one checkpoint, so do not run them at once against the same folder."""
    root = folder or os.environ.get("TOSGUARD_CHECKPOINT_DIR") or str(home() / "checkpoints")
    settings = replace(config, lexical_refit=False).key_json()
    key = hashlib.sha256((settings + data_fingerprint).encode()).hexdigest()[:16]
    return storage.join(root, key, FILE_NAME)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights that training changes."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# ------------------------------------------------------------------------------ encoding


def _rng_json() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_rng(rng: dict, tensors: dict) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def _encode(model, optimizer, scheduler, progress: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    best = dict(progress["best"])
    for name, value in (best.pop("state", None) or {}).items():
        tensors[f"best.{name}"] = value.detach().clone()
    optim = optimizer.state_dict()
    optim_json = {"param_groups": optim["param_groups"], "state": {}}
    for index, values in optim["state"].items():
        optim_json["state"][str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().clone()
            else:
                optim_json["state"][str(index)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    state = {key: value for key, value in progress.items() if key != "best"}
    state.update(best=best, optimizer=optim_json, scheduler=scheduler.state_dict(), rng=_rng_json(), format=FORMAT)
    return {k: v.contiguous().cpu() for k, v in tensors.items()}, state


def save(uri: str, model, optimizer, scheduler, progress: dict) -> None:
    """Write the checkpoint atomically. `progress`: step, epoch, batch and the loop's
    bookkeeping (history, best with its weights, ...)."""
    from safetensors.torch import save_file

    tensors, state = _encode(model, optimizer, scheduler, progress)
    metadata = {"tosguard": json.dumps(state)}
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="tosguard-ckpt-") as tmp:
            path = Path(tmp) / FILE_NAME
            save_file(tensors, str(path), metadata=metadata)
            storage.upload_file(path, uri)  # one object PUT: readers see the old or the new one
        return
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read(uri: str) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    with tempfile.TemporaryDirectory(prefix="tosguard-ckpt-") as tmp:
        if storage.is_s3(uri):
            if not storage.exists(uri):
                return None
            path = Path(tmp) / FILE_NAME
            storage.download_file(uri, path)
        else:
            path = storage.local_path(uri)
            if not path.is_file():
                return None
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state = json.loads(metadata["tosguard"])
    if state.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
    return tensors, state


def _set_aside(uri: str) -> None:
    if not storage.is_s3(uri):
        path = storage.local_path(uri)
        if path.exists():
            path.replace(path.with_name(path.name + ".corrupt"))


def restore(uri: str, model, optimizer, scheduler) -> dict | None:
    """Load a checkpoint into the model, optimizer, scheduler and RNGs; returns the loop's
    progress, or None when there is none (or it cannot be read: then training starts afresh)."""
    try:
        found = _read(uri)
    except Exception as exc:  # truncated, corrupted or foreign: never crash every retry on it
        log.warning("train: checkpoint %s cannot be read (%s: %s); setting it aside and starting afresh",
                    uri, type(exc).__name__, str(exc)[:200])
        _set_aside(uri)
        return None
    if found is None:
        return None
    tensors, state = found
    load_trainable(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optim = state.pop("optimizer")
    restored = {"param_groups": optim["param_groups"], "state": {}}
    for index, values in optim["state"].items():
        restored["state"][int(index)] = dict(values)
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            restored["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(restored)
    scheduler.load_state_dict(state.pop("scheduler"))
    _restore_rng(state.pop("rng"), tensors)
    state.pop("format", None)
    best_state = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    state["best"] = {**state["best"], "state": best_state or None}
    log.info("train: resuming from checkpoint %s at step %d (epoch %d, batch %d)", uri, state["step"],
             state["epoch"], state["batch"])
    return state


def remove(uri: str) -> None:
    """A finished run's checkpoint has done its job."""
    if storage.is_s3(uri):
        storage.delete(uri)
    else:
        storage.local_path(uri).unlink(missing_ok=True)
