"""Storage: the one module that reads and writes `file://`, plain-path and `s3://` locations.

S3 goes through boto3, whose endpoint can be set with AWS_ENDPOINT_URL_S3 (MinIO, a
moto server in tests). Nothing else in tosguard talks to S3 directly.

Every transfer is verified: an upload is checked against the object S3 then reports
(size, and the ETag recomputed locally: MD5 for single-part objects, MD5-of-part-MD5s
for multipart ones), and every object carries its sha256 in its metadata, which a
download checks against the bytes it received. A transfer that fails or does not verify
is retried with exponential backoff; botocore retries single API calls on throttling and
5xx replies underneath that.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

from tosguard.components.config import env_number

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1 << 20
# Objects at least this large go up in parts (S3 allows parts from 5 MiB).
MULTIPART_THRESHOLD = env_number("TOSGUARD_MULTIPART_THRESHOLD", 64 * MIB, low=5 * MIB)
MULTIPART_CHUNKSIZE = env_number("TOSGUARD_MULTIPART_CHUNKSIZE", 16 * MIB, low=5 * MIB)
TRANSFER_ATTEMPTS = env_number("TOSGUARD_TRANSFER_ATTEMPTS", 5, low=1)
SHA256_KEY = "sha256"  # user metadata key: x-amz-meta-sha256


class IntegrityError(IOError):
    """A transferred object does not match its source (size or checksum)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """A `file://` URI or a plain path -> Path."""
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise ValueError(f"{uri!r} is not a local path or file:// URI")
    return Path(uri)


_SECRET_QUERY_KEYS = ("signature", "sig", "token", "key", "secret", "password", "credential", "auth")


def insecure_http_allowed() -> bool:
    """Plain http downloads are refused unless TOSGUARD_ALLOW_HTTP=1 (a server you trust)."""
    return os.environ.get("TOSGUARD_ALLOW_HTTP", "") == "1"


def redact(uri: str) -> str:
    """A URI fit for logs, MLflow and errors: user:password@ and secret-looking query
    parameters (presigned-URL signatures, tokens) replaced by ***."""
    import re
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_QUERY_KEYS) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, uri: str) -> str:
    """`text` (an error message, say) with every secret part of `uri` replaced by ***."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return text
    secrets = [parts.password, parts.username]
    secrets += [v for k, v in parse_qsl(parts.query) if any(w in k.lower() for w in _SECRET_QUERY_KEYS)]
    for secret in filter(None, secrets):
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


def safe_relative(rel: str, root: Path) -> Path:
    """root/rel for a key read from a store, refusing keys that would land outside root
    (`../`, absolute paths): an object key is data, never a path to trust."""
    target = (root / rel).resolve()
    base = root.resolve()
    if not rel or rel.startswith("/") or ".." in Path(rel).parts or (target != base and base not in target.parents):
        raise IntegrityError(f"refusing object key {rel!r}: it would be written outside {root}")
    return target


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI or path."""
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"{uri!r} names no bucket (expected s3://BUCKET/PREFIX)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    import boto3
    from botocore.config import Config

    # Per-call retries with backoff on throttling, 5xx and dropped connections.
    return boto3.client(
        "s3",
        config=Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=10, read_timeout=120),
    )


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE,
                          max_concurrency=4)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_etag(path: Path, threshold: int | None = None, chunksize: int | None = None) -> str:
    """The ETag S3 gives an unencrypted (or SSE-S3) object uploaded with these settings."""
    threshold = MULTIPART_THRESHOLD if threshold is None else threshold
    chunksize = MULTIPART_CHUNKSIZE if chunksize is None else chunksize
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < threshold:
            return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
        parts = [hashlib.md5(block, usedforsecurity=False).digest()
                 for block in iter(lambda: handle.read(chunksize), b"")]
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def with_retries(action: Callable[[], T], what: str, attempts: int | None = None, base_delay: float = 0.5) -> T:
    """Run `action`, retrying on I/O and S3 errors with exponential backoff."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    attempts = attempts or TRANSFER_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (IntegrityError, BotoCoreError, ClientError, OSError) as exc:
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
                "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"
            ) or _is_missing(exc):
                raise  # not transient: retrying cannot help (S3 reads after writes are consistent)
            if isinstance(exc, (FileNotFoundError, NoCredentialsError)) or attempt == attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1f s", what, attempt, attempts, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- files


def upload_file(path: str | Path, uri: str, client=None) -> dict:
    """Copy one local file to `uri` and verify it there. Returns {uri, size, sha256}."""
    path = Path(path)
    size, digest = path.stat().st_size, sha256_file(path)
    if not is_s3(uri):
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def copy():
            tmp = dest.with_name(dest.name + ".partial")
            shutil.copyfile(path, tmp)
            if tmp.stat().st_size != size or sha256_file(tmp) != digest:
                raise IntegrityError(f"{dest}: copy does not match {path}")
            os.replace(tmp, dest)

        with_retries(copy, f"copy {path} -> {dest}")
        return {"uri": str(dest), "size": size, "sha256": digest}

    client = client or s3_client()
    bucket, key = _split_s3(uri)
    etag = expected_etag(path)

    def put():
        client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_KEY: digest}},
                           Config=_transfer_config())
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != size:
            raise IntegrityError(f"{uri}: {head['ContentLength']} bytes stored, {size} sent")
        if head.get("Metadata", {}).get(SHA256_KEY) != digest:
            raise IntegrityError(f"{uri}: stored sha256 metadata does not match the file sent")
        # KMS-encrypted objects have opaque ETags; their bytes are checked on download.
        if head.get("ServerSideEncryption") != "aws:kms" and head["ETag"].strip('"') != etag:
            raise IntegrityError(f"{uri}: ETag {head['ETag']} does not match the local {etag}")

    with_retries(put, f"upload {path} -> {uri}")
    return {"uri": uri, "size": size, "sha256": digest}


def download_file(uri: str, path: str | Path, client=None) -> dict:
    """Copy one object (or local file) to `path`, checking size and sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if not is_s3(uri):
        return upload_file(local_path(uri), str(path))
    client = client or s3_client()
    bucket, key = _split_s3(uri)

    def get():
        from botocore.exceptions import FlexibleChecksumError

        head = client.head_object(Bucket=bucket, Key=key)
        try:
            client.download_file(bucket, key, str(tmp), Config=_transfer_config())
        except FlexibleChecksumError as exc:  # botocore's own CRC check of the body
            raise IntegrityError(f"{uri}: checksum of the bytes received does not match: {exc}") from exc
        size = tmp.stat().st_size
        if size != head["ContentLength"]:
            raise IntegrityError(f"{uri}: received {size} bytes, expected {head['ContentLength']}")
        digest = sha256_file(tmp)
        expected = head.get("Metadata", {}).get(SHA256_KEY)
        if expected and digest != expected:
            raise IntegrityError(f"{uri}: sha256 {digest[:12]}… of the bytes received, expected {expected[:12]}…")
        if not expected and head.get("ServerSideEncryption") != "aws:kms" and "-" not in head["ETag"]:
            md5 = hashlib.md5(tmp.read_bytes(), usedforsecurity=False).hexdigest()
            if md5 != head["ETag"].strip('"'):
                raise IntegrityError(f"{uri}: MD5 of the bytes received does not match the ETag")
        os.replace(tmp, path)
        return {"uri": uri, "size": size, "sha256": digest}

    try:
        return with_retries(get, f"download {uri}")
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if _is_missing(exc):
            raise FileNotFoundError(f"{uri}: no such object") from exc
        raise


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def exists(uri: str, client=None) -> bool:
    if not is_s3(uri):
        return local_path(uri).exists()
    client = client or s3_client()
    bucket, key = _split_s3(uri)
    try:
        with_retries(lambda: client.head_object(Bucket=bucket, Key=key), f"head {uri}")
        return True
    except Exception as exc:
        if _is_missing(exc):
            return False
        raise


def delete(uri: str, client=None) -> None:
    """Remove one object or file; no error when it is already gone."""
    if not is_s3(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    client = client or s3_client()
    bucket, key = _split_s3(uri)
    with_retries(lambda: client.delete_object(Bucket=bucket, Key=key), f"delete {uri}")


def write_text(uri: str, text: str, client=None) -> dict:
    """Write a small text object through a temporary file (so it is verified like any other)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object"
        path.write_text(text, encoding="utf-8")
        return upload_file(path, uri, client)


def read_text(uri: str, client=None) -> str:
    if not is_s3(uri):
        return local_path(uri).read_text(encoding="utf-8")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        download_file(uri, Path(tmp) / "object", client)
        return (Path(tmp) / "object").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- folders


def list_files(uri: str, client=None) -> dict[str, int]:
    """Relative path -> size of every file under a folder URI."""
    if not is_s3(uri):
        root = local_path(uri)
        if not root.is_dir():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.endswith(".partial")}
    client = client or s3_client()
    bucket, prefix = _split_s3(uri.rstrip("/") + "/")
    found: dict[str, int] = {}

    def scan():
        found.clear()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix):]] = obj["Size"]

    with_retries(scan, f"list {uri}")
    return found


def upload_folder(folder: str | Path, uri: str, client=None, skip: tuple[str, ...] = ()) -> list[dict]:
    """Copy every file under `folder` to `uri` (verified per file). Returns one record per file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    client = client if client is not None or not is_s3(uri) else s3_client()
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        records.append(upload_file(path, join(uri, rel), client))
    log.info("stored %d files (%.1f MiB) at %s", len(records), sum(r["size"] for r in records) / MIB, uri)
    return records


def download_folder(uri: str, folder: str | Path, client=None) -> list[dict]:
    """Copy every object under `uri` into `folder` (verified per file)."""
    client = client if client is not None or not is_s3(uri) else s3_client()
    files = list_files(uri, client)
    if not files:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    targets = {rel: safe_relative(rel, Path(folder)) for rel in files}  # all checked before any is written
    return [download_file(join(uri, rel), targets[rel], client) for rel in files]


def fetch_folder(uri: str, cache_root: Path | None = None) -> Path:
    """Make the folder at `uri` available locally and return its path.

    Local folders are used in place; `s3://bucket/prefix/` is downloaded once into a cache
    keyed by the URI, every object verified, and reused while its `.complete` mark stands
    and the remote folder lists the same files and sizes.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise FileNotFoundError(f"{uri}: no such folder")
        return path
    from tosguard.components.config import cache_dir

    cache_root = cache_root or cache_dir()
    # Keyed by the URI (every step of a run, whatever its S3 endpoint or proxy, finds the
    # same copy); the listing check below notices when the folder behind it changed.
    target = cache_root / "s3" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (target / ".complete").is_file():
        # Reused while the remote folder still lists the same files with the same sizes (a
        # changed size means a changed file; a same-size rewrite is not seen: store
        # versions are never rewritten). If the store cannot be listed, the copy is used.
        try:
            listing = {k: v for k, v in list_files(uri).items() if k != ".complete"}
        except Exception as exc:  # noqa: BLE001 (offline: the verified copy stands)
            log.warning("cannot list %s (%s); using the copy fetched before", uri, exc)
            return target
        cached = {k: v for k, v in list_files(str(target)).items() if k != ".complete"}
        if cached == listing:
            return target
        log.info("%s changed since it was fetched; fetching it again", uri)
    tmp = target.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    records = download_folder(uri, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    (target / ".complete").write_text(uri)
    log.info("fetched %d objects from %s to %s", len(records), uri, target)
    return target
