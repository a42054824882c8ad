"""Storage: verified transfers of files and folders to file:// and s3:// (a moto S3 server on
127.0.0.1, and a proxy in front of it that injects errors)."""
import hashlib
import os
import shutil

import pytest

from tosguard.components import storage
from tosguard.components.modeling import length_sorted_batches
from tosguard.components.storage import fetch_folder
from tests.servers import FaultyProxy


def test_length_sorted_batches_respect_rows_and_token_budget():
    lengths = [5, 120, 7, 60, 6, 118, 8, 9]
    batches = length_sorted_batches(lengths, max_rows=4, max_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    assert [lengths[i] for i in batches[-1]] == [120]


def test_file_uri_and_missing_folder(tmp_path):
    assert fetch_folder(f"file://{tmp_path}") == tmp_path
    with pytest.raises(FileNotFoundError, match="no such folder"):
        fetch_folder(str(tmp_path / "nope"))


def _tree(root, sizes):
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


def test_folder_round_trip_through_s3_verifies_every_file(moto, s3_env, tmp_path, monkeypatch, caplog):
    # Small multipart settings so a 12 MiB file goes up in three parts.
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * storage.MIB)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * storage.MIB)
    src = _tree(tmp_path / "src", {"big.bin": 12 * storage.MIB, "a/small.txt": 100, "a/b/empty": 0})
    records = storage.upload_folder(src, "s3://tosguard/t/round")
    assert {r["uri"] for r in records} == {f"s3://tosguard/t/round/{p}" for p in ("big.bin", "a/small.txt", "a/b/empty")}
    head = moto.client().head_object(Bucket="tosguard", Key="t/round/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # multipart, and the ETag matched the local recomputation
    assert head["Metadata"]["sha256"] == storage.sha256_file(src / "big.bin")
    assert storage.list_files("s3://tosguard/t/round") == {"big.bin": 12 * storage.MIB, "a/small.txt": 100, "a/b/empty": 0}
    storage.download_folder("s3://tosguard/t/round", tmp_path / "dst")
    for rel in ("big.bin", "a/small.txt", "a/b/empty"):
        assert (tmp_path / "dst" / rel).read_bytes() == (src / rel).read_bytes()
    storage.write_text("s3://tosguard/t/x.txt", "hé")
    assert storage.read_text(storage.join("s3://tosguard/t", "x.txt")) == "hé"
    assert storage.exists("s3://tosguard/t/x.txt") and not storage.exists("s3://tosguard/t/nope")
    with pytest.raises(FileNotFoundError, match="no such object"):
        storage.download_file("s3://tosguard/t/nope", tmp_path / "nope")
    # A missing object is an answer, not a transient error: no retries (they cost 7.5 s a miss).
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], caplog.text


def test_local_store_round_trip(tmp_path):
    src = _tree(tmp_path / "src", {"m/a.bin": 1000, "b.txt": 3})
    storage.upload_folder(src, f"file://{tmp_path}/store/x")
    assert storage.list_files(str(tmp_path / "store" / "x")) == {"b.txt": 3, "m/a.bin": 1000}
    storage.download_folder(str(tmp_path / "store" / "x"), tmp_path / "back")
    assert (tmp_path / "back" / "m" / "a.bin").read_bytes() == (src / "m" / "a.bin").read_bytes()


def test_injected_s3_errors_are_retried_and_corrupt_downloads_caught(moto, tmp_path, monkeypatch, caplog):
    """Through a proxy that answers 503 to the first requests and to every 7th, and flips a
    byte in the first two object bodies it relays: everything still arrives verified."""
    proxy = FaultyProxy(moto.url, fail_first=3, fail_every=7, corrupt_gets=2)
    try:
        for key, value in {**moto.env, "AWS_ENDPOINT_URL_S3": proxy.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * storage.MIB)
        monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * storage.MIB)
        src = _tree(tmp_path / "src", {"w.bin": 11 * storage.MIB, "c.json": 2000, "d/e.txt": 10})
        storage.upload_folder(src, "s3://tosguard/faulty")
        with caplog.at_level("WARNING", logger="tosguard.components.storage"):
            storage.download_folder("s3://tosguard/faulty", tmp_path / "dst")
        assert proxy.failed >= 3 and proxy.corrupted == 2
        # The corruption was caught (by botocore's CRC32 or our sha256 check) and retried.
        assert "checksum" in caplog.text.lower() or "sha256" in caplog.text
        assert "retrying" in caplog.text
        for rel in ("w.bin", "c.json", "d/e.txt"):
            assert storage.sha256_file(tmp_path / "dst" / rel) == storage.sha256_file(src / rel)
        # What moto holds is what was sent.
        direct = moto.client()
        for rel in ("w.bin", "c.json", "d/e.txt"):
            body = direct.get_object(Bucket="tosguard", Key=f"faulty/{rel}")["Body"].read()
            assert body == (src / rel).read_bytes()
    finally:
        proxy.stop()


def test_a_transfer_that_never_verifies_fails_clearly(moto, tmp_path, monkeypatch):
    proxy = FaultyProxy(moto.url, corrupt_gets=100)
    try:
        for key, value in {**moto.env, "AWS_ENDPOINT_URL_S3": proxy.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(storage, "TRANSFER_ATTEMPTS", 2)
        moto.client().put_object(Bucket="tosguard", Key="bad/x.bin", Body=b"0123456789",
                                 Metadata={"sha256": hashlib.sha256(b"0123456789").hexdigest()})
        with pytest.raises(storage.IntegrityError, match="checksum|sha256"):
            storage.download_file("s3://tosguard/bad/x.bin", tmp_path / "x.bin")
        assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.partial").exists()
    finally:
        proxy.stop()


def test_predictor_loads_a_model_from_an_s3_model_store(s3_env, trained_model_dir, tmp_path):
    import boto3

    from tosguard.components.serving.model import UnfairClauseModel

    s3 = boto3.client("s3")
    for path in trained_model_dir.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "tosguard", f"models/tosguard/v1/{path.relative_to(trained_model_dir)}")
    os.environ["TOSGUARD_CACHE"] = str(tmp_path / "cache")
    try:
        model = UnfairClauseModel("tosguard", "s3://tosguard/models/tosguard/v1")
        assert model.load()
        local = UnfairClauseModel("tosguard", str(trained_model_dir))
        local.load()
        clause = ["we may remove your content without notice ."]
        assert model.classify(clause)[0]["scores"] == pytest.approx(local.classify(clause)[0]["scores"])
        # The second fetch is served from the verified cache.
        cached = fetch_folder("s3://tosguard/models/tosguard/v1")
        assert (cached / ".complete").is_file() and (cached / "tosguard.json").is_file()
        with pytest.raises(FileNotFoundError, match="no objects"):
            fetch_folder("s3://tosguard/models/none")
    finally:
        os.environ.pop("TOSGUARD_CACHE", None)
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
