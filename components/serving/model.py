"""The `kserve.Model` that serves a tosguard model as `tosguard`.

- V1 ``POST /v1/models/tosguard:predict``: ``{"instances": ["clause", ...]}`` -> per clause
  the categories found, a score per category, ``unfair`` and ``truncated``;
  ``{"document": "full Terms of Service text"}`` -> the flagged clauses with offsets.
- V2 / Open Inference Protocol ``POST /v2/models/tosguard/infer`` with one BYTES input;
  outputs ``scores`` (FP32, clauses x categories), ``unfair`` (BOOL) and ``categories``
  (BYTES, a JSON list per clause). Metadata at ``GET /v2/models/tosguard``.

The HTTP app (app.py) validates requests (validate.py) and calls `score_clauses`,
`analyze` and `infer_v2`; `predict` keeps the `kserve.Model` entry point working for
KServe's own ModelServer. Clauses of concurrent requests share scoring passes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import uuid

import kserve
import numpy as np

from tosguard.components.config import NAME, env_number
from tosguard.components.serving.batcher import Batcher
from tosguard.components.attribution import attach, variants
from tosguard.components.serving.scorer import BATCH_SIZE, ClauseScorer, document_report
from tosguard.components.serving.split import split_sentences
from tosguard.components.serving.validate import (
    MAX_DOCUMENT_CLAUSES, MAX_INSTANCES, OUTPUT_NAMES, RequestError, V2Request, check_clauses, validate_v1,
)

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
BATCH_WINDOW_MS = env_number("TOSGUARD_BATCH_WINDOW_MS", 0.0, float)
MAX_QUEUED_CLAUSES = env_number("TOSGUARD_MAX_QUEUED_CLAUSES", 8192, low=1)
# The web page's word attributions (POST /report): variants scored per report, seconds of
# scoring, and rows per batcher call (small, so other requests interleave).
EXPLAIN_ROWS = env_number("TOSGUARD_EXPLAIN_ROWS", 480)
EXPLAIN_SECONDS = env_number("TOSGUARD_EXPLAIN_SECONDS", 10, float)
EXPLAIN_CHUNK = 32


class UnfairClauseModel(kserve.Model):
    def __init__(self, name: str = NAME, model_dir: str = DEFAULT_MODEL_DIR, precision: str | None = None,
                 profile: str | None = None):
        super().__init__(name)
        self.model_dir = model_dir
        self.precision = precision
        self.profile = profile  # default | triage (None: TOSGUARD_PROFILE, else default)
        self.ready = False
        self.on_pass = None  # telemetry hooks, set by the app
        self.on_results = None

    def load(self) -> bool:
        from concurrent.futures import ThreadPoolExecutor

        from tosguard.components.storage import fetch_folder

        # Every torch call runs on this one thread: a second thread calling torch brings a
        # second OpenMP team, and the two fight over the cores (measured: 15 against 9 ms
        # a clause).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tosguard-score")
        folder = str(fetch_folder(self.model_dir))
        self.scorer = self.executor.submit(ClauseScorer, folder, self.precision, self.profile).result()
        self.executor.submit(self.scorer.warm_up).result()
        self.categories = self.scorer.categories
        self.batcher = Batcher(self.scorer.raw_scores, BATCH_WINDOW_MS, max(BATCH_SIZE, MAX_INSTANCES),
                               MAX_QUEUED_CLAUSES, on_pass=lambda n: self.on_pass and self.on_pass(n),
                               executor=self.executor)
        self.ready = True
        card = self.scorer.card
        log.info("loaded %s (%s, base %s, %s)", self.model_dir, card.get("method"), card.get("base_model"),
                 str(self.scorer.dtype).replace("torch.", ""))
        return self.ready

    def classify(self, clauses: list[str]) -> list[dict]:
        """Score clauses synchronously (in-process use, tests, benchmarks)."""
        return self.executor.submit(self.scorer.score, clauses).result()

    # -- what the HTTP app calls ------------------------------------------------------------
    async def score_clauses(self, clauses: list[str]) -> list[dict]:
        results = self.scorer.results(await self.batcher.score(clauses))
        if self.on_results:
            self.on_results(results)
        return results

    async def analyze(self, document: str) -> dict:
        """Split off the event loop, score in passes of at most MAX_INSTANCES clauses (other
        requests' clauses interleave between them), report the flagged clauses."""
        loop = asyncio.get_running_loop()
        spans = await loop.run_in_executor(None, split_sentences, document)
        if len(spans) > MAX_DOCUMENT_CLAUSES:
            raise RequestError(f"the document splits into {len(spans)} clauses; the limit is {MAX_DOCUMENT_CLAUSES}")
        clauses = [document[s:e] for s, e in spans]
        results = []
        for i in range(0, len(clauses), MAX_INSTANCES):
            results += await self.score_clauses(clauses[i : i + MAX_INSTANCES])
        return document_report(document, spans, results)

    async def explain(self, report: dict) -> dict:
        """Occlusion weights for the report's flagged clauses (components/attribution.py),
        scored through the batcher like any request, but kept out of the prediction
        metrics: the variants are not clauses anyone sent.

        Bounded so a report costs about as much as a long document, not fifty times that:
        at most EXPLAIN_ROWS variants (the highest-scored clauses first) and EXPLAIN_SECONDS
        of scoring, in chunks of EXPLAIN_CHUNK so other requests' clauses join the passes
        in between. What did not fit is reported as not explained."""
        texts, plan = variants(report, max_rows=EXPLAIN_ROWS)
        scores, deadline = [], time.monotonic() + EXPLAIN_SECONDS
        done_clauses, position = 0, 0
        for index, spans in plan:
            if time.monotonic() > deadline:
                break
            mine = texts[position : position + len(spans)]
            for i in range(0, len(mine), EXPLAIN_CHUNK):
                scores += self.scorer.results(await self.batcher.score(mine[i : i + EXPLAIN_CHUNK]))
            position += len(spans)
            done_clauses += 1
        return attach(report, plan[:done_clauses], scores)

    async def infer_v2(self, request: V2Request) -> tuple[dict, bytes]:
        """-> (the V2 response JSON, binary data to append after it: empty unless asked for)."""
        results = await self.score_clauses(request.clauses)
        n = len(results)
        tensors = {
            "scores": ([n, len(self.categories)], "FP32", [r["scores"][c] for r in results for c in self.categories]),
            "unfair": ([n], "BOOL", [r["unfair"] for r in results]),
            "categories": ([n], "BYTES", [json.dumps(r["categories"]) for r in results]),
        }
        outputs, binary = [], b""
        for name in request.outputs or OUTPUT_NAMES:
            shape, datatype, data = tensors[name]
            output = {"name": name, "shape": shape, "datatype": datatype}
            if name in request.binary_outputs:
                raw = _binary(datatype, data)
                output["parameters"] = {"binary_data_size": len(raw)}
                binary += raw
            else:
                output["data"] = data
            outputs.append(output)
        return {"model_name": self.name, "id": request.id or str(uuid.uuid4()), "outputs": outputs}, binary

    # -- KServe's entry point ----------------------------------------------------------------
    async def predict(self, payload, headers=None, response_headers=None):
        from kserve import InferOutput, InferRequest, InferResponse

        if isinstance(payload, InferRequest):
            if len(payload.inputs) != 1:
                raise kserve.errors.InvalidInput("expected exactly one BYTES input of clauses")
            raw = payload.inputs[0].data
            data = [d.decode("utf-8", "replace") if isinstance(d, (bytes, bytearray)) else d for d in raw or []]
            try:
                clauses = check_clauses(data, payload.inputs[0].name)
            except RequestError as exc:
                raise kserve.errors.InvalidInput(str(exc)) from None
            body, _ = await self.infer_v2(V2Request(payload.inputs[0].name, clauses, payload.id))
            return InferResponse(model_name=self.name, response_id=body["id"], infer_outputs=[
                InferOutput(o["name"], o["shape"], o["datatype"], data=o["data"]) for o in body["outputs"]])
        try:
            kind, value = validate_v1(payload)
        except RequestError as exc:
            raise kserve.errors.InvalidInput(str(exc)) from None
        if kind == "document":
            return {"document": await self.analyze(value)}
        return {"predictions": await self.score_clauses(value)}

    def metadata(self) -> dict:
        return {
            "name": self.name, "versions": ["1"], "platform": "tosguard-pytorch",
            "inputs": [{"name": "clauses", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "scores", "datatype": "FP32", "shape": [-1, len(self.categories)]},
                {"name": "unfair", "datatype": "BOOL", "shape": [-1]},
                {"name": "categories", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"categories": self.categories, "thresholds": self.scorer.thresholds.tolist(),
                           "profile": self.scorer.profile, "calibrated": self.scorer.calibration is not None,
                           "base_model": self.scorer.card.get("base_model"), "method": self.scorer.card.get("method"),
                           "fingerprint": self.scorer.fingerprint},
        }


def _binary(datatype: str, data: list) -> bytes:
    """The V2 binary tensor layout of an output."""
    if datatype == "FP32":
        return np.asarray(data, dtype="<f4").tobytes()
    if datatype == "BOOL":
        return np.asarray(data, dtype=np.bool_).tobytes()
    out = bytearray()
    for item in data:
        raw = item.encode("utf-8")
        out += struct.pack("<I", len(raw)) + raw
    return bytes(out)
