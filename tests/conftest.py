"""Shared fixtures: small slices of the real vendored UNFAIR-ToS data, built once."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tosguard.components.download import SPLITS, bundled_dir

# Slices keep every category present where the split has one, so metrics stay meaningful.
SLICE_ROWS = {"train": 400, "validation": 160, "test": 160}


def _slice(split: str, n: int) -> list[str]:
    lines = (bundled_dir() / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    unfair = [l for l in lines if json.loads(l)["labels"]]
    fair = [l for l in lines if not json.loads(l)["labels"]]
    take_unfair = unfair[: n // 4]
    return take_unfair + fair[: n - len(take_unfair)]


@pytest.fixture(scope="session")
def data_slice_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unfair_tos_slice")
    for split in SPLITS:
        (folder / f"{split}.jsonl").write_text("".join(_slice(split, SLICE_ROWS[split])), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def raw_dir(data_slice_dir, tmp_path_factory) -> Path:
    from tosguard.components.download import download

    out = tmp_path_factory.mktemp("raw") / "dataset"
    download(str(data_slice_dir), str(out))
    return out


@pytest.fixture(scope="session")
def tokenized_dir(raw_dir, tmp_path_factory) -> Path:
    from tosguard.components.config import DEFAULT_BASE_MODEL
    from tosguard.components.tokenize import tokenize

    out = tmp_path_factory.mktemp("tokenized") / "dataset"
    tokenize(str(raw_dir), DEFAULT_BASE_MODEL, 128, str(out))
    return out


@pytest.fixture(scope="session")
def trained_model_dir(tokenized_dir, tmp_path_factory) -> Path:
    """A LoRA model trained for a few steps on the slice (exported folder)."""
    from tosguard.components.config import TrainConfig
    from tosguard.components.train.loop import train

    out = tmp_path_factory.mktemp("model") / "model"
    train(str(tokenized_dir), TrainConfig(method="lora", epochs=1, max_steps=12, batch_size=16, log_every=5), str(out))
    return out


@pytest.fixture
def tosguard_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TOSGUARD_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def moto():
    """One moto S3 server on 127.0.0.1 for the session, with the buckets tests use."""
    from tests.servers import MotoServer

    server = MotoServer()
    for bucket in ("tosguard", "data"):
        server.client().create_bucket(Bucket=bucket)
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto, monkeypatch) -> str:
    """Point boto3 at the moto server; returns its URL."""
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    return moto.url


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def https_root(tmp_path, monkeypatch):
    """A loopback HTTPS server (self-signed, trusted through REQUESTS_CA_BUNDLE)."""
    root = tmp_path / "www"
    root.mkdir()
    from tests.servers import self_signed_certificate, serve_folder

    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    server, url = serve_folder(root, (cert, key))
    yield root, url
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _only_the_tosguard_package():
    """The code is `tosguard.*`: a test that imports or patches a bare `components.x` or
    `pipelines.x` (the repository folders on sys.path) would act on a second copy."""
    import sys

    yield
    stray = [name for name in ("components", "pipelines") if name in sys.modules]
    assert not stray, f"imported the bare package(s) {stray}; use tosguard.{stray[0]}"
