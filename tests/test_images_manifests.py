"""images/ lint clean with hadolint; manifests/ valid: built-in kinds with
kubernetes-validate --strict, KServe kinds against what the deploy step builds with the SDK."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tosguard.components.deploy import build_inference_service, build_serving_runtime

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BASE = ROOT / "manifests" / "base"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "images").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_lint_clean(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "USER " in text or "FROM ${BASE}" in text, "images run as a non-root user"


def test_builtin_manifests_pass_strict_validation():
    builtin = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "mlflow.yaml", "s3-secret.template.yaml",
               "mlflow-secret.template.yaml", "predictor-token.template.yaml"]
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *[str(BASE / f) for f in builtin]],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # One line per resource; every file holds at least one.
    out = result.stdout + result.stderr
    assert all(f"{f} passed" in out for f in builtin) and "failed" not in out


def test_secret_templates_hold_no_real_values():
    s3 = yaml.safe_load((BASE / "s3-secret.template.yaml").read_text())
    assert set(s3["stringData"].values()) == {"REPLACE_ME"}
    mlflow = yaml.safe_load((BASE / "mlflow-secret.template.yaml").read_text())
    assert {mlflow["stringData"]["MLFLOW_TRACKING_USERNAME"], mlflow["stringData"]["MLFLOW_TRACKING_PASSWORD"]} == {
        "REPLACE_ME"}
    token = yaml.safe_load((BASE / "predictor-token.template.yaml").read_text())
    assert token["stringData"] == {"token": "REPLACE_ME"}


def test_deployer_may_only_manage_kserve_objects_in_its_namespace():
    role, binding = [d for d in yaml.safe_load_all((BASE / "rbac.yaml").read_text()) if d["kind"] != "ServiceAccount"]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "tosguard"  # not a ClusterRole
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert set(rule["resources"]) == {"inferenceservices", "servingruntimes"}
    assert "delete" not in rule["verbs"] and "*" not in rule["verbs"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_kserve_manifests_match_the_sdk_objects_the_deploy_step_builds():
    isvc = yaml.safe_load((BASE / "inferenceservice.yaml").read_text())
    model = isvc["spec"]["predictor"]["model"]
    built = build_inference_service(
        isvc["metadata"]["name"], isvc["metadata"]["namespace"], model["storageUri"], model["runtime"],
        isvc["spec"]["predictor"]["serviceAccountName"],
    )
    assert built == isvc
    runtime = yaml.safe_load((BASE / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    built = build_serving_runtime(runtime["metadata"]["name"], runtime["metadata"]["namespace"], container["image"])
    assert built == runtime


def test_the_predictor_runs_restricted_cluster_local_autoscaled_and_probed():
    """Pod Security "restricted" for the predictor container; cluster-local unless exposed;
    Knative autoscaling from the deploy parameters; the bearer token from a Secret."""
    runtime = build_serving_runtime("r", "ns", "img:1", auth_secret="tosguard-predictor-token")
    (container,) = runtime["spec"]["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {
        "startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}
    token = next(e for e in container["env"] if e["name"] == "TOSGUARD_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "tosguard-predictor-token", "key": "token"}
    assert not any(e["name"] == "TOSGUARD_AUTH_TOKEN"
                   for e in build_serving_runtime("r", "ns", "img:1")["spec"]["containers"][0]["env"])

    local = build_inference_service("s", "ns", "s3://b/m", "r", min_replicas=2, max_replicas=6, concurrency_target=3)
    assert local["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"
    predictor = local["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"],
            predictor["containerConcurrency"]) == (2, 6, "concurrency", 3, 6)
    exposed = build_inference_service("s", "ns", "s3://b/m", "r", expose=True)
    assert "networking.kserve.io/visibility" not in exposed["metadata"]["labels"]
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        build_inference_service("s", "ns", "s3://b/m", "r", min_replicas=4, max_replicas=2)


def test_kustomizations_list_existing_files():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (BASE / resource).is_file(), resource
    for overlay in (ROOT / "manifests" / "overlays").iterdir():
        k = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert k["resources"] == ["../../base"], overlay.name
        assert {i["name"] for i in k["images"]} <= {"ghcr.io/tosguard/tosguard-serving", "ghcr.io/tosguard/tosguard-base"}
