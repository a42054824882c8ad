"""Every data source yields the same splits and hashes: bundled, a local folder, an https
tarball in the zenodo layout (served over TLS on 127.0.0.1), s3:// (moto on 127.0.0.1) and the
Hugging Face datasets loader (reading a local dataset folder; the hub is unreachable here).
The snapshot is mirrored to the store by content hash and reused on a re-run."""
import io
import json
import tarfile

import pytest

from tosguard.components import storage
from tosguard.components.download import SPLITS, DataError, bundled_dir, download


@pytest.fixture(scope="module")
def bundled_manifest(tmp_path_factory):
    return download("bundled", str(tmp_path_factory.mktemp("bundled") / "raw"))


def _zenodo_tarball(path):
    """unfair_tos.tar.gz as LexGLUE publishes it: the three .jsonl files at the top level."""
    with tarfile.open(path, "w:gz") as tar:
        for split in SPLITS:
            tar.add(bundled_dir() / f"{split}.jsonl", arcname=f"{split}.jsonl")


def _same(manifest, reference):
    assert manifest["rows"] == reference["rows"]
    assert manifest["content_sha256"] == reference["content_sha256"]
    assert manifest["data_hash"] == reference["data_hash"]


def test_https_tarball_in_the_zenodo_layout(https_root, tmp_path, bundled_manifest):
    import hashlib

    root, url = https_root
    _zenodo_tarball(root / "unfair_tos.tar.gz")
    _same(download(f"{url}/unfair_tos.tar.gz", str(tmp_path / "a")), bundled_manifest)
    digest = hashlib.sha256((root / "unfair_tos.tar.gz").read_bytes()).hexdigest()
    _same(download(f"{url}/unfair_tos.tar.gz#sha256={digest}", str(tmp_path / "b")), bundled_manifest)
    with pytest.raises(DataError, match="does not match the pinned"):
        download(f"{url}/unfair_tos.tar.gz#sha256={'0' * 64}", str(tmp_path / "c"))
    with pytest.raises(DataError, match="404"):
        download(f"{url}/missing.tar.gz", str(tmp_path / "d"))
    (root / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a readable tar archive"):
        download(f"{url}/junk.tar.gz", str(tmp_path / "e"))


def test_a_bad_row_in_a_tarball_names_its_file_and_line(https_root, tmp_path):
    root, url = https_root
    with tarfile.open(root / "bad.tar.gz", "w:gz") as tar:
        for split in SPLITS:
            lines = (bundled_dir() / f"{split}.jsonl").read_bytes().splitlines(keepends=True)[:5]
            if split == "validation":
                lines[2] = b'{"text": "x", "labels": [9]}\n'
            info = tarfile.TarInfo(f"unfair_tos/{split}.jsonl")
            data = b"".join(lines)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"unfair_tos/validation.jsonl:3: label 9"):
        download(f"{url}/bad.tar.gz", str(tmp_path / "x"))


def test_s3_source_and_snapshot_mirror(s3_env, tmp_path, bundled_manifest):
    for split in SPLITS:
        storage.upload_file(bundled_dir() / f"{split}.jsonl", f"s3://data/lexglue/{split}.jsonl")
    from_s3 = download("s3://data/lexglue", str(tmp_path / "s3"), store="s3://data/store")
    _same(from_s3, bundled_manifest)
    snapshot = from_s3["snapshot"]
    assert snapshot == {"uri": f"s3://data/store/data/unfair_tos/{bundled_manifest['data_hash']}", "reused": False}
    stored = storage.list_files(snapshot["uri"])
    assert set(stored) == {"train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"}
    assert json.loads(storage.read_text(storage.join(snapshot["uri"], "manifest.json")))["data_hash"] == from_s3["data_hash"]
    # Another source with the same content reuses the snapshot; the snapshot is itself a source.
    again = download("bundled", str(tmp_path / "again"), store="s3://data/store")
    assert again["snapshot"] == {**snapshot, "reused": True}
    _same(download(snapshot["uri"], str(tmp_path / "snap")), bundled_manifest)
    with pytest.raises(DataError, match="no such object"):
        download("s3://data/nothing-here", str(tmp_path / "none"))


def test_hf_loader_on_a_local_dataset_folder(tmp_path, monkeypatch, bundled_manifest):
    """hf://coastalcph/lex_glue/unfair_tos goes through datasets.load_dataset, which reads a
    local folder of that name before it would ask the hub."""
    repo = tmp_path / "coastalcph" / "lex_glue"
    (repo / "unfair_tos").mkdir(parents=True)
    for split in SPLITS:
        (repo / "unfair_tos" / f"{split}.jsonl").write_bytes((bundled_dir() / f"{split}.jsonl").read_bytes())
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: unfair_tos\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: unfair_tos/{s}.jsonl\n" for s in SPLITS)
        + "---\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    _same(download("hf://coastalcph/lex_glue/unfair_tos", str(tmp_path / "hf")), bundled_manifest)
    with pytest.raises(DataError, match="expected hf://OWNER/NAME/CONFIG"):
        download("hf://coastalcph/lex_glue", str(tmp_path / "bad"))


def test_local_store_snapshot(tmp_path, bundled_manifest):
    first = download("bundled", str(tmp_path / "a"), store=str(tmp_path / "store"))
    second = download("bundled", str(tmp_path / "b"), store=str(tmp_path / "store"))
    assert first["snapshot"]["reused"] is False and second["snapshot"]["reused"] is True
    folder = tmp_path / "store" / "data" / "unfair_tos" / bundled_manifest["data_hash"]
    _same(download(str(folder), str(tmp_path / "c")), bundled_manifest)


def test_run_names_a_bad_row_of_a_local_source_before_any_step_starts(tmp_path, tosguard_home, capsys):
    """`tosguard run --source FOLDER`: the folder is read first, so a bad row is one clear
    line (file and line), not a failed kfp.local step's traceback."""
    from tosguard.pipelines.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    for name in SPLITS:
        (folder / f"{name}.jsonl").write_text((bundled_dir() / f"{name}.jsonl").read_text())
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[1] = '{"text": "We may end it.", "labels": [1]'  # cut short
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["run", "--source", str(folder), "--preset", "quick", "--no-deploy", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{folder / 'train.jsonl'}:2: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was started
    (tmp_path / "a-file").write_text("x")
    assert main(["run", "--preset", "quick", "--no-deploy", "--output", str(tmp_path / "a-file")]) == 2
    assert "a file is there; name a folder" in capsys.readouterr().err
