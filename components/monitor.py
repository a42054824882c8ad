"""Drift watch: what the live endpoint scores, compared with what the model scored on the
LexGLUE test split.

The reference (`reference.json` beside the model, written by the evaluate step) holds per
category the test split's positive rate and its score histogram over the same buckets the
server's `tosguard_category_score` histogram uses. The monitor reads the server's
Prometheus metrics (cumulative since the server started, the difference of two reads
`window` seconds apart, or the difference from the read the last judged check left in a
mark: what a schedule wants), rebuilds the live histogram per category, and computes

- PSI, the population stability index over the score buckets (smoothed so an empty bucket
  does not divide by zero): below 0.1 stable, 0.1-0.25 a moderate shift, 0.25 and up a
  significant one (the usual reading);
- KS, the largest gap between the two cumulative score distributions at the bucket edges
  (a lower bound of the exact two-sample statistic, which needs every score);
- the positive rate, live against reference, at the thresholds of the profile the server
  runs (`default` or `triage`).

The server names itself in `tosguard_server_info` (a random id per process, the served
model's fingerprint, its profile): a window whose two reads reach different processes (a
restart, or a Service balancing over replicas; with several reads, no process read at both
ends) is refused even when every counter grew,
and a server whose model is not the reference's model is refused rather than compared.
Behind a Service each read reaches one replica; `reads` > 1 reads /metrics that many times
and pools the traffic of every process reached (replicas of one model, one profile).

Retraining is recommended when at least `min_clauses` clauses were scored and some
category's PSI reaches `psi_threshold` (default 0.25) or its KS reaches `ks_threshold`.
Numpy and the Prometheus parser only: it runs beside the server or in a pipeline step.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from tosguard.components.config import (CARD_FILE, HEAD_FILE, KS_THRESHOLD, MIN_CLAUSES,  # noqa: F401 (re-exported)
                                        PSI_THRESHOLD, check_drift_settings)
from tosguard.components.lexical import TERMS_FILE, WEIGHTS_FILE

REFERENCE_FILE = "reference.json"
PSI_MODERATE = 0.1  # marked in the report as a moderate shift; retraining waits for psi_threshold
# PSI's smoothing, added to each bucket's share (not its count), so an empty bucket costs
# the same however many clauses the window holds.
_SMOOTH = 1e-4
# The files that decide a served model's scores besides the encoder (whose weights the head
# was trained with): the card (thresholds, calibration, profiles), the head, the lexical side.
_FINGERPRINTED = (CARD_FILE, HEAD_FILE, WEIGHTS_FILE, TERMS_FILE)
_wait = time.sleep  # the window's wait (tests fill it with traffic)


def model_fingerprint(folder) -> str:
    """A short hash of what makes a model folder's scores its own (_FINGERPRINTED, where
    present): the evaluate step writes it into the reference, the server publishes it, and
    the monitor compares the two."""
    import hashlib

    digest = hashlib.sha256()
    for name in _FINGERPRINTED:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def reference_from_scores(scores: np.ndarray, predicted: np.ndarray, categories: list[str], split: str = "test",
                          by_profile: dict | None = None, model: str | None = None) -> dict:
    """The reference a model ships: per category the score histogram over the server's
    buckets and the positive rate, from its (calibrated) scores and decisions on `split`.
    by_profile: {profile: its decisions} for the rates of each serving profile (`predicted`
    is the default profile's); model: the folder's model_fingerprint."""
    from tosguard.components.serving.telemetry import SCORE_BUCKETS

    scores, predicted = np.asarray(scores), np.asarray(predicted)
    decisions = {"default": predicted, **{k: np.asarray(v) for k, v in (by_profile or {}).items()}}
    out = {"split": split, "clauses": int(len(scores)), "buckets": list(SCORE_BUCKETS), "categories": {}}
    if model:
        out["model"] = model
    for k, name in enumerate(categories):
        rates = {profile: float(d[:, k].mean()) if len(d) else 0.0 for profile, d in decisions.items()}
        out["categories"][name] = {
            "counts": _bucket_counts(scores[:, k], SCORE_BUCKETS),
            "positive_rate": rates["default"],
            "positive_rates": rates,
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
    server: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name == "tosguard_server_info":
                    server = {k: sample.labels[k] for k in ("instance", "model", "profile") if k in sample.labels}
                elif sample.name == "tosguard_category_score_bucket":
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
    return {"clauses": clauses, "categories": categories, "server": server}


def subtract(later: dict, earlier: dict) -> dict:
    """What was scored between two reads of the metrics. Counters only grow: if one went
    down, the two reads came from different server processes (a restart, or a URL that
    balances over several replicas) and their difference means nothing. The same holds when
    the two reads name different server processes, even if every counter grew."""
    first, second = (earlier.get("server") or {}).get("instance"), (later.get("server") or {}).get("instance")
    if first != second:  # one read without the id at all: an older server on one side of a rolling upgrade
        raise ValueError(f"the two reads of the metrics came from different server processes ({first} then {second}): "
                         "it restarted, or the URL balances over several replicas (watch one pod's address); read again")
    out = {"clauses": later["clauses"] - earlier["clauses"], "categories": {}, "server": later.get("server") or {}}
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


def read_processes(url: str, token: str | None, reads: int, notes: list[str] | None = None) -> dict[str, dict]:
    """Read URL/metrics `reads` times: {server process id: its latest read}. Behind a Service
    each read reaches one replica, so several reads reach several (for k replicas picked at
    random, a given one is missed with probability ((k-1)/k)**reads). A read that cannot
    reach the server (a replica starting or stopping) is noted and skipped while another
    read succeeds. A server that does not name its process (older than this monitor) is
    keyed "", and read only once: its reads could not be told apart from another's."""
    seen: dict[str, dict] = {}
    failed: list[ConnectionError] = []
    for _ in range(reads):
        try:
            read = read_live(fetch_metrics(url, token))
        except ConnectionError as exc:
            failed.append(exc)
            continue
        instance = (read.get("server") or {}).get("instance") or ""
        if not instance and reads > 1:
            raise ValueError("the server does not name its process (older than this monitor), so several reads "
                             "of it cannot be told apart: read it once (reads 1)")
        if instance not in seen or seen[instance]["clauses"] <= read["clauses"]:
            seen[instance] = read
    if not seen:
        raise failed[-1]
    if failed and notes is not None:
        notes.append(f"{len(failed)} of {reads} reads of /metrics failed (the last: {failed[-1]})")
    return seen


def pool(parts: list[dict]) -> dict:
    """The traffic of several server processes added up (replicas behind one Service). They
    must serve the same model with the same profile over the same score buckets: during a
    rollout old and new replicas differ, and adding them would judge neither."""
    if not parts:
        raise ValueError("no server process was read")
    if len({tuple(sorted(part["categories"])) for part in parts}) > 1:
        raise ValueError("the server processes behind this URL score different categories")
    first = parts[0].get("server") or {}
    # One process keeps its name; several are named by what they share.
    server = dict(first) if len(parts) == 1 else {k: v for k, v in first.items() if k in ("model", "profile")}
    out = {"clauses": 0.0, "categories": {}, "server": server}
    for part in parts:
        other = part.get("server") or {}
        for key in ("model", "profile"):
            if other.get(key) != server.get(key):
                raise ValueError(f"the server processes behind this URL differ in {key} ({server.get(key)} and "
                                 f"{other.get(key)}): a rollout in progress? check again when it is done, or read "
                                 "one pod's address")
        out["clauses"] += part["clauses"]
        for name, category in part["categories"].items():
            into = out["categories"].get(name)
            if into is None:
                out["categories"][name] = {"bounds": list(category["bounds"]), "counts": list(category["counts"]),
                                           "positives": category["positives"]}
            elif into["bounds"] != list(category["bounds"]):
                raise ValueError(f"the server processes behind this URL use different score buckets for {name!r}")
            else:
                into["counts"] = [a + b for a, b in zip(into["counts"], category["counts"])]
                into["positives"] += category["positives"]
    return out


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI of two bucket count vectors, on shares smoothed by _SMOOTH per bucket (an empty
    side, no clause at all, counts as uniform rather than dividing by zero)."""
    shares = []
    for counts in (reference, live):
        counts = np.asarray(counts, dtype=np.float64)
        share = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1.0 / len(counts))
        shares.append((share + _SMOOTH) / (1.0 + _SMOOTH * len(share)))
    p, q = shares
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
    server = live.get("server") or {}
    if reference.get("model") and server.get("model") and reference["model"] != server["model"]:
        raise ValueError(f"the server runs model {server['model']}, not the reference's model {reference['model']}: "
                         "compare with the model it serves (--model), or deploy that model")
    profile = server.get("profile") or "default"
    notes = []
    if not server.get("profile"):
        notes.append("the server does not name its profile (older than this monitor): the reference's rates are the "
                     "default profile's")
    elif profile != "default" and any(profile not in (ref.get("positive_rates") or {})
                                      for ref in reference["categories"].values()):
        notes.append(f"the reference has no positive rates for the {profile!r} profile the server runs (evaluated "
                     "before they were kept): the reference's rates are the default profile's")
    rows, problems = [], []
    clauses = int(live["clauses"])
    enough = clauses >= min_clauses  # below it a category is not marked drifted, however its PSI reads
    for name, ref in reference["categories"].items():
        now = live["categories"].get(name)
        if now is None:
            raise ValueError(f"the server reports no scores for category {name!r}: a different model?")
        if [round(b, 6) for b in now["bounds"]] != [round(b, 6) for b in reference["buckets"]]:
            raise ValueError("the server's score buckets differ from the reference's; re-evaluate the model")
        rates = ref.get("positive_rates") or {}
        row = {"category": name, "psi": psi(ref["counts"], now["counts"]), "ks": ks(ref["counts"], now["counts"]),
               "reference_positive_rate": rates.get(profile, ref["positive_rate"]),
               "live_positive_rate": now["positives"] / clauses if clauses else 0.0}
        row["drifted"] = enough and (row["psi"] >= psi_threshold or row["ks"] >= ks_threshold)
        row["moderate"] = enough and not row["drifted"] and row["psi"] >= PSI_MODERATE
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
            "reference_split": reference.get("split", "test"), "profile": profile, "notes": notes,
            "server_instance": server.get("instance"), "server_model": server.get("model"),
            "reference_model": reference.get("model"), "categories": rows}


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


MARK_READS_KEPT = 32  # server processes a mark remembers (replicas come and go)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(uri: str) -> dict | None:
    """A mark or held read: None when there is none. Storage errors are raised (a check that
    cannot read its mark must not judge old traffic again as if it were new); a file that is
    not JSON of the right shape is reported as ValueError."""
    from tosguard.components import storage

    if not storage.exists(uri):
        return None
    try:
        data = json.loads(storage.read_text(uri))
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _valid_read(read) -> bool:
    """Whether `read` has the shape read_live gives (what subtract and compare need)."""
    if not (isinstance(read, dict) and _number(read.get("clauses")) and isinstance(read.get("server"), dict)
            and isinstance(read.get("categories"), dict)):
        return False
    for entry in read["categories"].values():
        if not (isinstance(entry, dict) and _number(entry.get("positives"))
                and isinstance(entry.get("counts"), list) and isinstance(entry.get("bounds"), list)
                and len(entry["counts"]) == len(entry["bounds"])
                and all(_number(v) for v in entry["counts"] + entry["bounds"])):
            return False
    return True


def check_mark_location(mark: str) -> None:
    """A mark is a local path, a file:// URI or s3://BUCKET/KEY; anything else is refused
    before any read (a mistyped location would otherwise pass as "no mark yet" on every run)."""
    if "://" not in mark:
        if not mark.strip():
            raise ValueError("the mark's location is empty")
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", mark):  # s3:/bucket/key, a slash short: not a local path
            raise ValueError(f"the mark {mark!r} looks like a mistyped URI: a local path, file:// URI or "
                             "s3://BUCKET/KEY")
        return
    if mark.startswith("file://"):
        return
    if mark.startswith("s3://"):
        from tosguard.components import storage

        try:
            _, key = storage._split_s3(mark)
        except ValueError:
            key = ""
        if key.strip("/"):
            return
    raise ValueError(f"the mark {mark!r} is not a local path, file:// URI or s3://BUCKET/KEY")


def _read_mark(mark: str) -> tuple[dict | None, str]:
    """{server instance: {time, read}} from the mark, or None and why there is none. A mark
    that is not one is not fatal: the check judges everything since the server started and
    writes a good mark after it. A mark that cannot be read at all (storage errors) raises."""
    from tosguard.components import storage

    shown = storage.redact(mark)
    try:
        data = _read_json(mark)
        if data is None:
            return None, f"no earlier check recorded in {shown}"
        reads = data.get("reads")
        if not isinstance(reads, dict) or not all(
                isinstance(key, str) and isinstance(v, dict) and isinstance(v.get("time"), str)
                and _valid_read(v.get("read")) for key, v in reads.items()):
            raise ValueError("not a drift check's mark")
        return reads, ""
    except ValueError as exc:
        return None, f"the mark {shown} could not be read ({exc}); it is rewritten"


def _record(mark: str, url: str, now: dict[str, dict]) -> None:
    """Put these reads ({server process: read}) into the mark, keeping the most recent
    MARK_READS_KEPT processes (replicas come and go). A process's read never goes back: if
    the mark already holds a later read of it (another check got there first, so the mark
    is read again here rather than reused), that one stays, so no traffic is judged twice."""
    from tosguard.components import storage

    reads, _ = _read_mark(mark)
    reads = dict(reads or {})
    for instance, read in now.items():
        held = reads.get(instance)
        if held is None or held["read"]["clauses"] <= read["clauses"]:
            reads[instance] = {"time": _now(), "read": read}
    kept = dict(sorted(reads.items(), key=lambda item: item[1]["time"], reverse=True)[:MARK_READS_KEPT])
    storage.write_text(mark, json.dumps({"url": storage.redact(url), "time": _now(), "reads": kept}))


def pending_mark(mark: str) -> str:
    """Where a held retrain verdict's read waits until the retrain is done (hold_retrain)."""
    return mark + ".pending"


def _held_reads(held) -> dict[str, dict]:
    """The reads a held retrain verdict kept ({server process: read}), or {} when `held` is
    not one (a single "read" is the format of the first version of this watch)."""
    if not isinstance(held, dict):
        return {}
    reads = held.get("reads")
    if reads is None and _valid_read(held.get("read")):
        reads = {(held["read"].get("server") or {}).get("instance") or "": held["read"]}
    if not (isinstance(reads, dict) and reads and all(isinstance(k, str) and _valid_read(v)
                                                      for k, v in reads.items())):
        return {}
    return reads


def acknowledge(mark: str, run: str = "") -> tuple[str, str]:
    """The retrain that the held verdict of pipeline run `run` asked for is done: its read goes
    into the mark, so the next check of that server process judges only what came after it.
    Returns (outcome, message), outcome one of "moved", "none" (nothing held) or "other_run".
    A held read of another run (two watches overlapping) is left alone: that run
    acknowledges it, or its traffic is judged again."""
    from tosguard.components import storage

    pending = pending_mark(mark)
    try:
        held = _read_json(pending)
    except ValueError:
        held = None
    waiting = _held_reads(held)
    if not waiting:
        return "none", f"no retrain was waiting on {storage.redact(mark)}"
    if run and held.get("run") and held["run"] != run:
        return "other_run", (f"the retrain waiting on {storage.redact(mark)} is run {held['run']}'s, not {run}'s: "
                             "left to it")
    _record(mark, held.get("url", ""), waiting)
    # Delete only the held read we moved; a newer one written meanwhile is, at worst, deleted
    # too, and then its traffic is judged again by the next check (never skipped).
    storage.delete(pending)
    return "moved", f"the mark moved past the traffic that asked for this retrain ({storage.redact(mark)})"


def check(url: str, model: str, window: float = 0.0, token: str | None = None, since: str | None = None,
          hold_retrain: bool = False, run: str = "", reads: int = 1, **thresholds) -> dict:
    """Read the endpoint's metrics (twice, `window` seconds apart, when window > 0) and
    compare them with the model's reference.

    reads: how many times each read of /metrics is made; the traffic of every server process
    reached (the replicas behind a Service) is pooled and judged as one. A window counts the
    processes read at both its ends.

    since: a mark (a file or store URI) for checks run one after another, as a schedule
    does: judge only what the server process scored since the last check of that process
    that reached a verdict with this mark, then record this read in it. A check with too
    little traffic leaves the mark alone, so traffic adds up until there is enough to judge;
    a process the mark has not seen (a restart, a new model) is judged on everything since
    it started. Each replica behind a Service is its own process, with its own read in the
    mark. Without a mark, a schedule judges everything since the server started on every
    run, and one drifted hour keeps saying retrain long after it passed.
    hold_retrain: a retrain verdict leaves the mark where it was and keeps its read aside
    (pending_mark, tagged with `run`) until acknowledge() says the retrain is done; a retrain
    that fails is asked for again by the next check, which judges the same traffic and more.
    A verdict that is not held drops a held read (the wider traffic it judged no longer asks)."""
    from tosguard.components import storage

    check_drift_settings(thresholds.get("psi_threshold", PSI_THRESHOLD), thresholds.get("ks_threshold", KS_THRESHOLD),
                         thresholds.get("min_clauses", MIN_CLAUSES), window, reads)  # before any wait
    reads = int(reads)
    if window > 0 and since is not None:
        raise ValueError("judge either a window or the traffic since the last check, not both")
    if since is not None:
        check_mark_location(since)
    reference = load_reference(model)
    notes: list[str] = []
    now = read_processes(url, token, reads, notes)
    if window > 0:
        _wait(window)
        first, now = now, read_processes(url, token, reads, notes)
        both = [instance for instance in now if instance in first]
        if not both:
            raise ValueError(f"the two reads of the metrics came from different server processes "
                             f"({', '.join(first) or None} then {', '.join(now) or None}): it restarted, or the URL "
                             "balances over several replicas (watch one pod's address, or read more times); read again")
        parts = [subtract(now[instance], first[instance]) for instance in both]
        if len(both) < len(now):
            notes.append(f"{len(now) - len(both)} server process(es) not read at the window's start (started during "
                         "it, or not reached then): their traffic is left out")
        if len(both) < len(first):
            notes.append(f"{len(first) - len(both)} server process(es) read at the window's start but not at its end "
                         "(stopped, or not reached then): their traffic is left out")
    elif since:
        marked, why = _read_mark(since)
        parts, unseen = [], 0
        for instance, read in now.items():
            previous = (marked or {}).get(instance) if instance else None
            if previous is None:
                if not instance:
                    notes.append("the server does not name its process (older than this monitor): judged on "
                                 "everything since it started")
                unseen += marked is not None and bool(instance)
                parts.append(read)
                continue
            try:
                parts.append(subtract(read, previous["read"]))
            except ValueError:  # the same process cannot count backwards: the mark was edited by hand
                notes.append(f"the mark's counts exceed server process {instance}'s: judged on everything since it "
                             "started")
                parts.append(read)
        if marked is None:
            notes.append(why + ": judged on everything since the server started")
        elif unseen:
            notes.append("the mark has no read of this server process (it restarted, serves another model, or is "
                         "a replica not read before): judged on everything since it started" if len(now) == 1 else
                         f"the mark has no read of {unseen} of these server processes (restarted, new, or replicas "
                         "not read before): each judged on everything since it started")
    else:
        parts = list(now.values())
    if reads > 1:
        notes.append(f"{len(now)} server process(es) reached in {reads} reads of /metrics"
                     + (f", {len(parts)} judged together" if len(parts) > 1 else f", {len(parts)} judged"))
    result = compare(reference, pool(parts), **thresholds)
    result["notes"] = notes + result["notes"]
    result["server_instances"] = sorted(now) if not window > 0 else sorted(both)
    if since:
        _move_mark(since, url, now, run, result, held=result["enough_traffic"] and result["retrain"] and hold_retrain)
    return {"url": url, "model": model, "window_seconds": window or None,
            "since": storage.redact(since) if since else None, **result}


def _move_mark(since: str, url: str, now: dict[str, dict], run: str, result: dict, held: bool) -> None:
    """After a verdict: hold this read (a retrain to come), record it, or leave the mark alone
    (too little traffic). A mark that cannot be written leaves a retrain verdict standing (the
    retrain matters more; the next check judges this traffic again) but fails any other
    check, so a mistyped or unwritable store is seen at once rather than noted every run."""
    from tosguard.components import storage

    shown = storage.redact(since)

    def failed(exc: Exception) -> str:
        return f"{type(exc).__name__}: {storage.scrub(str(exc), since)}"

    if not result["enough_traffic"]:
        result["notes"].append("too little traffic to judge: the mark stays where it was, so the next check "
                               "judges this traffic too")
        return
    try:
        if held:
            held_read = {"run": run, "url": storage.redact(url), "time": _now(), "reads": now}
            if len(now) == 1:  # also as the first version of this watch wrote it (an older acknowledge step)
                held_read["read"] = next(iter(now.values()))
            storage.write_text(pending_mark(since), json.dumps(held_read))
        else:
            _record(since, url, now)
    except Exception as exc:
        if not result["retrain"]:
            raise OSError(f"the drift mark {shown} could not be written ({failed(exc)}); the verdict was: "
                          f"{result['reason']}") from None
        result["notes"].append(f"the mark {shown} could not be written ({failed(exc)}): the next check judges this "
                               "traffic again")
        return
    if held:
        result["notes"].append("the mark moves once the retrain is done; until then the next check judges this "
                               "traffic too")
        return
    try:
        storage.delete(pending_mark(since))  # a retrain asked for earlier that never finished: no longer asked
    except Exception as exc:
        result["notes"].append(f"a retrain held earlier in {shown}.pending could not be dropped ({failed(exc)})")


def store_mark(url: str, store: str | None = None) -> str:
    """Where the scheduled drift watch keeps its mark for an endpoint: monitor/ in the store,
    one object per URL."""
    import hashlib

    from tosguard.components import storage
    from tosguard.components.store import store_root

    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return storage.join(store_root(store), "monitor", f"{key}.json")


def table(result: dict) -> str:
    lines = [f"{'category':<28} {'PSI':>6} {'KS':>6} {'positives ref':>13} {'positives live':>14}"]
    for row in result["categories"]:
        mark = "  <- drift" if row["drifted"] else "  <- moderate shift" if row.get("moderate") else ""
        lines.append(f"{row['category']:<28} {row['psi']:>6.3f} {row['ks']:>6.3f} "
                     f"{100 * row['reference_positive_rate']:>12.1f}% {100 * row['live_positive_rate']:>13.1f}%{mark}")
    lines.append(f"clauses scored: {result['clauses']}; positive rates at the {result.get('profile', 'default')} "
                 "profile's thresholds")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    verdict = "RETRAIN: " if result["retrain"] else "ok: " if result["enough_traffic"] else "no verdict: "
    lines.append(verdict + result["reason"])
    return "\n".join(lines)


def run_step(url: str, model: str, window: float, psi_threshold: float, ks_threshold: float, min_clauses: int,
             drift_metrics, report_path: str, since_last_check: bool = False, store: str = "", run: str = "",
             reads: int = 1):
    """The pipeline's drift check. model: the served model's folder or store URI; empty: the
    registry's champion (the model the gate promoted and deploy serves). since_last_check
    (with window 0): judge what was scored since the last judged check of this URL, its
    mark kept in the store (store_mark); a retrain verdict is held for run `run` until its
    acknowledge step. reads: reads of /metrics, pooling the replicas they reach."""
    import os

    from tosguard.components import storage

    if not model:
        from tosguard.components.tracking import champion

        best = champion()
        if not best:
            raise RuntimeError("no champion model in the registry to compare with; pass `model`")
        model = best["source"]
    since = store_mark(url, store) if since_last_check and not window > 0 else None
    result = check(url, model, window=window, token=token(), since=since, hold_retrain=True, run=run, reads=reads,
                   psi_threshold=psi_threshold, ks_threshold=ks_threshold, min_clauses=min_clauses)
    if since and not storage.is_s3(since) and os.environ.get("KUBERNETES_SERVICE_HOST"):
        result["notes"].append(f"the mark is kept in this pod's own folder ({since}) and goes with the pod, so every "
                               "run judges everything since the server started: pass store=s3://...")
    drift_metrics.log_metric("clauses", result["clauses"])
    for row in result["categories"]:
        key = row["category"].replace(" ", "_").replace("(", "").replace(")", "")
        drift_metrics.log_metric(f"psi.{key}", round(row["psi"], 4))
        drift_metrics.log_metric(f"ks.{key}", round(row["ks"], 4))
    judged = (f"the last {window:g} s" if window > 0 else "since the last judged check" if since
              else "everything since the server started")
    Path(report_path).write_text(f"# Drift check of {url}\n\nTraffic judged: {judged}.\n\n```\n{table(result)}\n```\n")
    print(table(result), flush=True)
    return bool(result["retrain"])


def acknowledge_step(url: str, window: float, since_last_check: bool, store: str = "", run: str = "") -> str:
    """The drift watch's last step, after a retrain that ran to the end: move the endpoint's
    mark past the traffic that asked for it (the held read of this run, `run`)."""
    if not since_last_check or window > 0:
        message = "no mark: this watch judges everything since the server started, or a window"
    else:
        outcome, message = acknowledge(store_mark(url, store), run)
        if outcome == "none":
            message += (" (this run's check could not hold its read, or a later check dropped it): the next check "
                        "judges that traffic again")
    print(message, flush=True)
    return message
