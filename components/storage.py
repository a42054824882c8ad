"""Storage: the one module that reads and writes `file://` and `s3://` locations.

S3 goes through boto3, whose endpoint can be set with AWS_ENDPOINT_URL_S3 (MinIO, a
moto server in tests). Nothing else in tosguard talks to S3 directly.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """A `file://` URI or a plain path -> Path."""
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise ValueError(f"{uri!r} is not a local path or file:// URI")
    return Path(uri)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"{uri!r} names no bucket (expected s3://BUCKET/PREFIX)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    import boto3
    from botocore.config import Config

    # Retries with backoff on throttling and transient errors.
    return boto3.client("s3", config=Config(retries={"max_attempts": 8, "mode": "adaptive"}))


def fetch_folder(uri: str, cache_root: Path | None = None) -> Path:
    """Make the folder at `uri` available locally and return its path.

    Local folders are used in place; `s3://bucket/prefix/` is downloaded once into a cache
    keyed by the URI and checked object by object (size) before use.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise FileNotFoundError(f"{uri}: no such folder")
        return path
    bucket, prefix = _split_s3(uri.rstrip("/") + "/")
    cache_root = cache_root or Path(os.environ.get("TOSGUARD_CACHE", Path.home() / ".cache" / "tosguard"))
    target = cache_root / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / ".complete").is_file():
        return target
    client = s3_client()
    tmp = target.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            dest = tmp / obj["Key"][len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest))
            if dest.stat().st_size != obj["Size"]:
                raise IOError(f"s3://{bucket}/{obj['Key']}: got {dest.stat().st_size} bytes, expected {obj['Size']}")
            count += 1
    if not count:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    (target / ".complete").write_text(uri)
    log.info("fetched %d objects from %s to %s", count, uri, target)
    return target
