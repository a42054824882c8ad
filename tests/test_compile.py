"""The compiled pipeline for a cluster: GPU, node selector, toleration; loads back with kfp."""
import yaml
from google.protobuf import json_format

from pipelines.cli import main


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
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
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
    assert {"source", "method", "epochs", "deploy"} <= set(loaded.component_spec.inputs)
