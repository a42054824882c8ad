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


def _copy_image_inputs(dest: Path) -> None:
    import shutil

    from tosguard.pipelines.images import IMAGE_INPUTS

    for name in IMAGE_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_the_image_tag_follows_the_code_and_nothing_else(tmp_path):
    """Same files, same tag; a cache, a .pyc or the README do not move it; one changed byte in
    a module, the vendored data or a Dockerfile does."""
    from tosguard.pipelines.images import code_tag

    _copy_image_inputs(tmp_path)
    tag = code_tag(tmp_path)
    assert tag == code_tag(ROOT) and tag.startswith("0.1.0-") and len(tag) == len("0.1.0-") + 12
    (tmp_path / "components" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "components" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    (tmp_path / "README.md").write_text("docs change")
    for leftover in ("components/.metrics.py.swp", "components/metrics.py~", "pipelines/.mypy_cache/x.json",
                     "tosguard/tosguard.egg-info/PKG-INFO", "components/metrics.py.orig"):
        (tmp_path / leftover).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / leftover).write_text("editor or tool state")
    assert code_tag(tmp_path) == tag
    for changed in ("components/train/loop.py", "images/base.Dockerfile", "constraints.txt", ".dockerignore",
                    next(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "components" / "data").rglob("*.jsonl"))):
        path = tmp_path / changed
        original = path.read_bytes()
        path.write_bytes(original + b" ")
        assert code_tag(tmp_path) != tag, changed
        path.write_bytes(original)
    assert code_tag(tmp_path) == tag


def _env_without_image_settings() -> dict:
    """This process's environment less TOSGUARD_IMAGE_*: what a fresh shell would compile with."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TOSGUARD_IMAGE_")}


def _compiled_images(tmp_path, env_extra: dict) -> tuple[set, str, str, str]:
    """Compile in a fresh process with these environment settings: every executor's image,
    the train step's trainer_image argument and the serving_image parameter's default."""
    env = _env_without_image_settings()
    out = tmp_path / f"pipeline-{len(env_extra)}.yaml"
    result = subprocess.run([str(BIN / "tosguard"), "compile", "--output", str(out)], env={**env, **env_extra},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    executors = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    params = spec["root"]["inputDefinitions"]["parameters"]
    found = [t for t in _walk(spec) if isinstance(t, dict) and "trainer_image" in t.get("inputs", {}).get("parameters", {})]
    trainer = found[0]["inputs"]["parameters"]["trainer_image"]["runtimeValue"]["constant"]
    return executors, trainer, params["serving_image"]["defaultValue"], result.stdout


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_the_compiled_pipeline_and_the_rendered_manifests_name_the_same_images(tmp_path):
    """`tosguard images --manifests-out` and `tosguard compile` agree on every image: the
    executors (KFP's cache key holds each task's image), the TrainJob's trainer, the default
    serving image, and the manifests' ServingRuntime, MLflow, TrainingRuntime and allow-list;
    TOSGUARD_IMAGE_TAG still overrides the tag."""
    from tosguard.pipelines.images import code_tag

    tag, registry = code_tag(ROOT), "registry.example:5000/acme"
    executors, trainer, serving, stdout = _compiled_images(tmp_path, {"TOSGUARD_IMAGE_REGISTRY": f" {registry}/ "})
    assert executors == {f"{registry}/tosguard-base:{tag}", f"{registry}/tosguard-trainer:{tag}"}
    assert trainer == f"{registry}/tosguard-trainer:{tag}" and serving == f"{registry}/tosguard-serving:{tag}"
    assert serving in stdout and "tosguard images" in stdout
    pinned = _compiled_images(tmp_path, {"TOSGUARD_IMAGE_REGISTRY": registry, "TOSGUARD_IMAGE_TAG": "v9"})
    assert pinned[0] == {f"{registry}/tosguard-base:v9", f"{registry}/tosguard-trainer:v9"}

    out = tmp_path / "deploy"
    result = subprocess.run([str(BIN / "tosguard"), "images", "--registry", registry, "--manifests-out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"-t {serving} ." in result.stdout and f"--build-arg CODE_VERSION={tag}" in result.stdout
    rendered = "\n".join(p.read_text() for p in out.rglob("*.yaml"))
    assert "ghcr.io/tosguard" not in rendered
    (runtime,) = yaml.safe_load_all((out / "base" / "servingruntime.yaml").read_text())
    (allowlist,) = yaml.safe_load_all((out / "base" / "deploy-allowlist.yaml").read_text())
    assert runtime["spec"]["containers"][0]["image"] == serving
    assert allowlist["data"]["serving_images"].split() == [serving]
    assert f"image: {registry}/tosguard-base:{tag}" in (out / "base" / "mlflow.yaml").read_text()
    assert f"image: {trainer}" in (out / "trainer" / "trainingruntime.yaml").read_text()
    for overlay in ("gke", "eks"):  # a rename there would move the workloads off the allow-list
        k = yaml.safe_load((out / "overlays" / overlay / "kustomization.yaml").read_text())
        assert k["resources"] == ["../../base"] and "images" not in k
    strict = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(out / "base" / "mlflow.yaml"),
                             str(out / "base" / "deploy-allowlist.yaml")], capture_output=True, text=True)
    assert strict.returncode == 0, strict.stdout + strict.stderr
    assert "node-selector" in (out / "overlays" / "gke" / "kustomization.yaml").read_text()  # comments kept
    only = subprocess.run([str(BIN / "tosguard"), "images", "--tag-only"], capture_output=True, text=True, timeout=120)
    assert only.stdout.strip() == tag


def test_rendering_again_keeps_earlier_serving_images_and_refuses_foreign_folders(tmp_path):
    """After a code change the same folder is rendered over: the allow-list then holds the new
    serving image first and the earlier ones after it (a schedule compiled before still deploys).
    A folder it did not render is refused with nothing printed or written."""
    env = _env_without_image_settings()
    out = tmp_path / "deploy"

    def render(tag, target=out, registry="ghcr.io/acme/"):
        return subprocess.run([str(BIN / "tosguard"), "images", "--registry", registry, "--manifests-out", str(target)],
                              env={**env, "TOSGUARD_IMAGE_TAG": tag}, capture_output=True, text=True, timeout=120)

    assert render("v1").returncode == 0
    second = render("v2")
    assert second.returncode == 0, second.stderr
    assert "TOSGUARD_IMAGE_TAG" in second.stdout and "-t ghcr.io/acme/tosguard-serving:v2 ." in second.stdout
    (allowlist,) = yaml.safe_load_all((out / "base" / "deploy-allowlist.yaml").read_text())
    assert allowlist["data"]["serving_images"].split() == ["ghcr.io/acme/tosguard-serving:v2",
                                                           "ghcr.io/acme/tosguard-serving:v1"]
    assert allowlist["data"]["names"].split() == ["tosguard", "tosguard-runtime"]  # the rest untouched
    assert "One entry per line" in (out / "base" / "deploy-allowlist.yaml").read_text()
    assert "ghcr.io/acme/tosguard-serving:v2" in (out / "base" / "servingruntime.yaml").read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = render("v3", target=foreign)
    assert refused.returncode == 2 and "choose a new one" in refused.stderr and not refused.stdout
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("registry", ["https://ghcr.io/acme", "ghcr.io//acme", "ghcr.io/Acme", "ghcr.io/acme:5000",
                                      "ghcr io/acme", ""])
def test_a_registry_that_is_not_one_is_refused_by_images_and_compile(tmp_path, registry):
    env = _env_without_image_settings()
    images = subprocess.run([str(BIN / "tosguard"), "images", "--registry", registry], env=env, capture_output=True,
                            text=True, timeout=120)
    assert images.returncode == 2 and "host[:port]" in images.stderr and not images.stdout
    if registry:  # an empty TOSGUARD_IMAGE_REGISTRY means the default
        compiled = subprocess.run([str(BIN / "tosguard"), "compile", "--output", str(tmp_path / "p.yaml")],
                                  env={**env, "TOSGUARD_IMAGE_REGISTRY": registry}, capture_output=True, text=True,
                                  timeout=300)
        assert compiled.returncode == 2 and "host[:port]" in compiled.stderr and not (tmp_path / "p.yaml").exists()


def test_registry_spelling_is_normalized_the_same_everywhere():
    from tosguard.pipelines.images import normalize_registry

    assert normalize_registry(" ghcr.io/acme/ ") == "ghcr.io/acme"
    assert normalize_registry("localhost:5000/acme/ml") == "localhost:5000/acme/ml"
    assert normalize_registry("REGION-docker.pkg.dev/project/repo") == "REGION-docker.pkg.dev/project/repo"
