"""Request validation: a request's bytes and headers -> clauses or a document, or a
RequestError with the HTTP status (400, 413, 415) and a message saying what is wrong.

Everything a client controls is checked here, before a request joins a scoring pass: the
content type and encoding, the body's size before and after decompression, JSON that is
well formed, not too deep and free of lone surrogates, the V2 binary tensor extension's
framing, and the number and size of clauses. The limits come from the environment
(README: Serving contract).
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field

from tosguard.components.config import env_number

MAX_INSTANCES = env_number("TOSGUARD_MAX_INSTANCES", 256, low=1)
MAX_CLAUSE_CHARS = env_number("TOSGUARD_MAX_CLAUSE_CHARS", 20_000, low=1)
MAX_DOCUMENT_CHARS = env_number("TOSGUARD_MAX_DOCUMENT_CHARS", 500_000, low=1)
MAX_DOCUMENT_CLAUSES = env_number("TOSGUARD_MAX_DOCUMENT_CLAUSES", 5_000, low=1)
MAX_BODY_BYTES = env_number("TOSGUARD_MAX_BODY_BYTES", 2_000_000, low=1024)
MAX_SHAPE_DIMS = 8
_BYTE_COUNT = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes '²'


class RequestError(Exception):
    """A bad request: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ bodies

_JSON_TYPES = ("application/json", "application/cloudevents+json", "text/json")
_V2_BINARY_TYPE = "application/octet-stream"


def media_type(headers: dict[bytes, bytes]) -> tuple[str, dict[str, str]]:
    """Content-Type -> (type, parameters), lower-cased; ('', {}) when absent."""
    raw = headers.get(b"content-type", b"").decode("latin-1")
    kind, *params = [part.strip() for part in raw.split(";")]
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"').lower()
    return kind.lower(), parsed


def decode_body(body: bytes, headers: dict[bytes, bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """Undo Content-Encoding (gzip, deflate), never growing past `limit` bytes."""
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)", 415)
    wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise RequestError(f"the decompressed body is over the limit of {limit} bytes", 413)
        out += inflater.flush()
    except zlib.error as exc:
        raise RequestError(f"the body is not valid {encoding} data ({exc})") from None
    if not inflater.eof:
        raise RequestError(f"the {encoding} body is truncated")
    if len(out) > limit:
        raise RequestError(f"the decompressed body is over the limit of {limit} bytes", 413)
    return out


def parse_json(data: bytes):
    """UTF-8 JSON -> a Python value. Lone surrogates (escaped or raw), invalid UTF-8 and
    nesting deeper than 1,024 levels are 400s (orjson checks all three while parsing, in
    native code: a separate walk over a wide body would stall the event loop)."""
    import orjson  # rejects invalid UTF-8 and lone surrogates, and caps nesting at 1024

    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise RequestError("the JSON body is nested too deeply") from None
    return value


def json_body(body: bytes, headers: dict[bytes, bytes]):
    """A JSON request body (plain, or a CloudEvent in structured or binary mode) -> its value."""
    kind, params = media_type(headers)
    if kind and kind not in _JSON_TYPES and not kind.endswith("+json"):
        raise RequestError(f"Content-Type {kind!r} is not accepted: send Content-Type: application/json", 415)
    charset = params.get("charset", "utf-8")
    if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise RequestError(f"charset {charset!r} is not accepted: send UTF-8 JSON", 415)
    value = parse_json(body)
    if kind == "application/cloudevents+json":  # structured CloudEvent: the payload is in data
        if not isinstance(value, dict) or "data" not in value:
            raise RequestError('a structured CloudEvent must carry its payload in "data"')
        value = value["data"]
    return value


# ------------------------------------------------------------------------------ clauses


def check_text(text: str, where: str) -> str:
    """A clause or document must encode as UTF-8: a lone surrogate cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} holds a lone surrogate (not valid Unicode text)") from None
    return text


def check_clauses(clauses, field: str) -> list[str]:
    if not isinstance(clauses, list) or not clauses:
        raise RequestError(f'"{field}" must be a non-empty list of clause strings')
    if len(clauses) > MAX_INSTANCES:
        raise RequestError(f'"{field}" holds {len(clauses)} clauses; the limit is {MAX_INSTANCES} per request')
    for i, clause in enumerate(clauses):
        if not isinstance(clause, str):
            raise RequestError(f"{field}[{i}] must be a string, got {type(clause).__name__}")
        if not clause.strip():
            raise RequestError(f"{field}[{i}] is empty")
        if len(clause) > MAX_CLAUSE_CHARS:
            raise RequestError(f"{field}[{i}] has {len(clause)} characters; the limit is {MAX_CLAUSE_CHARS}")
        check_text(clause, f"{field}[{i}]")
    return clauses


def validate_v1(payload) -> tuple[str, list[str] | str]:
    """A V1 body -> ("clauses", [...]) or ("document", text)."""
    if not isinstance(payload, dict):
        raise RequestError('request body must be a JSON object like {"instances": ["clause text", ...]}')
    if "document" in payload:
        return "document", validate_document(payload["document"])
    if "instances" not in payload:
        raise RequestError('missing field "instances" (a list of clause strings) or "document" (a string)')
    return "clauses", check_clauses(payload["instances"], "instances")


def validate_document(document) -> str:
    if not isinstance(document, str):
        raise RequestError(f'"document" must be a string, got {type(document).__name__}')
    if not document.strip():
        raise RequestError('"document" is empty')
    if len(document) > MAX_DOCUMENT_CHARS:
        raise RequestError(f'"document" has {len(document)} characters; the limit is {MAX_DOCUMENT_CHARS}')
    return check_text(document, '"document"')


# ------------------------------------------------------------------------------ V2


@dataclass
class V2Request:
    """A validated Open Inference Protocol request: one BYTES input of clauses."""

    input_name: str
    clauses: list[str]
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)  # outputs to return as binary data
    outputs: list[str] | None = None  # requested outputs (None: all)


OUTPUT_NAMES = ("scores", "unfair", "categories")


def _bytes_elements(raw: bytes, count: int, name: str) -> list[str]:
    """The V2 binary BYTES layout: per element a little-endian uint32 length, then the bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(f"input {name!r}: binary data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(f"input {name!r}: an element of {size} bytes runs past the binary data")
        try:
            out.append(raw[offset : offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r}[{len(out)}] is not valid UTF-8") from None
        offset += size
        if len(out) > MAX_INSTANCES:
            break
    if len(out) != count:
        raise RequestError(f"input {name!r}: shape says {count} elements, the binary data holds {len(out)}")
    return out


def validate_v2(body: bytes, headers: dict[bytes, bytes]) -> V2Request:
    """A V2 infer body, JSON or with the binary tensor extension -> V2Request."""
    header_length = headers.get(b"inference-header-content-length")
    binary = b""
    if header_length is not None:
        text = header_length.decode("latin-1").strip()
        if not _BYTE_COUNT.fullmatch(text):
            raise RequestError(f"Inference-Header-Content-Length must be a byte count, got {text[:40]!r}")
        length = int(text)
        if length > len(body):
            raise RequestError(f"Inference-Header-Content-Length {length} is longer than the body ({len(body)} bytes)")
        body, binary = body[:length], body[length:]
        payload = parse_json(body)
    else:
        kind, _ = media_type(headers)
        if kind == _V2_BINARY_TYPE:
            raise RequestError("a binary V2 request needs the Inference-Header-Content-Length header")
        payload = json_body(body, headers)
    if not isinstance(payload, dict):
        raise RequestError('a V2 request must be a JSON object with "inputs"')
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        count = len(inputs) if isinstance(inputs, list) else 0
        raise RequestError(f'expected "inputs" to hold exactly one input (BYTES clauses), got {count}')
    tensor = inputs[0]
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("the input needs a name")
    if tensor.get("datatype") != "BYTES":
        raise RequestError(f"input {name!r} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_SHAPE_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError(f"input {name!r}: shape must be a list of 1 to {MAX_SHAPE_DIMS} non-negative integers")
    count = 1
    for dim in shape:  # stop as soon as the product passes the limit: never multiply huge numbers
        count *= dim
        if count > MAX_INSTANCES:
            raise RequestError(f"input {name!r}: shape {str(shape)[:80]} holds more than {MAX_INSTANCES} clauses, "
                               "the limit per request")
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"input {name!r}: parameters must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"input {name!r}: binary_data_size must be a byte count")
        if size != len(binary):
            raise RequestError(f"input {name!r}: binary_data_size is {size}, the body carries {len(binary)} bytes")
        data = _bytes_elements(binary, count, name)
    else:
        if binary:
            raise RequestError(f"the body carries {len(binary)} binary bytes but input {name!r} has no binary_data_size")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(f"input {name!r} needs data: a list of strings")
        if len(data) == count and any(isinstance(d, list) for d in data):
            raise RequestError(f"input {name!r}: data must be a flat list of strings")
        if len(data) != count:
            raise RequestError(f"input {name!r}: shape {shape} says {count} elements, data has {len(data)}")
    clauses = check_clauses(data, name)
    wanted = payload.get("outputs")
    outputs, binary_outputs = None, set()
    top = payload.get("parameters") or {}
    if not isinstance(top, dict):
        raise RequestError("parameters must be an object")
    if top.get("binary_data_output") is True:
        binary_outputs = set(OUTPUT_NAMES)
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and o.get("name") in OUTPUT_NAMES
                                                   for o in wanted):
            raise RequestError(f"outputs must name some of {', '.join(OUTPUT_NAMES)}")
        outputs = [o["name"] for o in wanted]
        for o in wanted:
            if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True:
                binary_outputs.add(o["name"])
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("id must be a string")
    return V2Request(name, clauses, request_id, binary_outputs, outputs)


def dumps(value) -> bytes:
    """JSON for responses."""
    import orjson

    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(value, default=str).encode()
