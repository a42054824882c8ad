"""Step 1, download: fetch the UNFAIR-ToS splits, verify and validate them, write Arrow.

Sources:
- ``bundled``: the LexGLUE snapshot vendored in this package (CC BY 4.0, see
  components/data/unfair_tos/SOURCE.md), checked against known sha256 digests;
- a local folder (or ``file://`` URI) holding train/validation/test ``.jsonl`` files;
- ``s3://bucket/prefix``: the same three files in S3 (a mirrored snapshot, for example);
- ``https://.../unfair_tos.tar.gz``: the zenodo archive LexGLUE publishes (the three
  ``.jsonl`` files at the archive's top level, or in one folder); append
  ``#sha256=<hex>`` to pin the archive's digest;
- ``hf://coastalcph/lex_glue/unfair_tos``: the Hugging Face datasets loader (needs the hub).

Every row is validated; a bad row raises DataError naming its file and line. The data
hash is computed over the rows' content in one canonical rendering, so every source of
the same splits yields the same hash. The snapshot is then mirrored to the store under
``data/unfair_tos/<data hash>/`` (skipped when that snapshot is already there).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tosguard.components.config import env_number
from tosguard.components.labels import CATEGORIES, NUM_CATEGORIES
from tosguard.components.storage import insecure_http_allowed, redact, scrub, sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BUNDLED = "bundled"
# Digests of the vendored files, as published in their SOURCE.md.
BUNDLED_SHA256 = {
    "train": "e8241304baded89030ada98e5f622ec09895896e3fd42131c48ab99279c82a55",
    "validation": "4cc8740837ed6b7dbfde9e879a9ed034e43dfe86096c17ee0d5ae4ec67829de4",
    "test": "f55f9a62a98acd7df54533e2d597c8c798db76a4418019c4a7ede7f8b2bb93fa",
}
BUNDLED_ROWS = {"train": 5532, "validation": 2275, "test": 1607}


class DataError(ValueError):
    """The data is missing, altered or malformed; the message says where."""


@dataclass
class Split:
    name: str
    texts: list[str]
    labels: list[list[int]]
    sha256: str  # of the source file's bytes (or of the canonical rendering when there is no file)
    origin: str

    @property
    def content_sha256(self) -> str:
        return content_digest(self.texts, self.labels)


def bundled_dir() -> Path:
    return Path(str(resources.files("tosguard.components") / "data" / "unfair_tos"))


def canonical_line(text: str, labels: list[int]) -> str:
    return json.dumps({"text": text, "labels": sorted(labels)}, ensure_ascii=False) + "\n"


def content_digest(texts: list[str], labels: list[list[int]]) -> str:
    """sha256 of a split's rows in the canonical JSONL rendering, whatever the source's bytes."""
    digest = hashlib.sha256()
    for text, row_labels in zip(texts, labels):
        digest.update(canonical_line(text, row_labels).encode("utf-8"))
    return digest.hexdigest()


def parse_jsonl(path: Path) -> tuple[list[str], list[list[int]]]:
    """Read and validate one split file. Raises DataError naming file and line."""
    texts: list[str] = []
    labels: list[list[int]] = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            if not raw.strip():
                raise DataError(f"{where}: empty line (each line must be one JSON object)")
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = {"text", "labels"} - row.keys()
            if missing:
                raise DataError(f"{where}: missing field(s) {sorted(missing)}")
            text, row_labels = row["text"], row["labels"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: 'text' must be a non-empty string")
            if not isinstance(row_labels, list):
                raise DataError(f"{where}: 'labels' must be a list of category indices")
            for label in row_labels:
                if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CATEGORIES:
                    raise DataError(
                        f"{where}: label {label!r} is not a category index 0-{NUM_CATEGORIES - 1}"
                    )
            if len(set(row_labels)) != len(row_labels):
                raise DataError(f"{where}: repeated label in {row_labels}")
            texts.append(text)
            labels.append(sorted(row_labels))
    if not texts:
        raise DataError(f"{path}: file holds no rows")
    return texts, labels


def _read_folder(folder: Path, expected_sha256: dict[str, str] | None) -> list[Split]:
    splits = []
    for name in SPLITS:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: split file not found (need {', '.join(s + '.jsonl' for s in SPLITS)})")
        digest = sha256_file(path)
        if expected_sha256 and digest != expected_sha256[name]:
            raise DataError(
                f"{path}: sha256 {digest} does not match the published {expected_sha256[name]}; "
                "the file was altered"
            )
        texts, labels = parse_jsonl(path)
        splits.append(Split(name, texts, labels, digest, str(path)))
    return splits


def _read_hf(uri: str) -> list[Split]:
    """hf://OWNER/NAME/CONFIG through the datasets loader (needs the Hugging Face hub)."""
    parts = uri[len("hf://"):].strip("/").split("/")
    if len(parts) != 3:
        raise DataError(f"{uri}: expected hf://OWNER/NAME/CONFIG, e.g. hf://coastalcph/lex_glue/unfair_tos")
    import datasets

    try:
        loaded = datasets.load_dataset(f"{parts[0]}/{parts[1]}", parts[2])
    except Exception as exc:  # the hub is unreachable offline; say so plainly
        raise DataError(f"{uri}: could not load from the Hugging Face hub: {exc}") from exc
    splits = []
    for name in SPLITS:
        if name not in loaded:
            raise DataError(f"{uri}: the loaded dataset has no {name!r} split (has {sorted(loaded)})")
        rows = loaded[name]
        texts, labels = list(rows["text"]), [sorted(l) for l in rows["labels"]]
        for i, (text, row_labels) in enumerate(zip(texts, labels)):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{uri} [{name}] row {i}: 'text' must be a non-empty string")
            if any(not 0 <= l < NUM_CATEGORIES for l in row_labels):
                raise DataError(f"{uri} [{name}] row {i}: label outside 0-{NUM_CATEGORIES - 1}: {row_labels}")
        splits.append(Split(name, texts, labels, content_digest(texts, labels), f"{uri} [{name}]"))
    return splits


MAX_ARCHIVE_BYTES = env_number("TOSGUARD_MAX_ARCHIVE_BYTES", 200 << 20, low=1)
MAX_UNPACKED_BYTES = env_number("TOSGUARD_MAX_UNPACKED_BYTES", 1 << 30, low=1)
MAX_ARCHIVE_MEMBERS = env_number("TOSGUARD_MAX_ARCHIVE_MEMBERS", 1000, low=1)


def _check_members(tar, url: str) -> None:
    """Refuse an archive with links, devices, absolute or parent-relative paths, too many
    members or too many bytes unpacked, before anything is written."""
    count, unpacked = 0, 0
    for member in tar:
        count += 1
        if count > MAX_ARCHIVE_MEMBERS:
            raise DataError(f"{url}: the archive holds more than {MAX_ARCHIVE_MEMBERS} members")
        name = member.name
        if name.startswith("/") or ".." in Path(name).parts:
            raise DataError(f"{url}: archive member {name!r} points outside the archive")
        if member.issym() or member.islnk():
            raise DataError(f"{url}: archive member {name!r} is a link; the archive may hold only files and folders")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"{url}: archive member {name!r} is a device, pipe or other special file")
        unpacked += member.size
        if unpacked > MAX_UNPACKED_BYTES:
            raise DataError(f"{url}: the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")


def _fetch_tarball(url: str, into: Path) -> Path:
    """Download an https archive (retries, progress, size and optional sha256 check) and
    unpack it safely; returns the folder holding train/validation/test .jsonl.

    Plain http (or a redirect to it) is refused unless TOSGUARD_ALLOW_HTTP=1. The archive
    is bounded in bytes, members and unpacked size, and may hold only files and folders.
    """
    import tarfile

    import requests
    from requests.adapters import HTTPAdapter
    from tqdm import tqdm
    from urllib3.util.retry import Retry

    url, _, fragment = url.partition("#")
    shown = redact(url)
    pinned = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    if not url.startswith("https://") and not insecure_http_allowed():
        raise DataError(f"{shown}: plain http is refused (the data could be altered on the way); use https, "
                        "or set TOSGUARD_ALLOW_HTTP=1 for a server you trust")
    if not pinned:
        log.warning("download: %s is not pinned; append #sha256=<hex> to the URL to pin its content", shown)
    session = requests.Session()
    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=["GET"])
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    archive = into / "archive.tar.gz"
    try:
        with session.get(url, stream=True, timeout=(10, 120)) as reply:
            hops = [r.url for r in reply.history] + [reply.url]
            if not insecure_http_allowed() and any(not hop.startswith("https://") for hop in hops):
                raise DataError(f"{shown}: redirected to plain http ({redact(hops[-1])}); refused")
            reply.raise_for_status()
            total = int(reply.headers.get("Content-Length") or 0)
            if total > MAX_ARCHIVE_BYTES:
                raise DataError(f"{shown}: the archive is {total} bytes; the limit is {MAX_ARCHIVE_BYTES}")
            digest, received = hashlib.sha256(), 0
            with open(archive, "wb") as out, tqdm(total=total or None, unit="B", unit_scale=True,
                                                   desc="download", disable=total < (8 << 20)) as bar:
                for block in reply.iter_content(1 << 20):
                    received += len(block)
                    if received > MAX_ARCHIVE_BYTES:
                        raise DataError(f"{shown}: the archive is over the limit of {MAX_ARCHIVE_BYTES} bytes")
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except requests.RequestException as exc:
        raise DataError(f"{shown}: download failed: {scrub(str(exc), url)}") from None
    if total and received != total:
        raise DataError(f"{shown}: received {received} bytes, the server announced {total}")
    if pinned and digest.hexdigest() != pinned.lower():
        raise DataError(f"{shown}: archive sha256 {digest.hexdigest()} does not match the pinned {pinned}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            _check_members(tar, shown)
            tar.extractall(into / "unpacked", filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{shown}: not a readable tar archive: {exc}") from exc
    holders = sorted({p.parent for p in (into / "unpacked").rglob("train.jsonl")}, key=lambda p: len(p.parts))
    if not holders:
        raise DataError(f"{shown}: the archive holds no train.jsonl")
    return holders[0]


def read_source(source: str) -> list[Split]:
    import tempfile

    if source == BUNDLED:
        splits = _read_folder(bundled_dir(), BUNDLED_SHA256)
        for split in splits:
            if len(split.texts) != BUNDLED_ROWS[split.name]:
                raise DataError(f"{split.origin}: {len(split.texts)} rows, expected {BUNDLED_ROWS[split.name]}")
        return splits
    if source.startswith("hf://"):
        return _read_hf(source)
    if source.startswith(("https://", "http://")):
        with tempfile.TemporaryDirectory(prefix="tosguard-download-") as tmp:
            return _read_folder(_fetch_tarball(source, Path(tmp)), None)
    if source.startswith("s3://"):
        from tosguard.components import storage

        with tempfile.TemporaryDirectory(prefix="tosguard-download-") as tmp:
            for name in SPLITS:
                try:
                    storage.download_file(storage.join(source, f"{name}.jsonl"), Path(tmp) / f"{name}.jsonl")
                except FileNotFoundError as exc:
                    raise DataError(f"{source}: {exc}") from exc
            splits = _read_folder(Path(tmp), None)
            for split in splits:
                split.origin = storage.join(source, f"{split.name}.jsonl")
            return splits
    folder = Path(source[len("file://"):] if source.startswith("file://") else source)
    if folder.is_dir():
        return _read_folder(folder, None)
    raise DataError(
        f"unknown data source {source!r}: use 'bundled', a folder with train/validation/test .jsonl, "
        "s3://BUCKET/PREFIX, an https:// .tar.gz, or hf://coastalcph/lex_glue/unfair_tos"
    )


def data_hash(split_digests: dict[str, str]) -> str:
    joined = "".join(f"{name}:{split_digests[name]}\n" for name in SPLITS)
    return hashlib.sha256(joined.encode()).hexdigest()


def mirror_snapshot(splits: list[Split], manifest: dict, store: str) -> dict:
    """Copy the splits (canonical JSONL) and the manifest to ``<store>/data/unfair_tos/<hash>/``,
    unless a verified snapshot with that hash is already there."""
    import tempfile

    from tosguard.components import storage
    from tosguard.components.store import snapshot_uri

    uri = snapshot_uri(store, manifest["data_hash"])
    manifest_uri = storage.join(uri, "manifest.json")
    if storage.exists(manifest_uri):
        stored = json.loads(storage.read_text(manifest_uri))
        if stored.get("data_hash") == manifest["data_hash"]:
            log.info("download: snapshot %s already stored; reusing it", uri)
            return {"uri": uri, "reused": True}
    with tempfile.TemporaryDirectory(prefix="tosguard-snapshot-") as tmp:
        for split in splits:
            with open(Path(tmp) / f"{split.name}.jsonl", "w", encoding="utf-8") as out:
                out.writelines(canonical_line(t, l) for t, l in zip(split.texts, split.labels))
        storage.upload_folder(tmp, uri)
    # The manifest goes last: its presence marks a complete snapshot.
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2))
    log.info("download: snapshot stored at %s", uri)
    return {"uri": uri, "reused": False}


def download(source: str, output_dir: str, store: str | None = None) -> dict:
    """Fetch, verify and validate the splits; write an Arrow DatasetDict and manifest.json;
    mirror the snapshot to the store when one is given.

    Returns the manifest (source, per-split digests and counts, label names, data_hash,
    snapshot).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    splits = read_source(source)
    features = Features({"text": Value("string"), "labels": List(ClassLabel(names=list(CATEGORIES)))})
    dataset = DatasetDict(
        {s.name: Dataset.from_dict({"text": s.texts, "labels": s.labels}, features=features) for s in splits}
    )
    out = Path(output_dir)
    dataset.save_to_disk(str(out))
    digests = {s.name: s.content_sha256 for s in splits}
    manifest = {
        "source": redact(source),
        "file_sha256": {s.name: s.sha256 for s in splits},
        "content_sha256": digests,
        "rows": {s.name: len(s.texts) for s in splits},
        "unfair_rows": {s.name: sum(1 for l in s.labels if l) for s in splits},
        "categories": list(CATEGORIES),
        "data_hash": data_hash(digests),
    }
    if store:
        manifest["snapshot"] = mirror_snapshot(splits, manifest, store)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("download: %s rows %s, data hash %s", redact(source), manifest["rows"], manifest["data_hash"][:12])
    return manifest


def run_step(source: str, output_dir: str, store: str, mlflow_run_id: str) -> dict:
    """The download step: fetch, verify, validate, mirror to the store, record in MLflow.
    Returns the manifest (its `data_hash` keys every later step)."""
    import time

    from tosguard.components.store import store_root
    from tosguard.components.tracking import pipeline_run

    started = time.time()
    manifest = download(source, output_dir, store=store_root(store))
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"data_hash": manifest["data_hash"], "data_source": redact(source),
                         "data_snapshot": manifest["snapshot"]["uri"]})
        mlflow.log_dict(manifest, "data/manifest.json")
        mlflow.log_metric("step_seconds.download", time.time() - started)
    return manifest
