"""Step 1, download: fetch the UNFAIR-ToS splits, verify and validate them, write Arrow.

Sources:
- ``bundled``: the LexGLUE snapshot vendored in this package (CC BY 4.0, see
  components/data/unfair_tos/SOURCE.md), checked against known sha256 digests;
- a local folder (or ``file://`` URI) holding train/validation/test ``.jsonl`` files;
- ``hf://coastalcph/lex_glue/unfair_tos``: the Hugging Face datasets loader (needs the hub).

Every row is validated; a bad row raises DataError naming its file and line.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from components.labels import CATEGORIES, NUM_CATEGORIES

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
    sha256: str
    origin: str


def bundled_dir() -> Path:
    return Path(str(resources.files("components") / "data" / "unfair_tos"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
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
        rows = loaded[name]
        # Hash a canonical JSONL rendering so the digest is comparable across sources.
        lines = [json.dumps({"text": t, "labels": sorted(l)}) for t, l in zip(rows["text"], rows["labels"])]
        digest = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
        splits.append(Split(name, list(rows["text"]), [sorted(l) for l in rows["labels"]], digest, uri))
    return splits


def read_source(source: str) -> list[Split]:
    if source == BUNDLED:
        splits = _read_folder(bundled_dir(), BUNDLED_SHA256)
        for split in splits:
            if len(split.texts) != BUNDLED_ROWS[split.name]:
                raise DataError(f"{split.origin}: {len(split.texts)} rows, expected {BUNDLED_ROWS[split.name]}")
        return splits
    if source.startswith("hf://"):
        return _read_hf(source)
    folder = Path(source[len("file://"):] if source.startswith("file://") else source)
    if folder.is_dir():
        return _read_folder(folder, None)
    raise DataError(
        f"unknown data source {source!r}: use 'bundled', a folder with train/validation/test .jsonl, "
        "or hf://coastalcph/lex_glue/unfair_tos"
    )


def data_hash(split_digests: dict[str, str]) -> str:
    joined = "".join(f"{name}:{split_digests[name]}\n" for name in SPLITS)
    return hashlib.sha256(joined.encode()).hexdigest()


def download(source: str, output_dir: str) -> dict:
    """Fetch, verify and validate the splits; write an Arrow DatasetDict and manifest.json.

    Returns the manifest (source, per-split sha256 and counts, label names, data_hash).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    splits = read_source(source)
    features = Features({"text": Value("string"), "labels": List(ClassLabel(names=list(CATEGORIES)))})
    dataset = DatasetDict(
        {s.name: Dataset.from_dict({"text": s.texts, "labels": s.labels}, features=features) for s in splits}
    )
    out = Path(output_dir)
    dataset.save_to_disk(str(out))
    digests = {s.name: s.sha256 for s in splits}
    manifest = {
        "source": source,
        "sha256": digests,
        "rows": {s.name: len(s.texts) for s in splits},
        "unfair_rows": {s.name: sum(1 for l in s.labels if l) for s in splits},
        "categories": list(CATEGORIES),
        "data_hash": data_hash(digests),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("download: %s rows %s, data hash %s", source, manifest["rows"], manifest["data_hash"][:12])
    return manifest
