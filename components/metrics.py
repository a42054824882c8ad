"""The LexGLUE UNFAIR-ToS score: micro/macro-F1 over 8 categories plus a "none" column.

LexGLUE (experiments/unfair_tos.py, after the 2022-01-20 fix) appends a 9th column to
gold (1 when the row has no label) and to predictions (1 when no category passes its
threshold), then takes sklearn micro- and macro-F1 over all 9 columns.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score

from tosguard.components.labels import CATEGORIES, NONE_COLUMN, NUM_CATEGORIES


def with_none_column(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[1] != NUM_CATEGORIES:
        raise ValueError(f"expected a (rows, {NUM_CATEGORIES}) matrix, got shape {matrix.shape}")
    none = (matrix.sum(axis=1) == 0).astype(np.int64)[:, None]
    return np.concatenate([matrix, none], axis=1)


def lexglue_scores(gold: np.ndarray, predicted: np.ndarray) -> dict:
    """Micro/macro-F1 (in %) and per-column F1 under the LexGLUE 8+1 protocol.

    gold, predicted: (rows, 8) 0/1 matrices over the categories, in CATEGORIES order.
    """
    gold9 = with_none_column(gold)
    pred9 = with_none_column(predicted)
    if gold9.shape != pred9.shape:
        raise ValueError(f"gold {gold9.shape} and predictions {pred9.shape} differ in shape")
    per_column = f1_score(gold9, pred9, average=None, zero_division=0)
    names = list(CATEGORIES) + [NONE_COLUMN]
    return {
        "micro_f1": 100.0 * float(f1_score(gold9, pred9, average="micro", zero_division=0)),
        "macro_f1": 100.0 * float(f1_score(gold9, pred9, average="macro", zero_division=0)),
        "per_category_f1": {name: 100.0 * float(v) for name, v in zip(names, per_column)},
        "rows": int(gold9.shape[0]),
    }


def predict_from_probabilities(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Sigmoid outputs -> 0/1 per category; a category is found when its score > threshold."""
    return (np.asarray(probabilities) > np.asarray(thresholds)[None, :]).astype(np.int64)
