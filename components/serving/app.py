"""The predictor's HTTP server: the serving contract and nothing else, on uvicorn.

Routes (everything else is 404, a known path with another method 405):

    GET  /  /v2/health/live  /v2/health/ready           liveness and readiness (no auth)
    GET  /  with Accept preferring text/html            the web page (page.py; no auth, it holds no data)
    POST /report                                        a document -> the report as HTML (the page's call)
    GET  /v1/models  /v1/models/tosguard                V1 model list and status
    POST /v1/models/tosguard:predict                    clauses or a document (V1)
    GET  /v2  /v2/models/tosguard  /v2/models/tosguard/ready   V2 metadata and readiness
    POST /v2/models/tosguard/infer                      V2 (JSON or binary tensor extension)
    GET  /metrics                                       Prometheus metrics

No model repository (load/unload) and no API docs. Every client error is a 4xx with a
JSON {"error": message}; only deliberate shedding (too much queued, a request past its
deadline, too many connections) answers 503, at once and with Retry-After. Bodies over
the limit get 413 without being read whole; header and body reads have time limits and
idle connections are closed. A bearer token (TOSGUARD_AUTH_TOKEN or a file named by
TOSGUARD_AUTH_TOKEN_FILE, e.g. a mounted Secret) guards everything but the health routes.

KServe is used through its public API (`kserve.Model`); its own HTTP server is not used,
because it exposes the model repository extension, binds 0.0.0.0 and answered several
malformed inputs with 5xx. The one internal touched here is uvicorn's H11Protocol,
subclassed (GuardedH11Protocol) because uvicorn has no limit on how long a client may
take to send its request headers, nor a connection cap that answers with Retry-After.

Run: ``python -m tosguard.components.serving --model-dir DIR|URI [--host 127.0.0.1] [--http-port 8080]``.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import re
import time
import uuid

from tosguard.components.config import NAME, PROFILES, env_number
from tosguard.components.serving.batcher import Overloaded
from tosguard.components.serving.model import DEFAULT_MODEL_DIR, UnfairClauseModel
from tosguard.components.serving.page import (
    REPORT_PATH, model_label, page, report_fragment, report_request, wants_html,
)
from tosguard.components.serving.telemetry import CONTENT_TYPE_LATEST, Telemetry
from tosguard.components.serving.validate import (
    MAX_BODY_BYTES, RequestError, decode_body, dumps, json_body, media_type, validate_v1, validate_v2,
)

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = env_number("TOSGUARD_REQUEST_TIMEOUT_S", 60, float, low=0.1)
BODY_TIMEOUT_S = env_number("TOSGUARD_BODY_TIMEOUT_S", 10, float, low=0.1)
HEADER_TIMEOUT_S = env_number("TOSGUARD_HEADER_TIMEOUT_S", 10, float, low=0.1)
IDLE_TIMEOUT_S = env_number("TOSGUARD_IDLE_TIMEOUT_S", 5, float, low=0.1)
MAX_CONNECTIONS = env_number("TOSGUARD_MAX_CONNECTIONS", 256, low=1)
MAX_HEADER_BYTES = 16 * 1024
RETRY_AFTER_S = "1"
_open_connections: set = set()  # uvicorn's set of live connections, for the metrics


def auth_token() -> str | None:
    """The bearer token clients must send, if one is configured."""
    path = os.environ.get("TOSGUARD_AUTH_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return os.environ.get("TOSGUARD_AUTH_TOKEN", "").strip() or None


class Response:
    def __init__(self, status: int, body: bytes, content_type: str = "application/json", headers=()):
        self.status, self.body, self.content_type, self.headers = status, body, content_type, list(headers)


def _json(status: int, value, headers=()) -> Response:
    return Response(status, dumps(value), headers=headers)


def _error(status: int, message: str, headers=()) -> Response:
    return _json(status, {"error": message}, headers)


class _ClientGone(Exception):
    pass


class PredictorApp:
    """The ASGI app over one loaded UnfairClauseModel."""

    def __init__(self, model: UnfairClauseModel, token: str | None = None):
        self.model = model
        self.token = token
        self.telemetry = Telemetry(model.categories, model.scorer.fingerprint, model.scorer.profile)
        model.on_pass = self.telemetry.batch.observe
        model.on_results = self.telemetry.observe_results
        name = model.name
        self.routes = {
            "/": {"GET": self.root}, "/v2/health/live": {"GET": self.live},
            "/v2/health/ready": {"GET": self.ready}, f"/v2/models/{name}/ready": {"GET": self.ready},
            "/v1/models": {"GET": self.list_models}, f"/v1/models/{name}": {"GET": self.model_status},
            f"/v1/models/{name}:predict": {"POST": self.predict_v1},
            "/v2": {"GET": self.server_metadata}, f"/v2/models/{name}": {"GET": self.model_metadata},
            f"/v2/models/{name}/infer": {"POST": self.infer_v2},
            "/metrics": {"GET": self.metrics},
            REPORT_PATH: {"POST": self.report},
        }
        self.open_routes = {"/", "/v2/health/live", "/v2/health/ready", f"/v2/models/{name}/ready"}
        self.page = page(token_required=bool(token))  # (body, headers): the web page never changes

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        if path.startswith(("http://", "https://")):  # an absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        headers, header_bytes = {}, 0
        for key, value in scope["headers"]:
            headers[key] = value  # last one wins; names are lower-case in ASGI
            header_bytes += len(key) + len(value)
        route = path if path in self.routes else "other"
        extra: dict = {}
        head = method == "HEAD"
        try:
            if header_bytes > MAX_HEADER_BYTES:
                response = _error(431, f"request headers of {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}",
                                  [(b"connection", b"close")])
            elif b"transfer-encoding" in headers and b"content-length" in headers:
                # Both framings at once is how requests are smuggled past proxies: refuse.
                response = _error(400, "send Content-Length or Transfer-Encoding, not both",
                                  [(b"connection", b"close")])
            else:
                response = await self.dispatch(path, "GET" if head else method, headers, receive, extra)
        except _ClientGone:
            self.telemetry.record(route, method, 499, started, scope.get("client"), extra)
            return
        except Exception:  # a bug, never a client's doing: log it, answer without details
            log.exception("unhandled error on %s %s", method, path)
            response = _error(500, "internal error; see the server log")
        if b"ce-specversion" in headers:  # a CloudEvent in: answer as one (binary mode)
            response.headers += [(b"ce-specversion", b"1.0"), (b"ce-id", uuid.uuid4().hex.encode()),
                                 (b"ce-source", f"io.kserve.inference.{NAME}".encode()),
                                 (b"ce-type", b"io.kserve.inference.response")]
        await send({"type": "http.response.start", "status": response.status, "headers": [
            (b"content-type", response.content_type.encode()), (b"content-length", str(len(response.body)).encode()),
            *response.headers]})
        await send({"type": "http.response.body", "body": b"" if head else response.body})
        self.telemetry.record(route, method, response.status, started, scope.get("client"), extra)

    async def dispatch(self, path: str, method: str, headers: dict, receive, extra: dict) -> Response:
        methods = self.routes.get(path)
        if methods is None:
            return _error(404, self._not_found(path))
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(list(methods) + (["HEAD"] if "GET" in methods else []))
            return _error(405, f"{method} is not allowed on {path}", [(b"allow", allowed.encode())])
        if self.token and path not in self.open_routes:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not given.lower().startswith("bearer "):
                return _error(401, "this endpoint needs a bearer token (Authorization: Bearer TOKEN)",
                              [(b"www-authenticate", b'Bearer realm="tosguard"')])
            if not hmac.compare_digest(given[7:].strip().encode(), self.token.encode()):
                return _error(403, "the bearer token is not valid")
        if method != "POST":
            return await (self.root(headers) if path == "/" else handler())
        try:
            raw = await self._read_body(headers, receive)
            # Decompressing and parsing are CPU work a client controls: off the event loop,
            # so health checks and other requests are answered meanwhile.
            body = await asyncio.to_thread(decode_body, raw, headers) if raw else raw
        except RequestError as exc:
            closing = [(b"connection", b"close")] if exc.status in (408, 413) else []
            return _error(exc.status, str(exc), closing)
        extra["bytes"] = len(body)
        return await self._guarded(handler(body, headers, extra), receive)

    def _not_found(self, path: str) -> str:
        for prefix in ("/v1/models/", "/v2/models/"):
            if path.startswith(prefix):
                other = path[len(prefix):].split("/")[0].split(":")[0]
                if other and other != self.model.name:
                    return f"model {other!r} is not served here (this server serves {self.model.name!r})"
        return f"no route {path}"

    async def _read_body(self, headers: dict, receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None:
            if not re.fullmatch(rb"[0-9]{1,12}", declared.strip()):
                raise RequestError("invalid Content-Length header")
            if int(declared) > MAX_BODY_BYTES:
                raise RequestError(f"request body of {int(declared)} bytes; the limit is {MAX_BODY_BYTES}", 413)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + BODY_TIMEOUT_S
        while more:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise RequestError(f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s", 408) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise RequestError(f"request body over the limit of {MAX_BODY_BYTES} bytes", 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _guarded(self, work, receive) -> Response:
        """Run a request's work under its deadline; stop it when the client goes away."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(receive())  # after the body, receive() waits for a disconnect
        try:
            done, _ = await asyncio.wait({task, watcher}, timeout=REQUEST_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                try:
                    return task.result()
                except RequestError as exc:
                    return _error(exc.status, str(exc))
                except Overloaded as exc:
                    self.telemetry.shed.labels("overload").inc()
                    return _error(503, f"overloaded: {exc}; retry shortly", [(b"retry-after", RETRY_AFTER_S.encode())])
            task.cancel()
            if watcher in done:
                raise _ClientGone()
            self.telemetry.shed.labels("deadline").inc()
            return _error(503, f"the request did not finish within {REQUEST_TIMEOUT_S:.0f} s; retry shortly",
                          [(b"retry-after", RETRY_AFTER_S.encode())])
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()

    # -- routes -----------------------------------------------------------------------------
    async def root(self, headers: dict) -> Response:
        """The web page for a browser, the liveness answer for everyone else (probes, curl)."""
        if wants_html(headers.get(b"accept", b"")):
            body, page_headers = self.page
            return Response(200, body, "text/html; charset=utf-8", list(page_headers))
        response = await self.live()
        response.headers.append((b"vary", b"Accept"))
        return response

    async def live(self) -> Response:
        return _json(200, {"status": "alive", "live": True})

    async def ready(self) -> Response:
        ready = bool(self.model.ready)
        return _json(200 if ready else 503, {"name": self.model.name, "ready": ready})

    async def list_models(self) -> Response:
        return _json(200, {"models": [self.model.name]})

    async def model_status(self) -> Response:
        return _json(200, {"name": self.model.name, "ready": bool(self.model.ready)})

    async def server_metadata(self) -> Response:
        return _json(200, {"name": NAME, "version": "1", "extensions": ["binary_tensor_data"]})

    async def model_metadata(self) -> Response:
        return _json(200, self.model.metadata())

    async def metrics(self) -> Response:
        self.telemetry.queue.set(self.model.batcher.queued)
        self.telemetry.connections.set(len(_open_connections))
        return Response(200, self.telemetry.render(), CONTENT_TYPE_LATEST)

    async def predict_v1(self, body: bytes, headers: dict, extra: dict) -> Response:
        kind, value = await asyncio.to_thread(lambda: validate_v1(json_body(body, headers)))
        if kind == "document":
            report = await self.model.analyze(value)
            extra.update(kind="document", clauses=report["sentences"], flagged=len(report["flagged"]))
            return _json(200, {"document": report})
        results = await self.model.score_clauses(value)
        extra.update(kind="clauses", clauses=len(results))
        return _json(200, {"predictions": results})

    async def report(self, body: bytes, headers: dict, extra: dict) -> Response:
        """The web page's call: a document -> its report (report.html_body) as HTML."""
        if not media_type(headers)[0]:
            # Without a Content-Type a cross-site page could send this costly call as a
            # "simple" request with no preflight; the page itself always sends JSON's.
            raise RequestError("send Content-Type: application/json", 415)
        document, name = await asyncio.to_thread(lambda: report_request(json_body(body, headers)))
        report = await self.model.explain(await self.model.analyze(document))
        extra.update(kind="report", clauses=report["sentences"], flagged=len(report["flagged"]))
        label = model_label(self.model.name, self.model.scorer.card)
        fragment, fragment_headers = await asyncio.to_thread(report_fragment, document, report, name, label)
        return Response(200, fragment, "text/html; charset=utf-8", fragment_headers)

    async def infer_v2(self, body: bytes, headers: dict, extra: dict) -> Response:
        request = await asyncio.to_thread(validate_v2, body, headers)
        answer, binary = await self.model.infer_v2(request)
        extra.update(kind="v2", clauses=len(request.clauses))
        if not binary:
            return _json(200, answer)
        head = dumps(answer)
        return Response(200, head + binary, "application/octet-stream",
                        [(b"inference-header-content-length", str(len(head)).encode())])


# ------------------------------------------------------------------------------ the server


def _guarded_protocol():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol with a time limit on request headers (a client that
        trickles them is answered 408 and closed) and a connection cap answered with 503
        and Retry-After."""

        def connection_made(self, transport):
            global _open_connections
            super().connection_made(transport)
            _open_connections = self.connections
            self._header_timer = None
            if len(self.connections) > MAX_CONNECTIONS:
                self._refuse(503, b"Service Unavailable", b"retry-after: " + RETRY_AFTER_S.encode() + b"\r\n")
                return
            self._arm()

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            if self._between_requests() and self._header_timer is None:
                self._arm()  # a new request's first bytes: its headers must complete in time
            super().data_received(data)
            if self.cycle is not before:
                self._disarm()  # headers complete: the app's body timeout takes over

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's idle (keep-alive) timer

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self._refuse(408, b"Request Timeout", b"")

        def _refuse(self, status: int, reason: bytes, extra: bytes) -> None:
            body = b'{"error": "' + reason + b'"}'
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n%s\r\n%s" % (status, reason, len(body), extra, body))
            self.transport.close()

        def pause_writing(self) -> None:
            """The client stopped reading and our answers pile up: give it the body time
            limit to drain them, then close the connection (it must not hold a slot forever)."""
            super().pause_writing()
            if getattr(self, "_write_timer", None) is None:
                self._write_timer = self.loop.call_later(BODY_TIMEOUT_S, self.transport.abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            timer, self._write_timer = getattr(self, "_write_timer", None), None
            if timer is not None:
                timer.cancel()

        def connection_lost(self, exc):
            self._disarm()
            timer = getattr(self, "_write_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_config(app: PredictorApp, host: str, port: int):
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=_guarded_protocol(), ws="none", lifespan="off", log_config=None,
        access_log=False, timeout_keep_alive=int(IDLE_TIMEOUT_S), h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        server_header=False, timeout_graceful_shutdown=30,
    )


def main(argv=None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a tosguard model (KServe V1 and V2 protocols).")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="exported model folder, or a model store URI (file://... or s3://...)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a cluster pod)")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--profile", choices=PROFILES,
                        help="decision thresholds: default, or triage (about 0.9 recall per category; "
                             "default: TOSGUARD_PROFILE, else default)")
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("TOSGUARD_ACCESS_LOG", "1") == "0":
        logging.getLogger("tosguard.access").setLevel(logging.WARNING)
    model = UnfairClauseModel(NAME, args.model_dir, profile=args.profile)
    model.load()
    app = PredictorApp(model, auth_token())
    log.info("serving %s on http://%s:%d%s", NAME, args.host, args.http_port,
             " (bearer token required)" if app.token else "")
    uvicorn.Server(server_config(app, args.host, args.http_port)).run()


def build_app(model: UnfairClauseModel, token: str | None = None) -> PredictorApp:
    """The ASGI app over a loaded model (tests and benchmarks use it in-process)."""
    return PredictorApp(model, token)
