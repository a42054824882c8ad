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
               "mlflow-secret.template.yaml", "predictor-token.template.yaml", "deploy-allowlist.yaml",
               "deploy-admission.yaml", "networkpolicy.yaml"]
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
    assert {mlflow["stringData"]["MLFLOW_TRACKING_USERNAME"], mlflow["stringData"]["MLFLOW_TRACKING_PASSWORD"],
            mlflow["stringData"]["MLFLOW_FLASK_SERVER_SECRET_KEY"]} == {"REPLACE_ME"}
    token = yaml.safe_load((BASE / "predictor-token.template.yaml").read_text())
    assert token["stringData"] == {"token": "REPLACE_ME"}


def _docs(name):
    return list(yaml.safe_load_all((BASE / name).read_text()))


def test_deployer_may_only_manage_its_two_kserve_objects_in_its_namespace():
    role, binding = [d for d in _docs("rbac.yaml") if d["kind"] != "ServiceAccount"]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "tosguard"  # not a ClusterRole
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and not {"delete", "deletecollection", "list", "watch"} & set(rule["verbs"])
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        if set(rule["verbs"]) - {"create"}:  # every verb RBAC can scope by name is scoped by name
            assert rule.get("resourceNames"), rule
    kserve = [r for r in role["rules"] if r["apiGroups"] == ["serving.kserve.io"]]
    assert {res for r in kserve for res in r["resources"]} == {"inferenceservices", "servingruntimes"}
    named = next(r for r in kserve if "patch" in r["verbs"])
    assert set(named["resourceNames"]) == {"tosguard", "tosguard-runtime"}
    (config_map,) = [r for r in role["rules"] if r["apiGroups"] == [""]]
    assert config_map == {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tosguard-deploy-allowlist"],
                          "verbs": ["get"]}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_create_is_held_to_the_allowlist_at_admission():
    """RBAC cannot scope `create` by name: the admission policy holds names, images and
    service accounts to the allow-list ConfigMap, whose entries match what deploy builds."""
    (allowlist,) = _docs("deploy-allowlist.yaml")
    policy, binding = _docs("deploy-admission.yaml")
    assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert policy["spec"]["failurePolicy"] == "Fail" and binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["paramRef"]["name"] == allowlist["metadata"]["name"]
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert {r for rule in rules for r in rule["resources"]} == {"inferenceservices", "servingruntimes"}
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    for key in ("names", "serving_images", "service_accounts"):
        assert f"params.data.{key}" in expressions and allowlist["data"][key].strip()
    runtime = yaml.safe_load((BASE / "servingruntime.yaml").read_text())
    isvc = yaml.safe_load((BASE / "inferenceservice.yaml").read_text())
    assert runtime["spec"]["containers"][0]["image"] in allowlist["data"]["serving_images"].split()
    assert isvc["spec"]["predictor"]["serviceAccountName"] in allowlist["data"]["service_accounts"].split()
    assert {runtime["metadata"]["name"], isvc["metadata"]["name"]} <= set(allowlist["data"]["names"].split())


def test_namespace_is_restricted_and_only_the_gateway_and_pipelines_get_in():
    (namespace,) = _docs("namespace.yaml")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    policies = {p["metadata"]["name"]: p for p in _docs("networkpolicy.yaml")}
    deny = policies["default-deny-ingress"]
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    predictor = policies["predictor-from-gateway"]["spec"]
    sources = {f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in predictor["ingress"][0]["from"]}
    assert sources == {"istio-system", "knative-serving"}
    mlflow = policies["mlflow-from-pipelines"]["spec"]
    (peer,) = mlflow["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"] == {"tosguard.io/role": "pipeline"} and "namespaceSelector" in peer


def test_mlflow_runs_restricted_with_authentication_and_allowed_hosts():
    deployment = next(d for d in _docs("mlflow.yaml") if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "Recreate"}  # sqlite on a ReadWriteOnce volume
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    command = " ".join(container["args"])
    assert "--app-name basic-auth" in command and "--allowed-hosts=" in command
    assert "mlflow.tosguard.svc.cluster.local" in command.split("--allowed-hosts=")[1]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tosguard-mlflow"
    secret = yaml.safe_load((BASE / "mlflow-secret.template.yaml").read_text())
    assert secret["stringData"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow.tosguard.svc.cluster.local")


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
    assert "env" not in predictor["model"]  # the server's own default profile
    triage = build_inference_service("s", "ns", "s3://b/m", "r", profile="triage")["spec"]["predictor"]["model"]
    assert triage["env"] == [{"name": "TOSGUARD_PROFILE", "value": "triage"}]
    with pytest.raises(ValueError, match="profile must be one of default, triage"):
        build_inference_service("s", "ns", "s3://b/m", "r", profile="recall")
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
