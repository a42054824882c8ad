"""The compiled pipeline for a cluster: GPU, node selector, toleration; loads back with kfp."""
import pytest
import yaml
from google.protobuf import json_format

from tosguard.pipelines.cli import main


def _compile(tmp_path, *extra):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(out), *extra]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return out, docs[0], docs[1]


def test_train_asks_for_a_gpu_on_the_a100_pool(tmp_path):
    from kfp.kubernetes import kubernetes_executor_config_pb2 as pb
    from kfp.pipeline_spec import pipeline_spec_pb2

    out, spec_doc, platform_doc = _compile(tmp_path)
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    train = executors["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # The count comes from the run's `gpus` parameter (default 1), fed to the task as an input.
    assert train["resources"]["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
    assert spec_doc["root"]["inputDefinitions"]["parameters"]["gpus"]["defaultValue"] == 1
    assert "tosguard-trainer" in train["image"]
    # Only the train step asks for a GPU.
    others = [k for k, v in executors.items() if "accelerator" in v["container"].get("resources", {})]
    assert others == ["exec-train-model"]

    k8s = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    config = json_format.ParseDict(k8s, pb.KubernetesExecutorConfig())
    assert dict(config.node_selector.labels) == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    (toleration,) = config.tolerations
    assert (toleration.key, toleration.operator, toleration.value, toleration.effect) == (
        "nvidia.com/gpu", "Equal", "present", "NoSchedule")


def test_pool_labels_are_configurable_and_yaml_loads_back(tmp_path):
    from kfp import components

    out, _, platform_doc = _compile(
        tmp_path, "--node-selector-key", "eks.amazonaws.com/nodegroup", "--node-selector-value", "a100", "--gpus", "2")
    k8s = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    assert k8s["nodeSelector"]["labels"] == {"eks.amazonaws.com/nodegroup": "a100"}
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "tosguard"
    assert {"source", "train", "deploy"} <= set(loaded.component_spec.inputs)
    # The GPU count is a run parameter (default from --gpus) that sizes the train pod's request.
    assert loaded.component_spec.inputs["gpus"].default == 2


def _tasks(spec_doc):
    """Every task of the compiled graph, nested condition branches included."""
    found = {}
    for component in [spec_doc["root"]] + list(spec_doc["components"].values()):
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            found[name] = task
    return found


def _producer(task, parameter) -> str:
    """The task an input parameter comes from, also inside condition branches (where KFP
    passes it in as a `pipelinechannel--<task>-<output>` component input)."""
    source = task["inputs"]["parameters"][parameter]
    if "taskOutputParameter" in source:
        return source["taskOutputParameter"]["producerTask"] + "/" + source["taskOutputParameter"]["outputParameterKey"]
    channel = source["componentInputParameter"]
    assert channel.startswith("pipelinechannel--"), channel
    return channel[len("pipelinechannel--"):]


def test_every_task_is_named_resourced_credentialed_and_cached_safely(tmp_path):
    _, spec_doc, platform_doc = _compile(tmp_path)
    tasks = _tasks(spec_doc)
    steps = {"open-run", "download-data", "tokenize-data", "train-model", "evaluate-model", "deploy-kserve",
             "deploy-local"}
    assert steps <= set(tasks)
    for name in steps:
        assert tasks[name]["taskInfo"]["name"][0].isupper(), f"{name} has a display name"
    # Download is never cached; the steps after it take the data hash as an input. Evaluate
    # (the gate reads the current champion) is never cached either.
    assert tasks["download-data"]["cachingOptions"] == {} and tasks["evaluate-model"]["cachingOptions"] == {}
    for name in ("tokenize-data", "train-model", "train-with-trainjob", "evaluate-model"):
        assert _producer(tasks[name], "data_hash") in ("download-data/Output", "download-data-Output"), name
    for name in ("tokenize-data", "train-model", "train-with-trainjob"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True
    # Deploy sits under the gate: the evaluate step's decision, as a dsl.If condition.
    conditions = [t.get("triggerPolicy", {}).get("condition", "") for t in tasks.values()]
    assert any("gate_passed" in c and "evaluate-model" in c for c in conditions), conditions
    # Steps that reach S3, MLflow or the Kubernetes API retry with backoff.
    for name in ("open-run", "download-data", "deploy-kserve"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-open-run", "exec-download-data", "exec-train-model", "exec-evaluate-model", "exec-deploy-kserve"):
        secrets = {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in executors[name]["secretAsEnv"]}
        assert secrets["tosguard-s3"] == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"}
        assert "MLFLOW_TRACKING_URI" in secrets["tosguard-mlflow"]
    resources = {k: v["container"].get("resources", {}) for k, v in spec_doc["deploymentSpec"]["executors"].items()}
    for name in ("exec-open-run", "exec-download-data", "exec-tokenize-data", "exec-evaluate-model"):
        assert resources[name]["cpuLimit"] and resources[name]["memoryLimit"], name


def test_no_cache_compiles_a_fresh_run(tmp_path):
    _, spec_doc, _ = _compile(tmp_path, "--no-cache")
    # A fresh run also retrains when the store already holds a model for the same inputs.
    assert spec_doc["root"]["inputDefinitions"]["parameters"]["reuse_stored_model"]["defaultValue"] is False
    tasks = _tasks(spec_doc)
    assert all(task.get("cachingOptions", {}).get("enableCache") is not True for task in tasks.values()
               if "componentRef" in task and not task["componentRef"]["name"].startswith("comp-condition"))


def test_evaluate_emits_ui_artifacts(tmp_path):
    _, spec_doc, _ = _compile(tmp_path)
    outputs = spec_doc["components"]["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    kinds = {name: o["artifactType"]["schemaTitle"] for name, o in outputs.items()}
    assert kinds["metrics"] == "system.Metrics"
    assert kinds["classification"] == "system.ClassificationMetrics"
    assert kinds["report"] == "system.Markdown"
    # The HTML report (training curves, a 2x2 confusion per category) renders on the run page.
    assert kinds["report_html"] == "system.HTML"
    evaluate_task = _tasks(spec_doc)["evaluate-model"]
    assert evaluate_task["componentRef"]["name"] == "comp-evaluate-model"
    command = " ".join(spec_doc["deploymentSpec"]["executors"]["exec-evaluate-model"]["container"]["command"])
    assert "report_html.path" in command
    assert spec_doc["components"]["comp-train-model"]["outputDefinitions"]["artifacts"]["curves"]["artifactType"][
        "schemaTitle"] == "system.Metrics"


def test_training_settings_are_one_block_whose_defaults_cannot_drift(tmp_path):
    """The pipeline's `train` parameter, the CLI's run defaults and the presets are one
    definition: the compiled default is the preset, `tosguard run` with no flags builds the
    same block, and the settings appear nowhere else among the pipeline's parameters."""
    from dataclasses import fields

    from tosguard.components.config import PRESETS, TrainConfig
    from tosguard.pipelines.cli import build_parser, run_config
    from tosguard.pipelines.pipeline import tosguard_pipeline

    inputs = tosguard_pipeline.component_spec.inputs
    assert not {f.name for f in fields(TrainConfig)} & set(inputs), "training settings must live in `train` only"
    for name in PRESETS:
        _, spec_doc, _ = _compile(tmp_path, "--preset", name)
        compiled = spec_doc["root"]["inputDefinitions"]["parameters"]["train"]
        assert compiled["parameterType"] == "STRUCT"
        # As KFP hands it over (JSON numbers): the validated block equals the preset.
        assert TrainConfig.from_dict(compiled["defaultValue"]) == PRESETS[name]
        assert run_config(build_parser().parse_args(["run", "--preset", name])) == PRESETS[name]
    assert TrainConfig.from_dict(inputs["train"].default) == PRESETS["default"]
    # Flags and --param map onto the same block; flags win.
    args = build_parser().parse_args(["run", "--preset", "quick", "--param", "lora_r=8", "--param", "seed=3",
                                      "--seed", "5"])
    assert run_config(args) == TrainConfig.from_dict({"preset": "quick", "lora_r": 8, "seed": 5})


def test_the_settings_block_is_checked_once_with_clear_errors():
    from tosguard.components.config import PRESETS, TrainConfig

    # KFP may hand integers over as JSON floats; they are taken back exactly, never rounded.
    as_json = {k: float(v) if type(v) is int else v for k, v in PRESETS["default"].to_dict().items()}
    assert TrainConfig.from_dict(as_json) == PRESETS["default"]
    for bad, message in [({"epochs": 2.5}, "epochs: expected int"), ({"epochs": True}, "epochs: expected int"),
                         ({"learning_rate": "fast"}, "learning_rate: expected float"),
                         ({"epoch": 3}, "unknown training setting"), ({"preset": "huge"}, "unknown preset"),
                         ({"method": "dora"}, "method must be one of"), ({"max_length": 4}, "max_length must be")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict(bad)


def test_no_run_identity_comes_from_kfps_cache(tmp_path):
    """KFP v2 caches a task by its inputs and component spec, and a recurring run repeats
    its inputs: the tasks whose outputs identify a run (the MLflow run, the registered
    version, the endpoint) must never be cached, and every other task must take the fresh
    MLflow run id as an input, so a cache hit can never hand one run another run's id."""
    _, spec_doc, _ = _compile(tmp_path)
    tasks = _tasks(spec_doc)
    identifying = {"open-run", "evaluate-model", "deploy-kserve", "deploy-local"}
    for name in identifying:
        assert tasks[name].get("cachingOptions", {}).get("enableCache") is not True, name
    for name, task in tasks.items():
        if name in identifying or name == "open-run" or name.startswith("condition"):
            continue
        assert _producer(task, "mlflow_run_id") in ("open-run/mlflow_run_id", "open-run-mlflow_run_id"), name
    # open-run tags the MLflow run with the KFP run's id and name (filled in by KFP).
    params = tasks["open-run"]["inputs"]["parameters"]
    assert params["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["kfp_run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"


def test_every_pipeline_pod_runs_restricted_and_labelled(tmp_path):
    """Pod Security "restricted" for every task (the KFP backend adds no privilege
    escalation, dropped capabilities and seccomp to what the spec sets), and the label the
    MLflow server's NetworkPolicy admits."""
    _, spec_doc, platform_doc = _compile(tmp_path)
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec_doc["deploymentSpec"]["executors"])
    for name, config in executors.items():
        assert config["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, name
        assert config["podMetadata"]["labels"]["tosguard.io/role"] == "pipeline", name


def test_training_across_nodes_is_a_branch_that_hands_the_same_outputs_on(tmp_path):
    """trainer=trainjob runs the Kubeflow Trainer task (no GPU of its own: the TrainJob's
    nodes have them), trainer=pod the GPU task; evaluate takes whichever ran (dsl.OneOf)."""
    _, spec_doc, platform_doc = _compile(tmp_path)
    params = spec_doc["root"]["inputDefinitions"]["parameters"]
    assert params["trainer"]["defaultValue"] == "pod" and params["nodes"]["defaultValue"] == 1
    tasks = _tasks(spec_doc)
    conditions = {t.get("triggerPolicy", {}).get("condition", "") for t in tasks.values()}
    assert any("trainjob" in c for c in conditions), conditions
    executors = spec_doc["deploymentSpec"]["executors"]
    assert "accelerator" not in executors["exec-train-with-trainjob"]["container"].get("resources", {})
    assert set(tasks["train-with-trainjob"]["inputs"]["parameters"]) >= {"nodes", "gpus", "trainer_image", "store"}
    evaluate = tasks["evaluate-model"]["inputs"]
    assert "model" in evaluate["artifacts"] and "model_uri" in evaluate["parameters"]


def test_every_entry_point_gates_with_the_same_tolerance(tmp_path):
    """The cluster pipeline, `tosguard run` and the gate's own arithmetic share one tolerance:
    a retrain within it of the champion deploys, one further below does not."""
    import inspect

    from tosguard.components.config import GATE_TOLERANCE
    from tosguard.components.evaluate import decide
    from tosguard.pipelines.local_run import run_pipeline

    _, spec_doc, _ = _compile(tmp_path)
    assert spec_doc["root"]["inputDefinitions"]["parameters"]["gate_tolerance"]["defaultValue"] == GATE_TOLERANCE
    assert inspect.signature(run_pipeline).parameters["gate_tolerance"].default == GATE_TOLERANCE
    champion = {"version": "3", "tags": {"test_macro_f1": "84.4"}}
    near = decide(84.4 - GATE_TOLERANCE + 0.1, 75.0, GATE_TOLERANCE, champion)
    far = decide(84.4 - GATE_TOLERANCE - 0.1, 75.0, GATE_TOLERANCE, champion)
    assert near["passed"] and not far["passed"] and "champion" in far["reason"]
    # Two sd of the default preset's 5-seed spread (0.9), not of the first 3 seeds' (0.5).
    assert GATE_TOLERANCE >= 1.8


@pytest.mark.parametrize("flag, value", [("--gate-tolerance", "nan"), ("--gate-tolerance", "-1"),
                                         ("--gate-tolerance", "inf"), ("--gate-floor", "nan"),
                                         ("--gate-floor", "101")])
def test_run_refuses_a_gate_it_could_never_apply_before_training(flag, value, tmp_path, capsys):
    """A NaN tolerance used to train for ten minutes and then refuse to deploy ("tolerance nan");
    now argparse stops it at once, and the gate itself refuses NaN wherever it comes from."""
    from tosguard.components.evaluate import decide

    with pytest.raises(SystemExit) as stop:
        main(["run", flag, value, "--output", str(tmp_path / "out")])
    assert stop.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="gate floor and tolerance"):
        decide(80.0, 75.0, float("nan"), None)


@pytest.mark.parametrize("param", ["gate_tolerance=nan", "gate_tolerance=inf", "gate_tolerance=-5",
                                   "gate_floor=-1", "gate_floor=1e9"])
def test_every_entry_point_refuses_a_bad_gate_before_training(param, tmp_path):
    """`submit`/`schedule` (parse_params), a direct run_pipeline call and the gate itself all
    refuse what `tosguard run`'s argparse refuses; none gets as far as training."""
    from tosguard.components.config import TrainConfig
    from tosguard.components.evaluate import decide
    from tosguard.pipelines.local_run import run_pipeline
    from tosguard.pipelines.submit import parse_params

    key, value = param.split("=")
    with pytest.raises(ValueError, match="gate floor and tolerance"):
        parse_params([param], "default")
    gate = {"gate_floor": 75.0, "gate_tolerance": 2.0, key: float(value)}
    with pytest.raises(ValueError, match="gate floor and tolerance"):
        run_pipeline(TrainConfig(), "bundled", tmp_path / "out", **gate)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="gate floor and tolerance"):
        decide(80.0, gate["gate_floor"], gate["gate_tolerance"], None)
