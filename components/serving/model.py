"""The `kserve.Model` that serves a tosguard model as `tosguard`.

- V1 ``POST /v1/models/tosguard:predict``: ``{"instances": ["clause", ...]}`` -> per clause
  the categories found, a score per category, ``unfair`` and ``truncated``;
  ``{"document": "full Terms of Service text"}`` -> the flagged clauses with offsets.
- V2 / Open Inference Protocol ``POST /v2/models/tosguard/infer`` with one BYTES input;
  outputs ``scores`` (FP32, clauses x categories), ``unfair`` (BOOL) and ``categories``
  (BYTES, a JSON list per clause). Metadata at ``GET /v2/models/tosguard``.

Bad input raises InvalidInput (HTTP 400). Clauses of concurrent requests share scoring
passes through the batcher.
"""
from __future__ import annotations

import json
import logging
import os
import uuid

import kserve
import numpy as np

from tosguard.components.config import NAME
from tosguard.components.serving.batcher import Batcher
from tosguard.components.serving.scorer import BATCH_SIZE, ClauseScorer, document_report
from tosguard.components.serving.split import split_sentences
from tosguard.components.serving.validate import (
    MAX_INSTANCES, v2_clauses, validate_document, validate_instances,
)

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
BATCH_WINDOW_MS = float(os.environ.get("TOSGUARD_BATCH_WINDOW_MS", "2"))


class UnfairClauseModel(kserve.Model):
    def __init__(self, name: str = NAME, model_dir: str = DEFAULT_MODEL_DIR, precision: str | None = None):
        super().__init__(name)
        self.model_dir = model_dir
        self.precision = precision
        self.ready = False

    def load(self) -> bool:
        from tosguard.components.storage import fetch_folder

        self.scorer = ClauseScorer(str(fetch_folder(self.model_dir)), self.precision)
        self.categories = self.scorer.categories
        self._batcher = Batcher(self.scorer.raw_scores, BATCH_WINDOW_MS, max(BATCH_SIZE, MAX_INSTANCES))
        self.ready = True
        card = self.scorer.card
        log.info("loaded %s (%s, base %s, %s)", self.model_dir, card.get("method"), card.get("base_model"),
                 str(self.scorer.dtype).replace("torch.", ""))
        return self.ready

    def classify(self, clauses: list[str]) -> list[dict]:
        """Score clauses synchronously (in-process use, tests, benchmarks)."""
        return self.scorer.score(clauses)

    async def predict(self, payload, headers=None, response_headers=None):
        from kserve import InferRequest

        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if isinstance(payload, dict) and "document" in payload:
            document = validate_document(payload)
            spans = split_sentences(document)
            clauses = [document[s:e] for s, e in spans]
            scored = np.concatenate([
                await self._batcher.score(clauses[i : i + MAX_INSTANCES]) for i in range(0, len(clauses), MAX_INSTANCES)
            ])
            return {"document": document_report(document, spans, self.scorer.results(scored))}
        clauses = validate_instances(payload)
        return {"predictions": self.scorer.results(await self._batcher.score(clauses))}

    async def _predict_v2(self, request):
        from kserve import InferOutput, InferResponse

        results = self.scorer.results(await self._batcher.score(v2_clauses(request)))
        n = len(results)
        outputs = [
            InferOutput("scores", [n, len(self.categories)], "FP32",
                        data=[r["scores"][c] for r in results for c in self.categories]),
            InferOutput("unfair", [n], "BOOL", data=[r["unfair"] for r in results]),
            InferOutput("categories", [n], "BYTES", data=[json.dumps(r["categories"]) for r in results]),
        ]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=request.id or str(uuid.uuid4()))

    def get_input_types(self):
        return [{"name": "clauses", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self):
        return [
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(getattr(self, "categories", [])) or 8]},
            {"name": "unfair", "datatype": "BOOL", "shape": [-1]},
            {"name": "categories", "datatype": "BYTES", "shape": [-1]},
        ]
