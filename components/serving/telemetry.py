"""Prometheus metrics and structured access logs of the predictor.

Metrics (at /metrics): requests by route and status, latency by route, scoring-pass
sizes, the number of clauses waiting, clauses scored, and per category the positives and
a score histogram: what a drift monitor compares with the test split's reference.
Access logs are one JSON object per request and leave clause text out.
"""
from __future__ import annotations

import json
import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 (re-exported for the app)

access_log = logging.getLogger("tosguard.access")
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class Telemetry:
    def __init__(self, categories: list[str], model: str = "", profile: str = "default"):
        """model: the served model's fingerprint (monitor.model_fingerprint); profile: the
        thresholds' profile. Both, with a random id of this process, label
        tosguard_server_info, so a drift monitor knows which process and model it read."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.instance = uuid.uuid4().hex[:12]
        Gauge("tosguard_server_info", "this server process (random id), its model's fingerprint and profile",
              ["instance", "model", "profile"], registry=r).labels(self.instance, model, profile).set(1)
        self.requests = Counter("tosguard_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("tosguard_request_seconds", "HTTP request latency by route", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60))
        self.batch = Histogram("tosguard_batch_clauses", "clauses per scoring pass", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.queue = Gauge("tosguard_queue_clauses", "clauses waiting to be scored", registry=r)
        self.connections = Gauge("tosguard_open_connections", "open client connections", registry=r)
        self.clauses = Counter("tosguard_clauses_scored", "clauses scored", registry=r)
        self.positives = Counter("tosguard_category_positive", "clauses found in each category", ["category"],
                                 registry=r)
        self.scores = Histogram("tosguard_category_score", "calibrated score per category", ["category"], registry=r,
                                buckets=SCORE_BUCKETS)
        self.shed = Counter("tosguard_shed", "requests refused with 503 (overload or deadline)", ["reason"],
                            registry=r)
        self.categories = categories
        for c in categories:  # every category shows up, even before its first positive
            self.positives.labels(c)
            self.scores.labels(c)

    def observe_results(self, results: list[dict]) -> None:
        self.clauses.inc(len(results))
        for result in results:
            for category in result["categories"]:
                self.positives.labels(category).inc()
            for category, score in result["scores"].items():
                self.scores.labels(category).observe(score)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self, route: str, method: str, status: int, started: float, client, extra: dict) -> None:
        seconds = time.perf_counter() - started
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            entry = {"route": route, "method": method, "status": status, "ms": round(seconds * 1000, 2),
                     "client": f"{client[0]}:{client[1]}" if client else None, **extra}
            access_log.info(json.dumps(entry))
