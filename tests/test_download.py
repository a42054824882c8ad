"""Download step: real data, sha256 verification, row validation with file and line."""
import json
import shutil

import pytest

from tosguard.components.download import BUNDLED_ROWS, BUNDLED_SHA256, DataError, bundled_dir, download, parse_jsonl
from tosguard.components.labels import CATEGORIES


def test_bundled_snapshot_is_the_full_lexglue_release(tmp_path):
    from datasets import load_from_disk

    manifest = download("bundled", str(tmp_path / "raw"))
    assert manifest["rows"] == BUNDLED_ROWS == {"train": 5532, "validation": 2275, "test": 1607}
    assert manifest["file_sha256"] == BUNDLED_SHA256
    assert manifest["unfair_rows"] == {"train": 630, "validation": 230, "test": 172}
    ds = load_from_disk(str(tmp_path / "raw"))
    assert ds["test"].features["labels"].feature.names == list(CATEGORIES)
    assert len(ds["train"]) == 5532
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["data_hash"] == manifest["data_hash"]


def test_attribution_ships_with_the_data():
    source = (bundled_dir() / "SOURCE.md").read_text()
    assert "CC BY 4.0" in source and "CLAUDETTE" in source and "LexGLUE" in source


def test_local_folder_gives_the_same_hashes_as_bundled(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(bundled_dir() / f"{split}.jsonl", copy / f"{split}.jsonl")
    local = download(str(copy), str(tmp_path / "a"))
    bundled = download("bundled", str(tmp_path / "b"))
    assert local["file_sha256"] == bundled["file_sha256"] and local["data_hash"] == bundled["data_hash"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"text": "ok", "labels": [9]}', "label 9 is not a category index 0-7"),
        ('{"text": "ok", "labels": [1, 1]}', "repeated label"),
        ('{"text": "", "labels": []}', "'text' must be a non-empty string"),
        ('{"text": "ok"}', "missing field"),
        ('{"text": "ok", "labels": [1]', "not valid JSON"),
        ('["text", "labels"]', "expected a JSON object"),
        ('{"text": "ok", "labels": "3"}', "'labels' must be a list"),
    ],
)
def test_a_corrupted_row_names_file_and_line(data_slice_dir, tmp_path, bad_line, message):
    folder = tmp_path / "corrupt"
    shutil.copytree(data_slice_dir, folder)
    path = folder / "validation.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[6] = bad_line + "\n"  # line 7
    path.write_text("".join(lines))
    with pytest.raises(DataError) as err:
        download(str(folder), str(tmp_path / "out"))
    assert "validation.jsonl:7: " in str(err.value)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing is written from bad data"


def test_an_altered_bundled_file_fails_its_checksum(tmp_path, monkeypatch):
    fake = tmp_path / "bundle"
    shutil.copytree(bundled_dir(), fake)
    test_file = fake / "test.jsonl"
    test_file.write_text(test_file.read_text().replace("arbitration", "arbitratiom", 1))
    monkeypatch.setattr("tosguard.components.download.bundled_dir", lambda: fake)
    with pytest.raises(DataError, match=r"test.jsonl: sha256 .* does not match"):
        download("bundled", str(tmp_path / "out"))


def test_missing_split_and_unknown_source_are_clear(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "labels": []}\n')
    with pytest.raises(DataError, match="validation.jsonl: split file not found"):
        download(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(DataError, match="unknown data source"):
        download("ftp://nowhere", str(tmp_path / "out2"))


def test_parse_reports_empty_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "labels": []}\n\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: empty line"):
        parse_jsonl(path)
