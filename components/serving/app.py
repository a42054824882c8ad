"""The HTTP server around the model: KServe's FastAPI app with tosguard's request limits,
bound to the host it is given (127.0.0.1 unless a cluster pod asks for 0.0.0.0).

This is the one module that touches KServe internals, because KServe's public API offers
no way to do two things tosguard needs:
- ``kserve.ModelServer.start`` always binds 0.0.0.0 (``RESTServer`` hard-codes the host in
  its uvicorn config), so ``LoopbackModelServer.start`` repeats its single-process start
  with the host set, using ``RESTServer``, ``_register_and_check_atleast_one_model_is_ready``
  and ``_serve``;
- the FastAPI app is a module global (``kserve.model_server.app``) that ``RESTServer``
  fills in, so ``build_app`` builds it the same way for in-process tests and benchmarks.
Checked against kserve 0.21 (constraints.txt pins it).

Run: ``python -m tosguard.components.serving --model-dir DIR [--host 127.0.0.1] [--http-port 8080]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging

import kserve

from tosguard.components.config import NAME
from tosguard.components.serving.model import DEFAULT_MODEL_DIR, UnfairClauseModel
from tosguard.components.serving.validate import MAX_BODY_BYTES

log = logging.getLogger(__name__)


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
    model = UnfairClauseModel(NAME, args.model_dir)
    model.load()
    LoopbackModelServer(host=args.host, http_port=args.http_port).start([model])
