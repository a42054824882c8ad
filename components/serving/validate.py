"""Request validation: a request body -> clauses or a document, or InvalidInput (HTTP 400)
saying what is wrong. The limits come from the environment (README: Serving contract)."""
from __future__ import annotations

import os

from kserve.errors import InvalidInput

MAX_INSTANCES = int(os.environ.get("TOSGUARD_MAX_INSTANCES", 256))
MAX_CLAUSE_CHARS = int(os.environ.get("TOSGUARD_MAX_CLAUSE_CHARS", 20_000))
MAX_DOCUMENT_CHARS = int(os.environ.get("TOSGUARD_MAX_DOCUMENT_CHARS", 500_000))
MAX_BODY_BYTES = int(os.environ.get("TOSGUARD_MAX_BODY_BYTES", 2_000_000))


def check_clauses(clauses, field: str) -> list[str]:
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
    """The V1 clause request body -> clauses."""
    if isinstance(payload, (bytes, bytearray, str)):
        raise InvalidInput("the body was not read as JSON: send it with Content-Type: application/json")
    if not isinstance(payload, dict):
        raise InvalidInput('request body must be a JSON object like {"instances": ["clause text", ...]}')
    if "instances" not in payload:
        raise InvalidInput('missing field "instances" (a list of clause strings) or "document" (a string)')
    return check_clauses(payload["instances"], "instances")


def validate_document(payload: dict) -> str:
    """The V1 document request body -> the document text."""
    document = payload["document"]
    if not isinstance(document, str):
        raise InvalidInput(f'"document" must be a string, got {type(document).__name__}')
    if not document.strip():
        raise InvalidInput('"document" is empty')
    if len(document) > MAX_DOCUMENT_CHARS:
        raise InvalidInput(f'"document" has {len(document)} characters; the limit is {MAX_DOCUMENT_CHARS}')
    return document


def v2_clauses(request) -> list[str]:
    """A V2 InferRequest -> clauses: exactly one BYTES input of UTF-8 strings."""
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
    return check_clauses(clauses, infer_input.name)
