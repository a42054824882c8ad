"""Teachers for distillation: a strong model's scores on the train split, kept by data hash.

The default preset trains MiniLM on a mix of the gold labels and the scores a quality
model (all-mpnet-base-v2) gives each train clause (config `distill_weight`, `teacher`).
Scoring the train split with the teacher takes minutes, training the teacher half an hour
or more on a CPU, so its scores are computed once and kept in the store at

    <store>/teachers/<data hash>/<teacher>.npy   (rows x categories, float32)
    <store>/teachers/<data hash>/<teacher>.json  (what made it: model, data, rows, sha256)

For the bundled LexGLUE data the project ships the scores of its measured teacher
(components/data/teachers/<data hash>.<teacher>.npy), so a default run on a fresh machine never trains a teacher;
they are copied into the store on first use. `tosguard teach --model DIR --name NAME`
scores the train split of any data snapshot with any trained model and stores the result.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from tosguard.components import storage
from tosguard.components.labels import CATEGORIES

log = logging.getLogger(__name__)

VENDORED = Path(__file__).parent / "data" / "teachers"


def _name_ok(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"teacher names are letters, digits, '-', '_' and '.' (got {name!r})")
    return name


def _hash_ok(data_hash: str) -> str:
    if not all(c in "0123456789abcdef" for c in data_hash) or not 12 <= len(data_hash) <= 64:
        raise ValueError(f"a data hash is 12 to 64 lower-case hex digits (got {data_hash!r})")
    return data_hash


def teacher_uri(store: str, data_hash: str, name: str) -> str:
    from tosguard.components.store import store_root

    _hash_ok(data_hash)
    return storage.join(store_root(store), "teachers", data_hash, _name_ok(name))


def _to_bytes(scores: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(scores, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def save(store: str, data_hash: str, name: str, scores: np.ndarray, info: dict) -> str:
    """Keep a teacher's train-split scores (and what made them) in the store; returns the URI."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(CATEGORIES):
        raise ValueError(f"teacher scores must be (rows, {len(CATEGORIES)}), got {scores.shape}")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ValueError("teacher scores must be probabilities in [0, 1]")
    uri = teacher_uri(store, data_hash, name)
    payload = _to_bytes(scores)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.npy"
        path.write_bytes(payload)
        storage.upload_file(path, uri + ".npy")
    record = {**info, "teacher": name, "data_hash": data_hash, "rows": int(scores.shape[0]),
              "categories": list(CATEGORIES), "sha256": hashlib.sha256(payload).hexdigest()}
    storage.write_text(uri + ".json", json.dumps(record, indent=2))
    return uri


def _read(npy: bytes, record: dict, where: str) -> np.ndarray:
    if hashlib.sha256(npy).hexdigest() != record.get("sha256"):
        raise ValueError(f"teacher scores at {where} do not match their record's sha256: recompute them "
                         "with `tosguard teach`")
    scores = np.load(io.BytesIO(npy), allow_pickle=False).astype(np.float32)
    if scores.shape != (record["rows"], len(CATEGORIES)):
        raise ValueError(f"teacher scores at {where} have shape {scores.shape}, their record says "
                         f"({record['rows']}, {len(CATEGORIES)})")
    return scores


def record(uri: str) -> dict:
    """What made a stored teacher's scores (model, data, rows, sha256)."""
    return json.loads(storage.read_text(uri + ".json"))


def read(uri: str) -> np.ndarray:
    """A stored teacher's scores (uri without suffix), checked against their record."""
    record = json.loads(storage.read_text(uri + ".json"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.npy"
        storage.download_file(uri + ".npy", path)
        return _read(path.read_bytes(), record, uri)


def ensure(store: str, data_hash: str, name: str, rows: int) -> str:
    """The store URI of the teacher's scores for this data's train split (without suffix):
    already in the store, else copied there from the ones the project ships, else a clear
    error saying how to make them. Checks they cover `rows` train clauses."""
    uri = teacher_uri(store, data_hash, name)
    if storage.exists(uri + ".json") and storage.exists(uri + ".npy"):
        scores = read(uri)
        source = uri
    elif (VENDORED / f"{data_hash}.{name}.json").is_file():
        shipped = VENDORED / f"{data_hash}.{name}"
        record = json.loads(shipped.with_name(shipped.name + ".json").read_text())
        scores = _read(shipped.with_name(shipped.name + ".npy").read_bytes(), record, str(shipped))
        save(store, data_hash, name, scores, {k: v for k, v in record.items() if k != "sha256"})
        source = f"the project's copy ({shipped}.npy), now kept in the store"
    else:
        raise FileNotFoundError(
            f"no scores of teacher {name!r} for this data (hash {data_hash[:12]}): the project ships them only for "
            "the bundled LexGLUE data. Train a quality model (tosguard run --preset quality) and store its scores "
            f"with `tosguard teach --model MODEL --name {name}`, or train without distillation "
            "(--param distill_weight=0)")
    if len(scores) != rows:
        raise ValueError(f"teacher {name!r} scored {len(scores)} train rows; this data's train split has {rows}")
    log.info("distillation: teacher %s from %s", name, source)
    return uri


def teach(model: str, store: str, data_hash: str, name: str, precision: str = "fp32") -> dict:
    """Score the train split of the stored data snapshot `data_hash` with a trained model
    (folder or store URI) and keep the scores as teacher `name`."""
    import time

    from tosguard.components.serving.scorer import ClauseScorer
    from tosguard.components.store import snapshot_uri

    started = time.time()
    _name_ok(name)
    snapshot = storage.join(snapshot_uri(store, _hash_ok(data_hash)), "train.jsonl")
    if not storage.exists(snapshot):
        raise FileNotFoundError(f"no data snapshot at {snapshot}: run the pipeline once on this data first")
    texts = [json.loads(line)["text"] for line in storage.read_text(snapshot).splitlines() if line.strip()]
    scorer = ClauseScorer(str(storage.fetch_folder(model)), precision)
    # The teacher's raw sigmoid scores: what it learned, before calibration for serving.
    encoded = scorer.tokenizer(texts, truncation=True, max_length=scorer.max_length, padding=False)["input_ids"]
    from tosguard.components.modeling import score_encoded

    # The encoder's scores alone, also for a model that blends a lexical side: that side was
    # fit on this same train split and all but memorises its labels, so blending it in
    # would hand the student the gold labels back instead of the teacher's judgement.
    scores = score_encoded(scorer.classifier, encoded, scorer.tokenizer.pad_token_id, 64, 8192)
    info = {"model": model, "base_model": scorer.card.get("base_model"), "seconds": round(time.time() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    uri = save(store, data_hash, name, scores, info)
    return {"uri": uri, "rows": len(texts), **info}
