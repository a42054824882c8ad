"""Drift watch: what the live endpoint scores, compared with what the model scored on the
LexGLUE test split.

The reference (`reference.json` beside the model, written by the evaluate step) holds per
category the test split's positive rate and its score histogram over the same buckets the
server's `tosguard_category_score` histogram uses. The monitor reads the server's
Prometheus metrics (cumulative since the server started, or the difference of two reads
`window` seconds apart), rebuilds the live histogram per category, and computes

- PSI, the population stability index over the score buckets (smoothed so an empty bucket
  does not divide by zero): below 0.1 stable, 0.1-0.25 a moderate shift, 0.25 and up a
  significant one (the usual reading);
- KS, the largest gap between the two cumulative score distributions at the bucket edges
  (a lower bound of the exact two-sample statistic, which needs every score);
- the positive rate, live against reference.

Retraining is recommended when at least `min_clauses` clauses were scored and some
category's PSI reaches `psi_threshold` (default 0.25) or its KS reaches `ks_threshold`.
Numpy and the Prometheus parser only: it runs beside the server or in a pipeline step.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tosguard.components.config import KS_THRESHOLD, MIN_CLAUSES, PSI_THRESHOLD, check_drift_settings  # noqa: F401 (re-exported)

REFERENCE_FILE = "reference.json"
_SMOOTH = 1e-4
_wait = time.sleep  # the window's wait (tests fill it with traffic)


def reference_from_scores(scores: np.ndarray, predicted: np.ndarray, categories: list[str], split: str = "test") -> dict:
    """The reference a model ships: per category the score histogram over the server's
    buckets and the positive rate, from its (calibrated) scores and decisions on `split`."""
    from tosguard.components.serving.telemetry import SCORE_BUCKETS

    scores, predicted = np.asarray(scores), np.asarray(predicted)
    out = {"split": split, "clauses": int(len(scores)), "buckets": list(SCORE_BUCKETS), "categories": {}}
    for k, name in enumerate(categories):
        out["categories"][name] = {
            "counts": _bucket_counts(scores[:, k], SCORE_BUCKETS),
            "positive_rate": float(predicted[:, k].mean()) if len(predicted) else 0.0,
        }
    return out


def _bucket_counts(values: np.ndarray, buckets) -> list[int]:
    """Counts per bucket (upper bounds inclusive, as Prometheus `le` buckets count)."""
    edges = list(buckets)
    index = np.searchsorted(np.asarray(edges), values, side="left")
    index = np.minimum(index, len(edges) - 1)
    return np.bincount(index, minlength=len(edges)).astype(int).tolist()


def read_live(metrics_text: str) -> dict:
    """The server's /metrics text -> {clauses, categories: {name: {counts, positives}}},
    counts per bucket (not cumulative) over the bucket bounds below +Inf."""
    from prometheus_client.parser import text_string_to_metric_families

    cumulative: dict[str, dict[float, float]] = {}
    positives: dict[str, float] = {}
    clauses = 0.0
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name == "tosguard_category_score_bucket":
                    bound = float(sample.labels["le"])
                    cumulative.setdefault(sample.labels["category"], {})[bound] = sample.value
                elif sample.name == "tosguard_category_positive_total":
                    positives[sample.labels["category"]] = sample.value
                elif sample.name == "tosguard_clauses_scored_total":
                    clauses = sample.value
    except (KeyError, ValueError) as exc:
        raise ValueError(f"these metrics are not a tosguard server's ({type(exc).__name__}: {exc})") from None
    if not cumulative:
        raise ValueError("these metrics carry no tosguard_category_score histogram: is this a tosguard server?")
    categories = {}
    for name, by_bound in cumulative.items():
        bounds = sorted(b for b in by_bound if np.isfinite(b))
        running = [by_bound[b] for b in bounds]
        counts = np.diff([0.0, *running]).tolist()
        categories[name] = {"bounds": bounds, "counts": counts, "positives": positives.get(name, 0.0)}
    return {"clauses": clauses, "categories": categories}


def subtract(later: dict, earlier: dict) -> dict:
    """What was scored between two reads of the metrics. Counters only grow: if one went
    down, the two reads came from different server processes (a restart, or a URL that
    balances over several replicas) and their difference means nothing."""
    out = {"clauses": later["clauses"] - earlier["clauses"], "categories": {}}
    fell = out["clauses"] < 0
    for name, now in later["categories"].items():
        before = earlier["categories"].get(name, {"counts": [0.0] * len(now["counts"]), "positives": 0.0})
        counts = [a - b for a, b in zip(now["counts"], before["counts"])]
        fell = fell or min(counts, default=0) < 0 or now["positives"] < before["positives"]
        out["categories"][name] = {"bounds": now["bounds"], "counts": counts,
                                   "positives": now["positives"] - before["positives"]}
    if fell:
        raise ValueError("the server's counters went down between the two reads: it restarted, or the URL balances "
                         "over several replicas (watch one pod's address); read again")
    return out


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    p = np.asarray(reference, dtype=np.float64) + _SMOOTH
    q = np.asarray(live, dtype=np.float64) + _SMOOTH
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: np.ndarray, live: np.ndarray) -> float:
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(live, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(p) / p.sum() - np.cumsum(q) / q.sum())))


def compare(reference: dict, live: dict, psi_threshold: float = PSI_THRESHOLD, ks_threshold: float = KS_THRESHOLD,
            min_clauses: int = MIN_CLAUSES) -> dict:
    """Per category PSI, KS and positive rates; `drifted` and `retrain` with the reason."""
    check_drift_settings(psi_threshold, ks_threshold, min_clauses)
    rows, problems = [], []
    clauses = int(live["clauses"])
    enough = clauses >= min_clauses  # below it a category is not marked drifted, however its PSI reads
    for name, ref in reference["categories"].items():
        now = live["categories"].get(name)
        if now is None:
            raise ValueError(f"the server reports no scores for category {name!r}: a different model?")
        if [round(b, 6) for b in now["bounds"]] != [round(b, 6) for b in reference["buckets"]]:
            raise ValueError("the server's score buckets differ from the reference's; re-evaluate the model")
        row = {"category": name, "psi": psi(ref["counts"], now["counts"]), "ks": ks(ref["counts"], now["counts"]),
               "reference_positive_rate": ref["positive_rate"],
               "live_positive_rate": now["positives"] / clauses if clauses else 0.0}
        row["drifted"] = enough and (row["psi"] >= psi_threshold or row["ks"] >= ks_threshold)
        rows.append(row)
        if row["drifted"]:
            problems.append(f"{name} (PSI {row['psi']:.2f}, KS {row['ks']:.2f})")
    drifted = bool(problems)
    if not enough:
        reason = f"only {clauses} clauses scored; at least {min_clauses} are needed to judge drift"
    elif drifted:
        reason = "drift in " + ", ".join(problems) + ": retrain on fresh labelled data"
    else:
        reason = f"no category's PSI reaches {psi_threshold} or KS {ks_threshold} over {clauses} clauses"
    return {"clauses": clauses, "enough_traffic": enough, "drifted": drifted, "retrain": drifted, "reason": reason,
            "psi_threshold": psi_threshold, "ks_threshold": ks_threshold, "min_clauses": min_clauses,
            "reference_split": reference.get("split", "test"), "categories": rows}


MAX_METRICS_BYTES = 8 * 2**20
METRICS_DEADLINE_S = 30.0


def fetch_metrics(url: str, token: str | None = None, timeout: float = 10.0) -> str:
    """GET URL/metrics: at most MAX_METRICS_BYTES, within METRICS_DEADLINE_S in all (a
    server that drips bytes or sends without end is cut off with a clear error)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + METRICS_DEADLINE_S
    try:
        with requests.get(url.rstrip("/") + "/metrics", headers=headers, timeout=timeout, stream=True) as response:
            body = bytearray()
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise ConnectionError(f"{url}/metrics sent more than {MAX_METRICS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ConnectionError(f"{url}/metrics took longer than {METRICS_DEADLINE_S:.0f} s")
    except requests.RequestException as exc:
        raise ConnectionError(f"cannot reach {url}: {exc}") from None
    text = body.decode("utf-8", errors="replace")
    if response.status_code != 200:
        raise ConnectionError(f"{url}/metrics answered HTTP {response.status_code}: {text[:200]}")
    return text


def token() -> str | None:
    """The bearer token to read a protected server with: TOSGUARD_AUTH_TOKEN_FILE or
    TOSGUARD_AUTH_TOKEN, as the server itself reads it."""
    import os

    path = os.environ.get("TOSGUARD_AUTH_TOKEN_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip() or None
    return os.environ.get("TOSGUARD_AUTH_TOKEN", "").strip() or None


def load_reference(model: str) -> dict:
    """reference.json from a model folder, store URI (file://, s3://) or registry URI
    (models:/tosguard@champion, models:/tosguard/3)."""
    from tosguard.components import storage

    if model.startswith("models:/"):
        from tosguard.components.tracking import model_source

        model = model_source(model)
    if "://" in model:
        uri = storage.join(model, REFERENCE_FILE)
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri} not found: evaluate the model (tosguard run) to write its reference")
        return json.loads(storage.read_text(uri))
    path = Path(model) / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model was not evaluated by this version of tosguard; "
                                "rerun `tosguard run` (or pass --model with an evaluated model)")
    return json.loads(path.read_text())


def check(url: str, model: str, window: float = 0.0, token: str | None = None, **thresholds) -> dict:
    """Read the endpoint's metrics (twice, `window` seconds apart, when window > 0) and
    compare them with the model's reference."""
    check_drift_settings(thresholds.get("psi_threshold", PSI_THRESHOLD), thresholds.get("ks_threshold", KS_THRESHOLD),
                         thresholds.get("min_clauses", MIN_CLAUSES), window)  # before any wait
    reference = load_reference(model)
    live = read_live(fetch_metrics(url, token))
    if window > 0:
        _wait(window)
        live = subtract(read_live(fetch_metrics(url, token)), live)
    return {"url": url, "model": model, "window_seconds": window or None, **compare(reference, live, **thresholds)}


def table(result: dict) -> str:
    lines = [f"{'category':<28} {'PSI':>6} {'KS':>6} {'positives ref':>13} {'positives live':>14}"]
    for row in result["categories"]:
        mark = "  <- drift" if row["drifted"] else ""
        lines.append(f"{row['category']:<28} {row['psi']:>6.3f} {row['ks']:>6.3f} "
                     f"{100 * row['reference_positive_rate']:>12.1f}% {100 * row['live_positive_rate']:>13.1f}%{mark}")
    lines.append(f"clauses scored: {result['clauses']}")
    lines.append(("RETRAIN: " if result["retrain"] else "ok: ") + result["reason"])
    return "\n".join(lines)


def run_step(url: str, model: str, window: float, psi_threshold: float, ks_threshold: float, min_clauses: int,
             drift_metrics, report_path: str):
    """The pipeline's drift check. model: the served model's folder or store URI; empty: the
    registry's champion (the model the gate promoted and deploy serves)."""
    if not model:
        from tosguard.components.tracking import champion

        best = champion()
        if not best:
            raise RuntimeError("no champion model in the registry to compare with; pass `model`")
        model = best["source"]
    result = check(url, model, window=window, token=token(),
                   psi_threshold=psi_threshold, ks_threshold=ks_threshold, min_clauses=min_clauses)
    drift_metrics.log_metric("clauses", result["clauses"])
    for row in result["categories"]:
        key = row["category"].replace(" ", "_").replace("(", "").replace(")", "")
        drift_metrics.log_metric(f"psi.{key}", round(row["psi"], 4))
        drift_metrics.log_metric(f"ks.{key}", round(row["ks"], 4))
    Path(report_path).write_text(f"# Drift check of {url}\n\n```\n{table(result)}\n```\n")
    print(table(result), flush=True)
    return bool(result["retrain"])
