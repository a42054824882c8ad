"""How the shipped distillation teacher's scores relate to the gold train labels.

Reads the bundled data and the teacher's train-split scores for its data hash the way a
distilling training does (teachers.ensure: the copy the project ships,
components/data/teachers/<data hash>.<name>.npy, checked against its record's sha256 and
row count), then prints the teacher's agreement with the gold labels (LexGLUE
8+1 micro/macro-F1, decision at 0.5) and how soft its scores are on the gold-positive
cells (the share strictly between 0.05 and 0.95). Ends with a line `RESULT {json}`.

    .venv/bin/python benchmarks/teacher_check.py [--name mpnet-quality-s42]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="mpnet-quality-s42", help="the teacher's name")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import tempfile

    from datasets import load_from_disk

    from tosguard.components import teachers
    from tosguard.components.download import download
    from tosguard.components.labels import multi_hot
    from tosguard.components.metrics import lexglue_scores, predict_from_probabilities

    with tempfile.TemporaryDirectory() as tmp:
        manifest = download("bundled", f"{tmp}/raw")
        try:
            uri = teachers.ensure(f"{tmp}/store", manifest["data_hash"], args.name, manifest["rows"]["train"])
        except FileNotFoundError as exc:
            raise SystemExit(f"the project ships no teacher named {args.name!r} for the bundled data: {exc}") from None
        scores = teachers.read(uri)
        gold = np.array([multi_hot(row) for row in load_from_disk(f"{tmp}/raw")["train"]["labels"]], dtype=np.int64)
    agreement = lexglue_scores(gold, predict_from_probabilities(scores, [0.5] * gold.shape[1]))
    positive = scores[gold == 1]
    soft = float(np.mean((positive > 0.05) & (positive < 0.95)))
    result = {"teacher": args.name, "data_hash": manifest["data_hash"], "rows": int(len(gold)),
              "micro_f1": round(agreement["micro_f1"], 2), "macro_f1": round(agreement["macro_f1"], 2),
              "gold_positive_cells": int(positive.size), "soft_share": round(soft, 4),
              "seconds": round(time.perf_counter() - started, 2)}
    print(f"teacher {args.name} on the {len(gold)} bundled train clauses: agreement with gold "
          f"micro/macro-F1 {agreement['micro_f1']:.1f}/{agreement['macro_f1']:.1f}; "
          f"{100 * soft:.0f}% of the {positive.size} gold-positive cells score strictly between 0.05 and 0.95 "
          f"({result['seconds']:.1f} s)")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
