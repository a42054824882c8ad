"""The store, the registry and the gate against real servers on 127.0.0.1: a moto S3
server and an MLflow tracking server whose artifacts are proxied to that S3, both started
here and stopped afterwards. S3 traffic of the first run goes through a proxy that injects
errors; a later test takes MLflow away in the middle of the train step."""
import json
from pathlib import Path

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
    run_id = first["mlflow"]["run_id"]
    assert {"model.safetensors", "config.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
            "tokenizer.json", "labels.json", "thresholds.json", "tosguard.json", "classifier.safetensors",
            "train_summary.json", f"evaluations/{run_id}/report.md", f"evaluations/{run_id}/scores.json",
            "MODEL_CARD.md", "training_curves.png", f"evaluations/{run_id}/report.html",
            "lexical.safetensors", "lexical_terms.json"} <= stored
    card = storage.read_text(f"{model_uri}/MODEL_CARD.md")
    out_of_fold = json.loads(storage.read_text(f"{model_uri}/tosguard.json"))["val_macro_f1_out_of_fold"]
    assert first["validation"]["macro_f1_out_of_fold"] == pytest.approx(out_of_fold)  # through MLflow
    for fact in (first["data_hash"], "all-MiniLM-L6-v2", "code version", f"{first['test']['macro_f1']:.1f}",
                 "thresholds (on the calibrated scores", "in logit space at weight 0.4",
                 "fit on train and validation", "validation macro-F1, out-of-fold estimate for the exported model (refit lexical side) | "
                 f"{out_of_fold:.1f} |"):
        assert fact in card, fact
    # MLflow's artifacts went through the tracking server into the same S3, the figures too.
    assert {"evaluation/report", "evaluation/report.html", "evaluation/category_confusions.png",
            "model/training_curves.png"} <= {k.split("/artifacts/", 1)[-1] for k in _keys(moto, "mlartifacts")}

    # Registered, promoted, deployed.
    client = MlflowClient(tracking.url)
    champion = client.get_model_version_by_alias("tosguard", "champion")
    assert champion.version == first["registry"]["version"] == "1"
    # The version is an MLflow Model; the store folder is its tag.
    assert champion.source.startswith("models:/") and champion.tags["store_uri"] == model_uri
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
    assert worse.tags["gate_passed"] == "False" and worse.tags["store_uri"].startswith(f"{store}/models/tosguard/")
    # The endpoint still serves the champion.
    state = json.loads((tmp_path / "home" / "server" / "state.json").read_text())
    assert state["model_dir"] == str(storage.fetch_folder(model_uri))


def test_mlflow_outage_fails_train_clearly_with_the_model_safe_and_the_rerun_reuses_it(
    cluster_like, tokenized_dir, raw_dir, monkeypatch, tmp_path
):
    from mlflow import MlflowClient

    from tosguard.components.config import TrainConfig
    from tosguard.components.train.step import run_step as train_job
    from tosguard.components.store import model_key, newest_complete
    from tosguard.components.tracking import MlflowUnavailable, open_pipeline_run

    moto, tracking = cluster_like
    store = f"s3://{BUCKET}/outage"
    data_hash = json.loads((raw_dir / "manifest.json").read_text())["data_hash"]
    config = TrainConfig(method="lora", epochs=1, max_steps=6, batch_size=16, checkpoint_every=0).to_json()
    key = model_key(data_hash, TrainConfig.from_json(config).key_json())  # as the train step keys it

    # MLflow goes away after the run was opened: nothing listens on its port any more.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(MlflowUnavailable, match="safe in the store at s3://tosguard/outage/models/tosguard/") as err:
        train_job(str(tokenized_dir), data_hash, config, "0123456789abcdef", str(tmp_path / "failed-attempt"), store=store)
    assert "Re-run the step" in str(err.value)
    uri, summary = newest_complete(store, key)
    assert summary["steps"] == 6 and uri in str(err.value)
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


_TRAIN_ONE = """
import json, sys
from tosguard.components.train.step import run_step
from tosguard.components.tracking import open_pipeline_run
run_id = open_pipeline_run(sys.argv[4], {"source": "slice"})
out = run_step(sys.argv[1], sys.argv[2], sys.argv[3], run_id, sys.argv[5], store=sys.argv[6], reuse=False)
print("RESULT " + json.dumps({"uri": out["model_uri"], "run": run_id}), flush=True)
"""


def test_versions_are_immutable_and_concurrent_trainings_never_mix(cluster_like, tokenized_dir, raw_dir, tmp_path,
                                                                    monkeypatch):
    """Two processes train the same data and config into the same S3 store at once: each
    gets its own version, complete and holding exactly its own files. An upload that dies
    midway leaves no complete mark, and a complete version is never written again."""
    import hashlib
    import subprocess
    import sys

    from tosguard.components.config import TrainConfig
    from tosguard.components.store import (
        VersionExists, model_key, model_uri, new_version, newest_complete, save_model,
    )

    store = f"s3://{BUCKET}/concurrent"
    data_hash = json.loads((raw_dir / "manifest.json").read_text())["data_hash"]
    config = TrainConfig(method="lora", epochs=1, max_steps=4, batch_size=16, checkpoint_every=0).to_json()
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONE, str(tokenized_dir), data_hash, config, f"run-{i}",
                               str(tmp_path / f"out{i}"), store], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
    uris = [r["uri"] for r in results]
    assert uris[0] != uris[1] and all(
        u.startswith(model_uri(store, model_key(data_hash, TrainConfig.from_json(config).key_json()))) for u in uris)
    for i, result in enumerate(results):
        stored = storage.list_files(result["uri"])
        local = {p.relative_to(tmp_path / f"out{i}").as_posix(): p for p in (tmp_path / f"out{i}").rglob("*")
                 if p.is_file()}
        assert set(stored) == set(local)
        for rel, path in local.items():
            remote = storage.read_text(storage.join(result["uri"], rel)) if rel.endswith(".json") else None
            if remote is not None:
                assert remote == path.read_text(), rel
        summary = json.loads(storage.read_text(storage.join(result["uri"], "train_summary.json")))
        assert summary["mlflow_run_id"] == result["run"]
        digest = hashlib.sha256((tmp_path / f"out{i}" / "model.safetensors").read_bytes()).hexdigest()
        moto_client = cluster_like[0].client()
        key = result["uri"][len(f"s3://{BUCKET}/"):] + "/model.safetensors"
        assert moto_client.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == digest
    # The newest complete version is what a re-run reuses.
    assert newest_complete(store, model_key(data_hash, TrainConfig.from_json(config).key_json()))[0] == max(uris)

    # A complete version is never overwritten.
    with pytest.raises(VersionExists):
        save_model(str(tmp_path / "out0"), uris[0], {"steps": 0})
    # An upload that dies midway leaves no complete mark: nobody reuses the half-copied version.
    half = model_uri(store, new_version("feedbeefcafe-000000000000"))
    calls = {"n": 0}
    original = storage.upload_file

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("connection lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(storage, "upload_file", dies_after_three)
    with pytest.raises(OSError):
        save_model(str(tmp_path / "out0"), half, {"steps": 4})
    monkeypatch.setattr(storage, "upload_file", original)
    assert storage.list_files(half) and "train_summary.json" not in storage.list_files(half)
    assert newest_complete(store, "feedbeefcafe-000000000000") is None


def test_the_registered_version_is_an_mlflow_model_with_a_local_store(cluster_like, tokenized_dir, trained_model_dir,
                                                                       tmp_path):
    """Against an MLflow tracking server (artifacts in S3) with the default local store,
    evaluate registers an MLflow Model (a server refuses a local folder as a version's
    source); `mlflow.pyfunc.load_model("models:/tosguard@champion")` loads it and predicts
    what tosguard's own scorer predicts, with the signature and requirements recorded."""
    import shutil

    import mlflow
    import pandas as pd

    from tosguard.components.evaluate import run_step
    from tosguard.components.serving.scorer import ClauseScorer
    from tosguard.components.tracking import open_pipeline_run

    moto, tracking = cluster_like
    store_folder = tmp_path / "home" / "store" / "models" / "tosguard" / "k" / "v1"
    shutil.copytree(trained_model_dir, store_folder)
    run_id = open_pipeline_run("pyfunc", {"source": "slice"})
    out = run_step(str(tokenized_dir), str(trained_model_dir), str(store_folder), "d" * 64, run_id, 0.0, 100.0, False,
                   "test", str(tmp_path / "scores.json"), str(tmp_path / "report.md"))
    assert out["gate"]["passed"]

    mlflow.set_tracking_uri(tracking.url)
    model = mlflow.pyfunc.load_model("models:/tosguard@champion")
    clauses = ["We may terminate your account at any time without notice.", "Welcome to our service."]
    predicted = model.predict(pd.DataFrame({"clause": clauses}))
    expected = ClauseScorer(str(trained_model_dir), "fp32").score(clauses)
    assert list(predicted.columns[:2]) == ["unfair", "categories"]
    for row, want in zip(predicted.to_dict("records"), expected):
        assert json.loads(row["categories"]) == want["categories"] and row["unfair"] == want["unfair"]
        for category, score in want["scores"].items():
            assert row[category] == pytest.approx(score, abs=1e-5)
    info = mlflow.models.get_model_info("models:/tosguard@champion")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["clause"]
    assert {"unfair", "categories", "Arbitration"} <= {c["name"] for c in info.signature.outputs.to_dict()}
    local = mlflow.artifacts.download_artifacts("models:/tosguard@champion")
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "transformers==" in requirements
    assert (Path(local) / "code" / "tosguard" / "components" / "serving" / "scorer.py").is_file()
    version = mlflow.MlflowClient(tracking.url).get_model_version_by_alias("tosguard", "champion")
    assert version.tags["store_uri"] == str(store_folder)
    # tosguard's own API reads the registry the same way.
    import tosguard

    assert tosguard.load_model("models:/tosguard@champion").score(clauses)[0]["categories"] == expected[0]["categories"]


def test_mlflow_with_basic_auth_admits_only_the_secrets_credentials(moto, tmp_path, monkeypatch):
    """MLflow's basic-auth app, configured as manifests/base/mlflow.yaml configures it:
    anonymous calls are refused, tosguard's steps get in with the Secret's credentials, a
    wrong password fails clearly, and a Host header outside the allowed list is refused."""
    from tosguard.components.tracking import MlflowUnavailable, open_pipeline_run
    from tests.servers import MlflowServer

    server = MlflowServer(tmp_path, moto, BUCKET, auth=("tosguard-admin", "s3cret-passw0rd"),
                          allowed_hosts="mlflow.tosguard.svc.cluster.local,127.0.0.1:*,localhost:*")
    try:
        anonymous = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert anonymous.status_code == 401
        rebinding = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10,
                                 auth=("tosguard-admin", "s3cret-passw0rd"), headers={"Host": "evil.example"})
        assert rebinding.status_code in (400, 403)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tosguard-admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(MlflowUnavailable, match="opening the pipeline run"):
            open_pipeline_run("denied", {"source": "x"})
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-passw0rd")
        assert open_pipeline_run("admitted", {"source": "x"})
    finally:
        server.stop()
