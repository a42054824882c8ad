"""`tosguard submit` and `tosguard schedule` against a fake KFP API on 127.0.0.1:
the requests sent are recorded and asserted."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tosguard.pipelines.cli import main


def _specs(body):
    """(pipeline spec, platform spec) from a run or recurring-run request body."""
    spec = body["pipeline_spec"]
    if "pipeline_spec" in spec:  # sent together with the Kubernetes platform spec
        return spec["pipeline_spec"], spec.get("platform_spec", {})
    return spec, {}


class FakeKfpApi:
    """Answers the KFP v2beta1 REST calls kfp.Client makes, and records them."""

    def __init__(self):
        self.requests = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests.append(("GET", self.path, None))
                if self.path.startswith("/apis/v2beta1/healthz"):
                    return self._reply({"multi_user": False})
                if self.path.startswith("/apis/v2beta1/experiments"):
                    return self._reply({"experiments": [], "total_size": 0})
                self._reply({"error": "not found"}, 404)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                api.requests.append(("POST", self.path, body))
                if self.path == "/apis/v2beta1/experiments":
                    return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
                if self.path == "/apis/v2beta1/runs":
                    return self._reply({"run_id": "run-1", "display_name": body.get("display_name"),
                                        "experiment_id": body.get("experiment_id")})
                if self.path == "/apis/v2beta1/recurringruns":
                    return self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
                self._reply({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def posted(self, path):
        return [body for method, p, body in self.requests if method == "POST" and p == path]


@pytest.fixture
def kfp_api():
    api = FakeKfpApi()
    api.thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


def test_submit_sends_the_compiled_pipeline_with_typed_parameters(kfp_api, capsys):
    code = main(["submit", "--host", kfp_api.url, "--namespace", "team-a", "--experiment", "unfair-tos",
                 "--run-name", "nightly", "--param", "epochs=2", "--param", "learning_rate=0.0003",
                 "--param", "deploy=false", "--param", "method=qlora", "--param", "serve_profile=triage",
                 "--no-cache"])
    assert code == 0
    assert "submitted run run-1" in capsys.readouterr().out
    (experiment,) = kfp_api.posted("/apis/v2beta1/experiments")
    assert experiment["display_name"] == "unfair-tos" and experiment["namespace"] == "team-a"
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    # --no-cache also stops train from reusing a stored model: a fresh run retrains.
    params = run["runtime_config"]["parameters"]
    assert {k: params[k] for k in ("deploy", "reuse_stored_model", "serve_profile")} == {
        "deploy": False, "reuse_stored_model": False, "serve_profile": "triage"}
    # Training settings travel in the one `train` block: the default preset with the changes.
    from tosguard.components.config import PRESETS

    expected = {**PRESETS["default"].to_dict(), "epochs": 2, "learning_rate": 0.0003, "method": "qlora"}
    assert params["train"] == expected and set(params) == {"deploy", "reuse_stored_model", "serve_profile", "train"}
    spec, _ = _specs(run)
    assert spec["pipelineInfo"]["name"] == "tosguard"
    # --no-cache: caching is off for every task in the submitted spec.
    assert "exec-train-model" in spec["deploymentSpec"]["executors"]
    tasks = {name: task for component in [spec["root"]] + list(spec["components"].values())
             for name, task in component.get("dag", {}).get("tasks", {}).items()}
    assert tasks["download-data"].get("cachingOptions", {}).get("enableCache") is not True
    assert tasks["train-model"].get("cachingOptions", {}).get("enableCache") is not True


def test_schedule_creates_a_recurring_run_that_never_overlaps(kfp_api, capsys):
    assert main(["schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * 1", "--param", "epochs=4"]) == 0
    assert "rr-1" in capsys.readouterr().out
    (job,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    assert job["max_concurrency"] == "1" or job["max_concurrency"] == 1
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["experiment_id"] == "exp-1" and job["no_catchup"] is True
    from tosguard.components.config import PRESETS

    assert job["runtime_config"]["parameters"] == {"train": {**PRESETS["default"].to_dict(), "epochs": 4}}
    spec, platform = _specs(job)
    assert spec["pipelineInfo"]["name"] == "tosguard"
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}


def test_bad_cron_and_bad_params_are_clear_errors(kfp_api, capsys):
    assert main(["schedule", "--host", kfp_api.url, "--cron", "0 3 * * 1"]) == 2
    assert "6 fields" in capsys.readouterr().err
    assert main(["submit", "--host", kfp_api.url, "--param", "epochs=four"]) == 2
    assert "training setting epochs: expected int" in capsys.readouterr().err
    assert main(["submit", "--host", kfp_api.url, "--param", "epoch=4"]) == 2
    assert "not a pipeline parameter or training setting" in capsys.readouterr().err
    assert main(["submit", "--host", kfp_api.url, "--preset", "quick", "--param", "train={\"lora_r\": 0}"]) == 2
    assert "lora_r must be >= 1" in capsys.readouterr().err
    assert main(["submit", "--host", kfp_api.url, "--param", "serve_profile=recall"]) == 2
    assert "serve_profile=recall: expected one of default, triage" in capsys.readouterr().err
    # A misspelt choice would silently take the pipeline's other branch: refused, every problem named.
    assert main(["submit", "--host", kfp_api.url, "--param", "trainer=TrainJob", "--param", "deploy_target=KServe",
                 "--param", "min_replicas=5"]) == 2
    err = capsys.readouterr().err
    assert "trainer must be one of pod, trainjob (got 'TrainJob')" in err and "deploy_target must be one of" in err
    assert "max_replicas (3) must be >= min_replicas (5)" in err
    assert main(["submit", "--host", "http://127.0.0.1:9", "--pipeline", "/nonexistent.yaml"]) == 2
    assert "/nonexistent.yaml: no such pipeline file" in capsys.readouterr().err  # named before connecting
    assert main(["submit", "--host", kfp_api.url, "--param", "seed=-1"]) == 2
    assert "seed must be in [0, 2**32)" in capsys.readouterr().err
    assert not kfp_api.posted("/apis/v2beta1/runs")


def test_submit_time_checks_cover_deploy_and_drift_settings_and_a_named_preset_sends_its_floor():
    from tosguard.pipelines.submit import parse_params

    for bad, drift, message in ((["concurrency_target=0"], False, "concurrency_target must be >= 1"),
                                (["ready_timeout_s=-5"], False, "ready_timeout_s must be >= 1"),
                                (["psi_threshold=0"], True, "PSI threshold must be > 0"),
                                (["window_s=-5"], True, "window must be a finite number of seconds"),
                                (["min_clauses=0"], True, "min_clauses must be >= 1"),
                                (["metric_reads=0"], True, "reads of /metrics must be a whole number"),
                                (["metric_reads=65"], True, "reads of /metrics must be a whole number")):
        with pytest.raises(ValueError, match=message):
            parse_params(bad, drift_watch=drift)
    # A named preset always sends its floor: a --pipeline FILE compiled for quick has 0 as its default.
    assert parse_params([], "default")["gate_floor"] == 75.0 and parse_params([], "quick")["gate_floor"] == 0.0
    assert "gate_floor" not in parse_params(["epochs=2"])  # no preset named: the pipeline's own default


def test_the_quick_preset_keeps_its_gate_floor_of_0_on_a_cluster(kfp_api, capsys, tmp_path):
    """`tosguard run --preset quick` gates at 0; so must the compiled pipeline's form and a
    submitted quick run, or a quick run on a cluster never deploys."""
    import yaml

    assert main(["submit", "--host", kfp_api.url, "--preset", "quick"]) == 0
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["gate_floor"] == 0.0
    for preset, floor in (("quick", 0.0), ("default", 75.0)):
        assert main(["compile", "--preset", preset, "--output", str(tmp_path / f"{preset}.yaml")]) == 0
        spec = next(yaml.safe_load_all((tmp_path / f"{preset}.yaml").read_text()))
        assert spec["root"]["inputDefinitions"]["parameters"]["gate_floor"]["defaultValue"] == floor


def test_a_scheduled_drift_watch_checks_uncached_and_retrains_only_inside_its_condition(kfp_api, capsys):
    url = "http://tosguard-predictor.tosguard.svc.cluster.local"
    assert main(["schedule", "--host", kfp_api.url, "--cron", "0 0 * * * *", "--drift-watch",
                 "--param", f"url={url}", "--param", "psi_threshold=0.2", "--param", "epochs=5"]) == 0
    assert "drift watch" in capsys.readouterr().out
    (job,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    params = job["runtime_config"]["parameters"]
    assert params["url"] == url and params["psi_threshold"] == 0.2 and params["train"]["epochs"] == 5
    # The retrain deploys as the training pipeline would: every one of its parameters passes through.
    from tosguard.pipelines.pipeline import drift_watch_pipeline, tosguard_pipeline

    assert set(tosguard_pipeline.component_spec.inputs) <= set(drift_watch_pipeline.component_spec.inputs)
    spec, _ = _specs(job)
    assert spec["pipelineInfo"]["name"] == "tosguard-drift-watch"
    root = spec["root"]["dag"]["tasks"]
    # The check is never answered from the cache (the traffic changes, the inputs do not).
    assert root["check-drift"]["cachingOptions"].get("enableCache") is not True
    condition = next(t for name, t in root.items() if name.startswith("condition"))
    assert "check-drift-Output" in condition["triggerPolicy"]["condition"]
    # Inside the condition: the whole training pipeline, as a sub-DAG.
    branch = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    # After the retrain, and only after it ends well, the endpoint's drift mark moves past the
    # traffic that asked for it (never from the cache: it writes to the store).
    acknowledge = branch.pop("acknowledge-drift")
    (inner_name, inner), = branch.items()
    assert acknowledge["dependentTasks"] == [inner_name]
    assert acknowledge["cachingOptions"].get("enableCache") is not True
    assert root["check-drift"]["inputs"]["parameters"]["since_last_check"]["componentInputParameter"] == \
        "since_last_check"
    assert spec["root"]["inputDefinitions"]["parameters"]["since_last_check"]["defaultValue"] is True
    # Each check reads /metrics 12 times by default, so the replicas behind the Service are judged together.
    assert root["check-drift"]["inputs"]["parameters"]["metric_reads"]["componentInputParameter"] == "metric_reads"
    assert spec["root"]["inputDefinitions"]["parameters"]["metric_reads"]["defaultValue"] == 12
    # The hold and its acknowledgement name the same run: this KFP run's own id.
    for task in (root["check-drift"], acknowledge):
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    steps = spec["components"][inner["componentRef"]["name"]]["dag"]["tasks"]
    assert {"open-run", "download-data", "tokenize-data", "evaluate-model"} <= set(steps)
    assert main(["schedule", "--host", kfp_api.url, "--cron", "0 0 * * * *", "--drift-watch",
                 "--param", "epochz=2"]) == 2
    assert "not a pipeline parameter" in capsys.readouterr().err
