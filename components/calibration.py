"""Scores that mean something: per-category calibration, its error, and decision profiles.

A trained model's sigmoid scores are not probabilities: LoRA training with early stopping
leaves them over- or under-confident by category. At the end of training the best
epoch's scores on the validation split (rows the model never trained on) fit one Platt
map per category, p = sigmoid(a * logit(s) + b), by Newton's method on the log-loss (a
small ridge towards the identity, a = 1, b = 0, keeps the Newton steps defined when a
category has no validation positives; it does not keep such a category near its raw
scores). A map that would reverse or flatten the order of scores (a <= 0.05) is replaced by
the identity. The test split is never used to fit anything:
evaluation only measures the expected calibration error (ECE) there, before and after.

Decisions are kept where they were measured: the `default` profile's thresholds are the
raw 0.5 mapped through each category's calibration, so calibrating changes no verdict.
The `triage` profile, for people who would rather read a few extra clauses than miss one,
lowers each category's threshold to the highest one that still finds at least
TRIAGE_RECALL of that category's validation positives.

Numpy only: the server applies the maps without scikit-learn.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tosguard.components.config import check_profile

TRIAGE_RECALL = 0.9
ECE_BINS = 10
_EPS = 1e-6
_PRIOR = 1.0  # strength of the pull towards the identity map (in log-loss units)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def fit_platt(scores: np.ndarray, gold: np.ndarray, iterations: int = 50) -> list[list[float]]:
    """One (a, b) per category: sigmoid(a * logit(score) + b) fits that category's gold."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and gold {gold.shape} must be the same (rows, categories) shape")
    params = []
    for k in range(scores.shape[1]):
        x, y = _logit(scores[:, k]), gold[:, k]
        w = np.array([1.0, 0.0])  # (a, b): start at the identity
        for _ in range(iterations):
            p = _sigmoid(w[0] * x + w[1])
            r = p - y
            grad = np.array([r @ x, r.sum()]) + _PRIOR * (w - [1.0, 0.0])
            h = p * (1 - p)
            hess = np.array([[h @ (x * x), h @ x], [h @ x, h.sum()]]) + _PRIOR * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w = w - step
            if np.abs(step).max() < 1e-8:
                break
        if not np.all(np.isfinite(w)) or w[0] <= 0.05:  # never flip or flatten the order of scores
            w = np.array([1.0, 0.0])
        params.append([float(w[0]), float(w[1])])
    return params


def apply(scores: np.ndarray, params: Sequence[Sequence[float]] | None) -> np.ndarray:
    """Raw sigmoid scores (rows, categories) -> calibrated; None: unchanged."""
    if not params:
        return np.asarray(scores)
    a = np.asarray([p[0] for p in params])[None, :]
    b = np.asarray([p[1] for p in params])[None, :]
    return _sigmoid(a * _logit(scores) + b).astype(np.float32)


def expected_calibration_error(scores: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE over every (clause, category) score, and per category: the gap between mean score
    and the share of positives in each of `bins` equal-width bins, weighted by the bin's size.
    Also the reliability table (per bin: count, mean score, positive share) pooled."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold, dtype=np.float64)

    def one(s: np.ndarray, g: np.ndarray):
        index = np.minimum((s * bins).astype(int), bins - 1)
        table, error = [], 0.0
        for b in range(bins):
            inside = index == b
            n = int(inside.sum())
            if n:
                mean, share = float(s[inside].mean()), float(g[inside].mean())
                error += n / len(s) * abs(mean - share)
                table.append({"bin": b, "count": n, "mean_score": mean, "positive_share": share})
        return error, table

    pooled, table = one(scores.ravel(), gold.ravel())
    per_category = [one(scores[:, k], gold[:, k])[0] for k in range(scores.shape[1])]
    return {"ece": 100 * pooled, "per_category": [100 * e for e in per_category],
            "mean_category_ece": 100 * float(np.mean(per_category)), "table": table}


def recall_thresholds(scores: np.ndarray, gold: np.ndarray, target: float = TRIAGE_RECALL) -> list[float]:
    """Per category, the highest threshold at which at least `target` of the gold positives
    score above it (a clause is found when its score exceeds the threshold)."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold)
    out = []
    for k in range(scores.shape[1]):
        positives = np.sort(scores[gold[:, k] == 1, k])
        if len(positives) == 0:
            out.append(0.5)
            continue
        # Keep the top ceil(target * n) positives above the threshold: sit just under the
        # lowest of them, in the float32 the scores are compared in.
        keep = int(np.ceil(target * len(positives)))
        lowest_kept = np.float32(positives[len(positives) - keep])
        out.append(float(np.nextafter(lowest_kept, np.float32(-1.0))))
    return out


def fit(val_scores: np.ndarray, val_gold: np.ndarray, threshold: float = 0.5) -> dict:
    """What the model card keeps: the Platt maps, the default thresholds (the raw
    `threshold` mapped through them) and the triage profile's, all on calibrated scores."""
    params = fit_platt(val_scores, val_gold)
    calibrated = apply(val_scores, params)
    raw_cut = np.full((1, val_scores.shape[1]), threshold)
    default = apply(raw_cut, params)[0]
    return {
        "calibration": {"method": "platt", "fit_on": "validation", "params": params},
        "thresholds": [float(t) for t in default],  # the default profile
        "profiles": {
            # Triage only ever lowers a threshold.
            "triage": [min(t, float(d)) for t, d in zip(recall_thresholds(calibrated, val_gold), default)],
        },
        "triage_recall_target": TRIAGE_RECALL,
    }


def profile_thresholds(card: dict, profile: str) -> list[float]:
    """The thresholds a card gives a profile: `thresholds` is the default profile's."""
    check_profile(profile)
    profiles = card.get("profiles") or {}
    if profile == "default":
        return list(card["thresholds"])
    if profile not in profiles:
        raise ValueError(f"this model has no {profile!r} profile (trained before profiles existed); retrain it")
    return list(profiles[profile])


def card_params(card: dict):
    """The card's calibration maps, or None for a model trained before calibration."""
    return (card.get("calibration") or {}).get("params")
