"""The durable store: one setting (``--store`` / TOSGUARD_STORE), a local folder by default
or ``s3://bucket/prefix``. Layout:

    <store>/data/unfair_tos/<data hash>/        train/validation/test.jsonl, manifest.json
    <store>/checkpoints/<key>/                  resumable checkpoints of a training in progress
    <store>/models/tosguard/<key>/<version>/    one trained model, never changed once complete:
        model.safetensors, config.json          merged model (loads with plain transformers)
        adapter/                                the LoRA adapter alone (peft)
        tokenizer.json, tokenizer_config.json   tokenizer
        classifier.safetensors, tosguard.json   head, label names, thresholds, pooling
        lexical.safetensors, lexical_terms.json the TF-IDF side blended with the encoder (lexical.py)
        labels.json, thresholds.json            label names and decision thresholds (on the served,
                                                calibrated scores when the card has a calibration)
        training_curves.png                     loss and validation F1 per epoch, best epoch marked
        train_summary.json                      written last: the model is complete
        MODEL_CARD.md                           added by the first evaluation
        evaluations/<MLflow run id>/            report.md, report.html, scores.json of each evaluation

``<key>`` is ``<data hash>-<config fingerprint>`` (12 hex each): the content key. Each
training writes a new ``<version>`` (``<UTC time>-<random>``) under its key, so a retrain,
a forced fresh run or two concurrent runs never write into the same folder, and a version
is complete only once its mark is written last. A re-run with the same data and config
reuses the newest complete version under the key instead of training again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path

from tosguard.components import storage
from tosguard.components.config import CARD_FILE, COMPLETE_MARK, NAME, home

log = logging.getLogger(__name__)


def store_root(store: str | None = None) -> str:
    """The store URI: the argument, else TOSGUARD_STORE, else <tosguard home>/store."""
    root = store or os.environ.get("TOSGUARD_STORE") or str(home() / "store")
    if not storage.is_s3(root):
        root = str(storage.local_path(root).resolve())
    return root.rstrip("/")


def snapshot_uri(store: str, data_hash: str) -> str:
    return storage.join(store_root(store), "data", "unfair_tos", data_hash)


def model_key(data_hash: str, train_config_json: str) -> str:
    """The content key: the same data and training config give the same key."""
    fingerprint = hashlib.sha256(train_config_json.encode()).hexdigest()
    return f"{data_hash[:12]}-{fingerprint[:12]}"


def new_version(key: str) -> str:
    """A fresh, never reused version under a key: sortable by time, unique by a random tail."""
    import time
    import uuid

    return f"{key}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def version_of(uri: str) -> str:
    """The `<key>/<version>` a model store URI ends with."""
    return "/".join(uri.rstrip("/").split("/")[-2:])


def model_uri(store: str, version: str) -> str:
    return storage.join(store_root(store), "models", NAME, version)


def code_version() -> str:
    """TOSGUARD_CODE_VERSION (set in images at build time), else the git commit, else the package version."""
    if os.environ.get("TOSGUARD_CODE_VERSION"):
        return os.environ["TOSGUARD_CODE_VERSION"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{NAME} {version(NAME)}"
        except PackageNotFoundError:
            return "unknown"


def find_model(uri: str) -> dict | None:
    """The train summary of a complete model at `uri`, or None."""
    mark = storage.join(uri, COMPLETE_MARK)
    if not storage.exists(mark):
        return None
    return json.loads(storage.read_text(mark))


def newest_complete(store: str, key: str) -> tuple[str, dict] | None:
    """(URI, train summary) of the newest complete version under a content key, or None."""
    root = model_uri(store, key)
    marks = sorted(rel for rel in storage.list_files(root)
                   if rel.endswith("/" + COMPLETE_MARK) and rel.count("/") == 1)
    for rel in reversed(marks):
        uri = storage.join(root, rel.split("/")[0])
        summary = find_model(uri)
        if summary is not None:
            return uri, summary
    return None


class VersionExists(RuntimeError):
    """A complete model version is never overwritten."""


def save_model(local_dir: str, uri: str, summary: dict) -> dict:
    """Copy an exported model folder to a new version in the store (every file verified),
    the complete mark last. Refuses a version that is already complete."""
    records = upload_model_files(local_dir, uri)
    mark_complete(uri, summary)
    return {"uri": uri, "files": len(records), "bytes": sum(r["size"] for r in records)}


def upload_model_files(local_dir: str, uri: str) -> list[dict]:
    """Copy an exported model folder to a version in the store, without the complete mark."""
    if find_model(uri) is not None:
        raise VersionExists(f"{uri} already holds a complete model; a new training gets a new version")
    card = json.loads((Path(local_dir) / CARD_FILE).read_text())
    (Path(local_dir) / "labels.json").write_text(json.dumps(card["categories"], indent=2))
    (Path(local_dir) / "thresholds.json").write_text(
        json.dumps(dict(zip(card["categories"], card["thresholds"])), indent=2)
    )
    return storage.upload_folder(local_dir, uri, skip=(COMPLETE_MARK,))


def mark_complete(uri: str, summary: dict) -> None:
    """Write the complete mark, last: from now on the version is complete and immutable."""
    storage.write_text(storage.join(uri, COMPLETE_MARK), json.dumps(summary, indent=2, default=str))


def _lexical_line(entry: dict | None) -> str:
    if not entry:
        return "none (the encoder alone)"
    return (f"{entry.get('features', 'tf-idf')} over {entry.get('terms', '?')} terms, one logistic regression per "
            f"category, fit on {str(entry.get('fit_on', 'train')).replace('+', ' and ')}, blended with the encoder "
            f"in logit space at weight {entry.get('weight')}")


def model_card(info: dict) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how it scored."""
    scores = info["scores"]
    lines = [
        f"# tosguard model {info['version']}",
        "",
        "Flags potentially unfair clauses in online Terms of Service: 8 categories of LexGLUE "
        "UNFAIR-ToS (multi-label; no category means fair).",
        "",
        "| field | value |",
        "|---|---|",
        f"| base model | {info['base_model']} |",
        f"| method | {info['method']} |",
        f"| lexical blend | {_lexical_line(info.get('lexical'))} |",
        f"| data hash | `{info['data_hash']}` |",
        f"| data source | {info.get('source', '?')} |",
        f"| code version | {info['code_version']} |",
        f"| MLflow run | {info.get('mlflow_run_id', '?')} |",
        f"| best epoch (validation macro-F1) | {info.get('best_epoch', '?')} ({info.get('best_val_macro_f1', float('nan')):.1f}) |",
        *([f"| validation macro-F1, out-of-fold estimate for the exported model (refit lexical side) | "
           f"{info['val_macro_f1_out_of_fold']:.1f} |"] if info.get("val_macro_f1_out_of_fold") is not None else []),
        f"| test micro-F1 / macro-F1 | {scores['micro_f1']:.1f} / {scores['macro_f1']:.1f} |",
        f"| decision thresholds{' (on the calibrated scores: a raw 0.5 mapped through each category' + chr(39) + 's calibration)' if info.get('calibrated') else ''} | {info.get('thresholds', '?')} |",
        "",
        "## Per-category test F1",
        "",
        "| category | F1 |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.1f} |" for name, value in scores["per_category_f1"].items()]
    lines += [
        "",
        "## Files",
        "",
        "`model.safetensors` + `config.json`: the merged encoder (plain transformers, no peft); "
        "`adapter/`: the LoRA adapter alone; `classifier.safetensors` and `tosguard.json`: the head, "
        "pooling, label names and thresholds; `lexical.safetensors` and `lexical_terms.json` (where the "
        "model blends): the TF-IDF logistic regressions and their terms; `training_curves.png`: loss and validation F1 per epoch; "
        "`evaluations/<run>/report.md` and `report.html`: the evaluation placed in the LexGLUE table (the HTML "
        "with the figures).",
        "",
        "Training data: LexGLUE UNFAIR-ToS (Chalkidis et al., 2022; CLAUDETTE corpus, Lippi et al., 2019), "
        "CC BY 4.0.",
    ]
    return "\n".join(lines) + "\n"
