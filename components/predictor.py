"""The KServe predictor: a ``kserve.Model`` over an exported tosguard model folder.

Protocols (model name ``tosguard``):
- V1 ``POST /v1/models/tosguard:predict``
  - ``{"instances": ["clause", ...]}``: per clause the unfair categories found, a sigmoid
    score per category, ``unfair`` and ``truncated``;
  - ``{"document": "full Terms of Service text"}``: the text split into sentences, and the
    flagged clauses with their character offsets, categories and scores.
- V2 / Open Inference Protocol ``POST /v2/models/tosguard/infer`` with one BYTES input of
  clauses; outputs ``scores`` (FP32, clauses x categories), ``unfair`` (BOOL) and
  ``categories`` (BYTES, JSON list per clause). Metadata at ``GET /v2/models/tosguard``.

Multi-label: a category is found when its sigmoid score exceeds that category's threshold
shipped with the model; never softmax/argmax. Bad input raises InvalidInput (HTTP 400).
Clauses of concurrent requests are scored together in length-sorted batches.

Run as a server: ``python -m components.predictor --model-dir DIR [--host 127.0.0.1]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import uuid

import kserve
import numpy as np
import torch
from kserve.errors import InvalidInput

from components.modeling import load_exported, score_encoded

log = logging.getLogger(__name__)
MODEL_NAME = "tosguard"
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


MAX_INSTANCES = _env_int("TOSGUARD_MAX_INSTANCES", 256)
MAX_CLAUSE_CHARS = _env_int("TOSGUARD_MAX_CLAUSE_CHARS", 20_000)
MAX_DOCUMENT_CHARS = _env_int("TOSGUARD_MAX_DOCUMENT_CHARS", 500_000)
MAX_BODY_BYTES = _env_int("TOSGUARD_MAX_BODY_BYTES", 2_000_000)
BATCH_SIZE = _env_int("TOSGUARD_BATCH_SIZE", 64)
# Padded tokens per forward pass: long clauses go in small batches (measured here: 1,024
# served random 64-clause requests 2.4x faster than fixed batches of 64).
BATCH_TOKENS = _env_int("TOSGUARD_BATCH_TOKENS", 1024)
BATCH_WINDOW_MS = float(os.environ.get("TOSGUARD_BATCH_WINDOW_MS", "2"))

# Sentence ends: . ! ? ; followed by space, unless the word before is a known abbreviation.
_ABBREVIATIONS = {"e.g", "i.e", "etc", "inc", "ltd", "co", "corp", "llc", "u.s", "u.k", "no", "vs", "mr", "ms",
                  "dr", "st", "art", "sec", "para", "cf", "approx", "incl"}
_LIST_MARKER = re.compile(r"^\(?[0-9a-zA-Z]{1,3}[.)]$")  # "1." or "(a)" opening a clause
_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)]|\(?[a-z]\)))")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (clauses) of a document."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        before = text[start : match.start()].rstrip()
        last_word = before.rsplit(None, 1)[-1].rstrip(".!?;").lower() if before else ""
        if before.endswith(".") and (last_word in _ABBREVIATIONS or _LIST_MARKER.match(before.strip())):
            continue
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        chunk = text[s:e]
        stripped = chunk.strip()
        if stripped:
            lead = len(chunk) - len(chunk.lstrip())
            out.append((s + lead, s + lead + len(stripped)))
    return out


def _check_clauses(clauses, field: str) -> list[str]:
    if not isinstance(clauses, list) or not clauses:
        raise InvalidInput(f'"{field}" must be a non-empty list of clause strings')
    if len(clauses) > MAX_INSTANCES:
        raise InvalidInput(f'"{field}" holds {len(clauses)} clauses; the limit is {MAX_INSTANCES} per request')
    for i, clause in enumerate(clauses):
        if not isinstance(clause, str):
            raise InvalidInput(f"{field}[{i}] must be a string, got {type(clause).__name__}")
        if not clause.strip():
            raise InvalidInput(f"{field}[{i}] is empty")
        if len(clause) > MAX_CLAUSE_CHARS:
            raise InvalidInput(f"{field}[{i}] has {len(clause)} characters; the limit is {MAX_CLAUSE_CHARS}")
    return clauses


def validate_instances(payload) -> list[str]:
    """The V1 clause request body -> clauses, or InvalidInput (HTTP 400) saying what is wrong."""
    if isinstance(payload, (bytes, bytearray, str)):
        raise InvalidInput("the body was not read as JSON: send it with Content-Type: application/json")
    if not isinstance(payload, dict):
        raise InvalidInput('request body must be a JSON object like {"instances": ["clause text", ...]}')
    if "instances" not in payload:
        raise InvalidInput('missing field "instances" (a list of clause strings) or "document" (a string)')
    return _check_clauses(payload["instances"], "instances")


def validate_document(payload: dict) -> str:
    document = payload["document"]
    if not isinstance(document, str):
        raise InvalidInput(f'"document" must be a string, got {type(document).__name__}')
    if not document.strip():
        raise InvalidInput('"document" is empty')
    if len(document) > MAX_DOCUMENT_CHARS:
        raise InvalidInput(f'"document" has {len(document)} characters; the limit is {MAX_DOCUMENT_CHARS}')
    return document


def _bf16_matmul_is_native() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class _Batcher:
    """Collects clauses from concurrent requests for a few milliseconds, scores them in one
    length-sorted pass, and hands each request its rows."""

    def __init__(self, score_fn, window_ms: float, max_rows: int):
        self.score_fn = score_fn
        self.window = window_ms / 1000
        self.max_rows = max_rows
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.passes = 0  # scoring passes run, for tests and metrics

    async def score(self, clauses: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        # The queue and its worker belong to one event loop; start them on first use in each.
        if self.loop is not loop or self.worker is None or self.worker.done():
            self.loop = loop
            self.queue = asyncio.Queue()
            self.worker = loop.create_task(self._run())
        future = loop.create_future()
        await self.queue.put((clauses, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            rows = len(jobs[0][0])
            deadline = loop.time() + self.window
            while rows < self.max_rows:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                rows += len(job[0])
            clauses = [c for job, _ in jobs for c in job]
            self.passes += 1
            try:
                scores = await loop.run_in_executor(None, self.score_fn, clauses)
            except Exception as exc:  # hand the failure to every waiting request
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for job, future in jobs:
                if not future.done():
                    future.set_result(scores[offset : offset + len(job)])
                offset += len(job)


class UnfairClauseModel(kserve.Model):
    def __init__(self, name: str = MODEL_NAME, model_dir: str = DEFAULT_MODEL_DIR, precision: str | None = None):
        super().__init__(name)
        self.model_dir = model_dir
        self.precision = precision or os.environ.get("TOSGUARD_SERVE_PRECISION", "auto")
        self.ready = False

    def load(self) -> bool:
        from components.storage import fetch_folder

        self.classifier, self.tokenizer, self.card = load_exported(str(fetch_folder(self.model_dir)))
        self.categories = list(self.card["categories"])
        self.thresholds = np.asarray(self.card["thresholds"], dtype=np.float32)
        self.max_length = int(self.card.get("max_length", 128))
        use_bf16 = self.precision == "bf16" or (
            self.precision == "auto" and not torch.cuda.is_available() and _bf16_matmul_is_native()
        )
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        self._batcher = _Batcher(self._score_texts, BATCH_WINDOW_MS, max(BATCH_SIZE, MAX_INSTANCES))
        self.ready = True
        log.info("loaded %s (%s, base %s, %s)", self.model_dir, self.card.get("method"),
                 self.card.get("base_model"), str(self.dtype).replace("torch.", ""))
        return self.ready

    # -- scoring -------------------------------------------------------------------------
    def _score_texts(self, clauses: list[str]) -> np.ndarray:
        """(clauses, categories) sigmoid scores; the last column flags truncation."""
        encoded = self.tokenizer(clauses, truncation=True, max_length=self.max_length, padding=False)
        ids = encoded["input_ids"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            scores = score_encoded(self.classifier, ids, self.tokenizer.pad_token_id, BATCH_SIZE, BATCH_TOKENS)
        truncated = np.asarray([len(row) >= self.max_length for row in ids], dtype=np.float32)[:, None]
        return np.concatenate([scores.astype(np.float32), truncated], axis=1)

    def _results(self, scored: np.ndarray) -> list[dict]:
        results = []
        for row in scored:
            scores, truncated = row[:-1], bool(row[-1])
            found = [c for c, s, t in zip(self.categories, scores, self.thresholds) if s > t]
            results.append({
                "unfair": bool(found),
                "categories": found,
                "scores": {c: round(float(s), 6) for c, s in zip(self.categories, scores)},
                "truncated": truncated,
            })
        return results

    def classify(self, clauses: list[str]) -> list[dict]:
        """Score clauses synchronously (in-process use, tests, benchmarks)."""
        return self._results(self._score_texts(clauses))

    def analyze_document(self, document: str) -> dict:
        spans = split_sentences(document)
        results = self.classify([document[s:e] for s, e in spans])
        return self._document_response(document, spans, results)

    def _document_response(self, document, spans, results) -> dict:
        flagged = [
            {"clause": document[s:e], "start": s, "end": e, **r}
            for (s, e), r in zip(spans, results) if r["unfair"]
        ]
        return {"sentences": len(spans), "flagged": flagged, "unfair": bool(flagged)}

    # -- KServe entry points -------------------------------------------------------------
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
            return {"document": self._document_response(document, spans, self._results(scored))}
        clauses = validate_instances(payload)
        return {"predictions": self._results(await self._batcher.score(clauses))}

    async def _predict_v2(self, request):
        from kserve import InferOutput, InferResponse

        if len(request.inputs) != 1:
            raise InvalidInput(f"expected exactly one input (BYTES clauses), got {len(request.inputs)}")
        infer_input = request.inputs[0]
        if infer_input.datatype != "BYTES":
            raise InvalidInput(f"input {infer_input.name!r} must have datatype BYTES, got {infer_input.datatype}")
        raw = infer_input.data
        if not isinstance(raw, list):
            raise InvalidInput(f"input {infer_input.name!r} data must be a list of strings")
        clauses = []
        for i, item in enumerate(raw):
            if isinstance(item, (bytes, bytearray)):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"input {infer_input.name!r}[{i}] is not valid UTF-8") from None
            clauses.append(item)
        clauses = _check_clauses(clauses, infer_input.name)
        results = self._results(await self._batcher.score(clauses))
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


class BodyLimitMiddleware:
    """ASGI middleware: a request body over ``max_bytes`` gets HTTP 413 before any parsing."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._reject(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await self._reject(send, 413, f"request body of {int(declared)} bytes; the limit is {self.max_bytes}")
        # Read the body (chunked bodies have no declared length), stopping past the limit.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(send, 413, f"request body over the limit of {self.max_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _add_request_limits(app) -> None:
    """Put tosguard's body-size limit in front of KServe's app, once."""
    if not getattr(app.state, "tosguard_limits", False):
        app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
        app.state.tosguard_limits = True


def build_app(model: UnfairClauseModel):
    """KServe's FastAPI app serving ``model``, with tosguard's request limits.

    Used by the server below and, in-process, by tests and benchmarks.
    """
    from kserve import ModelRepository
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer

    if getattr(app.state, "tosguard_repository", None) is not None:
        # KServe's app is one global object: register the model with the dataplane it serves.
        app.state.tosguard_repository.update(model)
        return app
    repository = ModelRepository()
    repository.update(model)
    server = kserve.ModelServer(registered_models=repository, enable_grpc=False)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0)
    rest.create_application()
    _add_request_limits(app)
    app.state.tosguard_repository = repository
    return app


class LoopbackModelServer(kserve.ModelServer):
    """KServe's ModelServer binds 0.0.0.0; this one binds the host it is given and adds
    tosguard's request limits."""

    def __init__(self, host: str = "127.0.0.1", **kwargs):
        super().__init__(enable_grpc=False, **kwargs)
        self.host = host

    def start(self, models) -> None:
        from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
        from kserve.protocol.rest.server import RESTServer

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        _add_request_limits(app)
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve a tosguard model with KServe (V1 and V2 protocols).")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="exported model folder, or a model store URI (file://... or s3://...)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a cluster pod)")
    parser.add_argument("--http-port", type=int, default=8080)
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = UnfairClauseModel(MODEL_NAME, args.model_dir)
    model.load()
    LoopbackModelServer(host=args.host, http_port=args.http_port).start([model])


if __name__ == "__main__":
    main()
