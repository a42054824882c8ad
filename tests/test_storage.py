"""Storage: model folders fetched from file:// and s3:// (a moto S3 server on 127.0.0.1)."""
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from components.modeling import length_sorted_batches
from components.storage import fetch_folder
from tests.conftest import free_port


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


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url, timeout=0.5)
            break
        except requests.RequestException:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.terminate()
    server.wait(10)


def test_predictor_loads_a_model_from_an_s3_model_store(s3_endpoint, trained_model_dir, tmp_path):
    import boto3

    from components.predictor import UnfairClauseModel

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="tosguard")
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
