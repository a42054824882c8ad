"""The store, the registry and the gate against real servers on 127.0.0.1: a moto S3
server and an MLflow tracking server whose artifacts are proxied to that S3, both started
here and stopped afterwards. S3 traffic of the first run goes through a proxy that injects
errors; a later test takes MLflow away in the middle of the train step."""
import json

import pytest
import requests

from tosguard.components import storage
from tosguard.pipelines.cli import main
from tests.conftest import free_port
from tests.servers import FaultyProxy, MlflowServer

BUCKET = "tosguard"


@pytest.fixture(scope="module")
def servers(moto, tmp_path_factory):
    """The session's moto S3 server (conftest) and an MLflow server storing artifacts in it."""
    tracking = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), moto, BUCKET)
    yield moto, tracking
    tracking.stop()


@pytest.fixture
def cluster_like(servers, tmp_path, monkeypatch):
    """Steps see S3 and the MLflow server through the environment, as in a cluster."""
    moto, tracking = servers
    for key, value in {**moto.env, "MLFLOW_TRACKING_URI": tracking.url, "TOSGUARD_HOME": str(tmp_path / "home"),
                       "TOSGUARD_CACHE": str(tmp_path / "cache"), "TOSGUARD_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    yield moto, tracking
    main(["serve", "--stop"])


def _keys(moto, prefix):
    client = moto.client()
    return [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in p.get("Contents", [])]


def _verify_objects(moto, prefix):
    """Every object under the prefix holds the bytes its sha256 metadata names."""
    import hashlib

    client = moto.client()
    keys = _keys(moto, prefix)
    assert keys, prefix
    for key in keys:
        obj = client.get_object(Bucket=BUCKET, Key=key)
        assert hashlib.sha256(obj["Body"].read()).hexdigest() == obj["Metadata"]["sha256"], key
    return {k[len(prefix):].lstrip("/") for k in keys}


def test_store_registry_and_gate_end_to_end(cluster_like, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    moto, tracking = cluster_like
    store = f"s3://{BUCKET}/tosguard"
    proxy = FaultyProxy(moto.url, fail_first=2, fail_every=11)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    try:
        assert main(["run", "--preset", "quick", "--store", store, "--output", str(tmp_path / "a")]) == 0
    finally:
        proxy.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert proxy.failed >= 2  # injected 503s were met, retried, and the run went on

    # The data snapshot and the model store are in S3, every object verified.
    snapshot = first["data_snapshot"]
    assert snapshot == f"{store}/data/unfair_tos/{first['data_hash']}"
    assert _verify_objects(moto, snapshot[len(f"s3://{BUCKET}/"):]) == {
        "train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"}
    model_uri = first["artifacts"]["model"]
    assert model_uri.startswith(f"{store}/models/tosguard/{first['data_hash'][:12]}-")
    stored = _verify_objects(moto, model_uri[len(f"s3://{BUCKET}/"):])
    assert {"model.safetensors", "config.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
            "tokenizer.json", "labels.json", "thresholds.json", "tosguard.json", "classifier.safetensors",
            "train_summary.json", "report.md", "scores.json", "MODEL_CARD.md"} <= stored
    card = storage.read_text(f"{model_uri}/MODEL_CARD.md")
    for fact in (first["data_hash"], "all-MiniLM-L6-v2", "code version", f"{first['test']['macro_f1']:.1f}"):
        assert fact in card, fact
    # MLflow's artifacts went through the tracking server into the same S3.
    assert "evaluation/report" in {k.split("/artifacts/", 1)[-1] for k in _keys(moto, "mlartifacts")}

    # Registered, promoted, deployed.
    client = MlflowClient(tracking.url)
    champion = client.get_model_version_by_alias("tosguard", "champion")
    assert champion.version == first["registry"]["version"] == "1"
    assert champion.source == model_uri
    assert champion.tags["data_hash"] == first["data_hash"]
    assert float(champion.tags["test_macro_f1"]) == pytest.approx(first["test"]["macro_f1"], abs=1e-3)
    assert first["gate"]["passed"] is True and first["deployed"] is True
    answer = requests.post(f"{first['endpoint']}/v1/models/tosguard:predict",
                           json={"instances": ["we may terminate your account at any time ."]}, timeout=30)
    assert answer.status_code == 200

    # A deliberately worse run: registered, not promoted, not deployed; the report says why.
    assert main(["run", "--preset", "quick", "--store", store, "--max-steps", "2", "--learning-rate", "1e-6",
                 "--gate-tolerance", "0", "--output", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["test"]["macro_f1"] < first["test"]["macro_f1"]
    assert second["gate"]["passed"] is False and second["deployed"] is False and second["endpoint"] is None
    assert "below champion v1" in second["gate"]["reason"]
    assert "## Gate: FAILED" in (tmp_path / "b" / "report.md").read_text()
    assert "gate: failed" in capsys.readouterr().out
    assert client.get_model_version_by_alias("tosguard", "champion").version == "1"
    worse = client.get_model_version("tosguard", second["registry"]["version"])
    assert worse.tags["gate_passed"] == "False" and worse.source.startswith(f"{store}/models/tosguard/")
    # The endpoint still serves the champion.
    state = json.loads((tmp_path / "home" / "server" / "state.json").read_text())
    assert state["model_dir"] == str(storage.fetch_folder(model_uri))


def test_mlflow_outage_fails_train_clearly_with_the_model_safe_and_the_rerun_reuses_it(
    cluster_like, tokenized_dir, raw_dir, monkeypatch, tmp_path
):
    from mlflow import MlflowClient

    from tosguard.components.config import TrainConfig
    from tosguard.components.train.step import run_step as train_job
    from tosguard.components.store import find_model, model_uri, model_version
    from tosguard.components.tracking import MlflowUnavailable, open_pipeline_run

    moto, tracking = cluster_like
    store = f"s3://{BUCKET}/outage"
    data_hash = json.loads((raw_dir / "manifest.json").read_text())["data_hash"]
    config = TrainConfig(method="lora", epochs=1, max_steps=6, batch_size=16, checkpoint_every=0).to_json()
    uri = model_uri(store, model_version(data_hash, config))

    # MLflow goes away after the run was opened: nothing listens on its port any more.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(MlflowUnavailable, match="safe in the store at s3://tosguard/outage/models/tosguard/") as err:
        train_job(str(tokenized_dir), data_hash, config, "0123456789abcdef", str(tmp_path / "failed-attempt"), store=store)
    assert "Re-run the step" in str(err.value)
    assert find_model(uri)["steps"] == 6
    assert "model.safetensors" in storage.list_files(uri)

    # MLflow is back: the re-run finds the stored model and records it without training.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.url)
    run_id = open_pipeline_run("outage-rerun", {"source": "slice"})
    result = train_job(str(tokenized_dir), data_hash, config, run_id, str(tmp_path / "rerun-model"), store=store)
    assert result["reused"] is True and result["model_uri"] == uri
    run = MlflowClient(tracking.url).get_run(run_id)
    assert run.data.tags["train.reused"] == "True" and run.data.tags["model_uri"] == uri
    assert "val_macro_f1" in run.data.metrics
    assert (tmp_path / "rerun-model" / "model.safetensors").is_file()
