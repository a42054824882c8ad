"""The KServe predictor: a ``kserve.Model`` over an exported tosguard model folder.

V1: ``POST /v1/models/tosguard:predict`` with ``{"instances": ["clause", ...]}`` returns,
per clause, the unfair categories found, a sigmoid score per category and ``unfair``.
Run as a server: ``python -m components.predictor --model-dir DIR [--host 127.0.0.1]``.
"""
from __future__ import annotations

import argparse
import logging
import os

import kserve
from kserve.errors import InvalidInput

from components.modeling import load_exported, score_encoded

log = logging.getLogger(__name__)
MODEL_NAME = "tosguard"
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
MAX_INSTANCES = int(os.environ.get("TOSGUARD_MAX_INSTANCES", "256"))
MAX_CLAUSE_CHARS = int(os.environ.get("TOSGUARD_MAX_CLAUSE_CHARS", "20000"))


def validate_instances(payload) -> list[str]:
    """The V1 request body -> clauses, or InvalidInput (HTTP 400) saying what is wrong."""
    if isinstance(payload, (bytes, bytearray, str)):
        raise InvalidInput("the body was not read as JSON: send it with Content-Type: application/json")
    if not isinstance(payload, dict):
        raise InvalidInput('request body must be a JSON object like {"instances": ["clause text", ...]}')
    if "instances" not in payload:
        raise InvalidInput('missing field "instances": a list of clause strings')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of clause strings')
    if len(instances) > MAX_INSTANCES:
        raise InvalidInput(f'"instances" holds {len(instances)} clauses; the limit is {MAX_INSTANCES} per request')
    for i, clause in enumerate(instances):
        if not isinstance(clause, str):
            raise InvalidInput(f"instances[{i}] must be a string, got {type(clause).__name__}")
        if not clause.strip():
            raise InvalidInput(f"instances[{i}] is empty")
        if len(clause) > MAX_CLAUSE_CHARS:
            raise InvalidInput(f"instances[{i}] has {len(clause)} characters; the limit is {MAX_CLAUSE_CHARS}")
    return instances


class UnfairClauseModel(kserve.Model):
    def __init__(self, name: str = MODEL_NAME, model_dir: str = DEFAULT_MODEL_DIR):
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        self.classifier, self.tokenizer, self.card = load_exported(self.model_dir)
        self.categories = self.card["categories"]
        self.thresholds = self.card["thresholds"]
        self.max_length = int(self.card.get("max_length", 128))
        self.ready = True
        log.info("loaded %s (%s, base %s)", self.model_dir, self.card.get("method"), self.card.get("base_model"))
        return self.ready

    def classify(self, clauses: list[str]) -> list[dict]:
        encoded = self.tokenizer(clauses, truncation=True, max_length=self.max_length, padding=False)
        scores = score_encoded(self.classifier, encoded["input_ids"], self.tokenizer.pad_token_id)
        results = []
        for clause_ids, row in zip(encoded["input_ids"], scores):
            found = [c for c, s, t in zip(self.categories, row, self.thresholds) if s > t]
            results.append(
                {
                    "unfair": bool(found),
                    "categories": found,
                    "scores": {c: round(float(s), 6) for c, s in zip(self.categories, row)},
                    "truncated": len(clause_ids) >= self.max_length,
                }
            )
        return results

    def predict(self, payload, headers=None, response_headers=None):
        return {"predictions": self.classify(validate_instances(payload))}


class LoopbackModelServer(kserve.ModelServer):
    """KServe's ModelServer binds 0.0.0.0; this one binds the host it is given."""

    def __init__(self, host: str = "127.0.0.1", **kwargs):
        super().__init__(enable_grpc=False, **kwargs)
        self.host = host

    def start(self, models) -> None:
        import asyncio

        from kserve.model_server import FASTAPI_APP_IMPORT_STRING
        from kserve.protocol.rest.server import RESTServer

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve a tosguard model with KServe (V1 protocol).")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="exported model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a cluster pod)")
    parser.add_argument("--http-port", type=int, default=8080)
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = UnfairClauseModel(MODEL_NAME, args.model_dir)
    model.load()
    LoopbackModelServer(host=args.host, http_port=args.http_port).start([model])


if __name__ == "__main__":
    main()
