"""Step 5, deploy: serve the model.

Embedded: a KServe ModelServer on 127.0.0.1 as a managed background process, with its
state (pid, URL, model, log) kept under the tosguard home so that ``tosguard serve
--stop`` and ``tosguard predict`` find it. Cluster: a ServingRuntime and an
InferenceService created or patched through the Kubernetes API, then waited on.
Each target has one step entry point (`run_local_step`, `run_kserve_step`) that deploys
and records the endpoint in the pipeline's MLflow run. No torch or kserve import at
module level: `tosguard serve --stop` and `--status` stay light.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from tosguard.components.config import CARD_FILE, NAME, home

log = logging.getLogger(__name__)
DEFAULT_PORT = 8080
SERVER_MODULE = "tosguard.components.serving"


def server_dir() -> Path:
    return home() / "server"


def _state_path() -> Path:
    return server_dir() / "state.json"


def read_state() -> dict | None:
    """The managed server's record, or None when none runs. A record whose process is gone,
    or whose PID now names some other program (PIDs are reused after a reboot), is stale."""
    path = _state_path()
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        state["pid"] = pid = int(state["pid"])
        port = urlparse(str(state.get("url", ""))).port
    except (ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        log.warning("%s is unreadable (%s); treating it as no running server", path, exc)
        return None
    return state if pid > 0 and _alive(pid) and _is_server(pid, port) else None


def _is_server(pid: int, port: int | None = None) -> bool:
    """Whether pid runs tosguard's server module (its command line names it), on `port` when
    given (a PID reused by another home's server is not this record's). Linux reads
    /proc/PID/cmdline; elsewhere `ps`. When neither can tell, False: an unverified process
    is never signalled (its record is dropped as stale)."""
    if Path("/proc/self").is_dir():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False  # gone since, or not ours to read
    else:  # macOS, BSD: the command line from ps (arguments split on spaces; paths with spaces still match)
        try:
            line = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        argv = line.split()
    if SERVER_MODULE.encode() not in argv:
        return False
    if port is not None and b"--http-port" in argv:
        at = argv.index(b"--http-port") + 1
        return at < len(argv) and argv[at] == str(port).encode()
    return True


def _write_state(state: dict) -> None:
    path = _state_path()
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, path)  # a reader never sees half a record


def _port_setting(port: int | None) -> int:
    """The port asked for (argument, else TOSGUARD_PORT, else 8080), checked."""
    if port is None:
        raw = os.environ.get("TOSGUARD_PORT", str(DEFAULT_PORT))
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"TOSGUARD_PORT must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0 (any free port) to 65535, got {port}")
    return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_port(preferred: int) -> int:
    """preferred if it is free, else (and for 0) a free one."""
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_local_server(timeout: float = 20.0) -> bool:
    """Stop the managed server, if one runs. Returns whether one was stopped."""
    state = read_state()
    if not state:
        _state_path().unlink(missing_ok=True)  # stale or unreadable
        return False
    pid = state["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        _state_path().unlink(missing_ok=True)
        return False
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it went on its own
    _state_path().unlink(missing_ok=True)  # only once it is gone (a PermissionError above keeps the record)
    log.info("stopped the local server (pid %d)", pid)
    return True


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_local_server(model_dir: str, port: int | None = None, timeout: float = 180.0,
                       profile: str | None = None) -> dict:
    """(Re)start the managed ModelServer on 127.0.0.1 over model_dir; wait until ready.
    profile: default or triage decision thresholds (None: the server's default)."""
    from tosguard.components.config import check_profile
    from tosguard.components.storage import fetch_folder

    if profile is not None:
        check_profile(profile)  # before the running server is stopped
    port = _port_setting(port)  # so is the port
    model_dir = str(fetch_folder(model_dir).resolve())
    if not (Path(model_dir) / CARD_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not an exported tosguard model folder")
    stop_local_server()
    server_dir().mkdir(parents=True, exist_ok=True)
    port = _pick_port(port)
    log_path = server_dir() / "server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--model-dir", model_dir,
             "--host", "127.0.0.1", "--http-port", str(port), *(["--profile", profile] if profile else [])],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the pipeline step that started it
        )
    url = f"http://127.0.0.1:{port}"
    state = {"pid": process.pid, "url": url, "model": NAME, "model_dir": model_dir,
             "log": str(log_path), "started": time.time(),
             "profile": profile or os.environ.get("TOSGUARD_PROFILE") or "default"}
    deadline = time.time() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the local model server exited with code {process.returncode} while starting; "
                    f"last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                # The readiness route is open (no bearer token), so a server started with
                # TOSGUARD_AUTH_TOKEN is seen ready too.
                ready = requests.get(f"{url}/v2/health/ready", timeout=2)
                if ready.status_code == 200 and ready.json().get("ready"):
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:  # the handler below kills it
                raise TimeoutError(f"the local model server was not ready after {timeout:.0f} s; see {log_path}")
            time.sleep(0.5)
    except BaseException:  # Ctrl-C, timeout, a failed start: leave no server without a record
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        raise
    _write_state(state)
    log.info("serving %s at %s (pid %d, log %s)", model_dir, url, process.pid, log_path)
    return state


# -- Cluster: a KServe InferenceService created or patched through the Kubernetes API --------

KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RUNTIME_VERSION, RUNTIME_PLURAL = "v1alpha1", "servingruntimes"
MODEL_FORMAT = NAME


PORT = 8080
TOKEN_KEY = "token"  # the key of the bearer-token Secret (auth_secret)


def _restricted_security_context():
    """Pod Security "restricted": non-root, no privilege escalation, no capabilities,
    read-only root filesystem, the runtime's default seccomp profile."""
    from kubernetes import client as k8s

    return k8s.V1SecurityContext(
        run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False, read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def build_serving_runtime(name: str, namespace: str, image: str, auth_secret: str = "") -> dict:
    """The ServingRuntime that runs tosguard's serving image for models of format 'tosguard'.

    auth_secret: a Secret whose key `token` clients must send as a bearer token ("" for none).
    """
    from kubernetes import client as k8s
    from kserve import V1alpha1ServingRuntime, V1alpha1ServingRuntimeSpec, V1alpha1SupportedModelFormat

    def probe(path: str, period: int, failures: int):
        return k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path=path, port=PORT), period_seconds=period,
                           timeout_seconds=2, failure_threshold=failures)

    env = [k8s.V1EnvVar(name="TOSGUARD_HOME", value="/tmp/tosguard"), k8s.V1EnvVar(name="HF_HOME", value="/tmp/hf")]
    if auth_secret:
        env.append(k8s.V1EnvVar(name="TOSGUARD_AUTH_TOKEN", value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=auth_secret, key=TOKEN_KEY))))
    container = k8s.V1Container(
        name="kserve-container",
        image=image,
        args=["--model-dir", "/mnt/models", "--host", "0.0.0.0", "--http-port", str(PORT)],
        ports=[k8s.V1ContainerPort(container_port=PORT, protocol="TCP")],
        env=env,
        # Loading takes a while: the startup probe allows 5 minutes before liveness counts.
        startup_probe=probe("/v2/health/live", 5, 60),
        liveness_probe=probe("/v2/health/live", 10, 3),
        readiness_probe=probe("/v2/health/ready", 5, 2),
        security_context=_restricted_security_context(),
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],  # the root filesystem is read-only
    )
    runtime = V1alpha1ServingRuntime(
        api_version=f"{KSERVE_GROUP}/{RUNTIME_VERSION}",
        kind="ServingRuntime",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": NAME}),
        spec=V1alpha1ServingRuntimeSpec(
            supported_model_formats=[V1alpha1SupportedModelFormat(name=MODEL_FORMAT, version="1", auto_select=True)],
            protocol_versions=["v1", "v2"],
            containers=[container],
            volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi"))],
        ),
    )
    return k8s.ApiClient().sanitize_for_serialization(runtime)


def build_inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    runtime: str,
    service_account: str = f"{NAME}-predictor",
    cpu: str = "1",
    memory: str = "2Gi",
    cpu_limit: str = "2",
    memory_limit: str = "4Gi",
    min_replicas: int = 1,
    max_replicas: int = 3,
    concurrency_target: int = 4,
    expose: bool = False,
    profile: str = "",
) -> dict:
    """The InferenceService, built with the kserve SDK models, as a JSON-ready dict.

    KServe's storage initializer fetches ``storageUri`` (credentials from the service
    account's secret) into /mnt/models, where the runtime's predictor loads it. Knative
    scales the predictor between min and max replicas on in-flight requests (target
    `concurrency_target` per replica; a replica takes at most twice that at once, the rest
    queue in Knative's activator). Cluster-local unless `expose`. `profile` picks the
    decision thresholds the predictor serves (default, or triage for high recall), as
    TOSGUARD_PROFILE in the model's env, which KServe merges into the runtime's container
    (a strategic merge patch: env entries by name); "" leaves the server's default.
    """
    from tosguard.components.config import check_profile

    from kubernetes import client as k8s
    from kserve import (
        V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1ModelFormat, V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )

    if not 0 <= min_replicas <= max_replicas or max_replicas < 1 or concurrency_target < 1:
        raise ValueError(f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1 and concurrency_target >= 1 "
                         f"(got {min_replicas}, {max_replicas}, {concurrency_target})")
    if profile:
        check_profile(profile)
    model = V1beta1ModelSpec(
        name="kserve-container",
        model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version="1"),
        runtime=runtime,
        storage_uri=storage_uri,
        env=[k8s.V1EnvVar(name="TOSGUARD_PROFILE", value=profile)] if profile else None,
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": cpu, "memory": memory}, limits={"cpu": cpu_limit, "memory": memory_limit}
        ),
    )
    labels = {"app.kubernetes.io/part-of": NAME}
    if not expose:
        labels["networking.kserve.io/visibility"] = "cluster-local"
    isvc = V1beta1InferenceService(
        api_version=f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        kind="InferenceService",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                service_account_name=service_account, model=model, min_replicas=min_replicas,
                max_replicas=max_replicas, scale_metric="concurrency", scale_target=concurrency_target,
                container_concurrency=2 * concurrency_target,
                security_context=k8s.V1PodSecurityContext(
                    run_as_non_root=True, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
            )
        ),
    )
    return k8s.ApiClient().sanitize_for_serialization(isvc)


def _is_ready(obj: dict) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True" for c in conditions)


def _revisions(obj: dict) -> tuple[str | None, str | None]:
    """(latest created, latest ready) revision of the predictor, as KServe reports them."""
    predictor = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    return predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")


def _serves_this_spec(obj: dict, before: dict | None, changed: bool) -> bool:
    """Ready for the spec just applied, not for an older one: the controller has observed
    the object's generation, the latest created revision is the one that is ready, and,
    when the spec changed, that revision is not the one that served before."""
    if not _is_ready(obj):
        return False
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        return False
    created, ready = _revisions(obj)
    if created is None and ready is None:  # a KServe without revision status (raw deployment)
        return generation is not None or not changed
    if created != ready:
        return False
    return not (changed and before is not None and created == _revisions(before)[0])


def _apply(api, version: str, plural: str, body: dict) -> tuple[str, dict | None]:
    """Create the object, or merge-patch it when it exists. Returns ('created' or
    'patched', the object as it was before)."""
    from kubernetes import client as k8s

    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    args = (KSERVE_GROUP, version, namespace, plural)
    try:
        before = api.get_namespaced_custom_object(*args, name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_custom_object(*args, body)
        return "created", None
    api.patch_namespaced_custom_object(*args, name, body)
    return "patched", before


def _spec_changes(before: dict | None, body: dict) -> bool:
    """Whether merging `body` changes any field of the existing object's spec."""
    if before is None:
        return True

    def differs(old, new) -> bool:
        if isinstance(new, dict):
            old = old if isinstance(old, dict) else {}
            return any(differs(old.get(k), v) for k, v in new.items())
        return old != new

    return differs(before.get("spec"), body.get("spec"))


def deploy_inference_service(
    isvc: dict, runtime: dict | None = None, api_client=None, timeout: float = 600.0, poll_seconds: float = 5.0
) -> dict:
    """Apply the ServingRuntime (if given) and the InferenceService, idempotently; wait until
    the new spec serves (generation observed, its revision the latest ready one).

    Returns {"name", "namespace", "action": "created"|"patched", "url", "revision"}. Raises
    TimeoutError when it does not serve in time, with its last conditions in the message.
    """
    from kubernetes import client as k8s

    from tosguard.components.kube import api_client as kube_client

    api = k8s.CustomObjectsApi(api_client or kube_client())
    if runtime is not None:
        _apply(api, RUNTIME_VERSION, RUNTIME_PLURAL, runtime)
    action, before = _apply(api, KSERVE_VERSION, KSERVE_PLURAL, isvc)
    changed = _spec_changes(before, isvc)
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    log.info("InferenceService %s/%s %s; waiting for its new revision to be Ready (up to %.0f s)", namespace, name,
             action, timeout)
    deadline = time.time() + timeout
    while True:
        obj = api.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
        if _serves_this_spec(obj, before, changed):
            url = (obj.get("status") or {}).get("url", "")
            revision = _revisions(obj)[1]
            log.info("InferenceService %s/%s is Ready at %s (revision %s)", namespace, name, url, revision)
            return {"name": name, "namespace": namespace, "action": action, "url": url, "revision": revision}
        if time.time() > deadline:
            status = obj.get("status") or {}
            raise TimeoutError(
                f"InferenceService {namespace}/{name} not Ready with the new spec after {timeout:.0f} s; "
                f"revisions (created, ready): {_revisions(obj)}, observed generation "
                f"{status.get('observedGeneration')}; conditions: {status.get('conditions') or []}"
            )
        time.sleep(poll_seconds)


# -- the step ----------------------------------------------------------------------------------


def run_local_step(model_uri: str, model_version: str, mlflow_run_id: str, profile: str = "") -> str:
    """Embedded deploy: (re)start the local server over the model in the store; returns its URL."""
    from tosguard.components.tracking import pipeline_run

    started = time.time()
    state = start_local_server(model_uri, profile=profile or None)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": state["url"], "deployed_model_dir": state["model_dir"],
                         "deployed_version": model_version, "serving_profile": state["profile"]})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return state["url"]


ALLOWLIST = f"{NAME}-deploy-allowlist"  # the ConfigMap in manifests/base/deploy-allowlist.yaml


def check_allowlist(namespace: str, names: list[str], serving_image: str, service_account: str,
                    api_client=None) -> None:
    """Refuse, before anything is applied, a name, serving image or service account that
    the namespace's allow-list ConfigMap does not hold (they are run parameters: anyone who
    can start a run could otherwise choose any image and any identity for the predictor)."""
    from kubernetes import client as k8s

    try:
        config_map = k8s.CoreV1Api(api_client).read_namespaced_config_map(ALLOWLIST, namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            raise PermissionError(f"no ConfigMap {namespace}/{ALLOWLIST}: apply the manifests `tosguard images "
                                  "--manifests-out DIR` renders (DIR/base/deploy-allowlist.yaml) to say which serving "
                                  "images and service accounts may be deployed") from None
        raise
    data = config_map.data or {}

    def allowed(key: str) -> set[str]:
        return {line.strip() for line in (data.get(key) or "").splitlines() if line.strip()}

    refused = [f"{what} {value!r} (allowed: {sorted(allowed(key))})" for what, key, values in (
        ("name", "names", names), ("serving image", "serving_images", [serving_image]),
        ("service account", "service_accounts", [service_account])) for value in values if value not in allowed(key)]
    if refused:
        raise PermissionError(f"not in {namespace}/{ALLOWLIST}: " + "; ".join(refused))


def run_kserve_step(model_uri: str, model_version: str, mlflow_run_id: str, service_name: str, namespace: str,
                    serving_image: str, service_account: str, ready_timeout_s: int, min_replicas: int = 1,
                    max_replicas: int = 3, concurrency_target: int = 4, expose: bool = False,
                    auth_secret: str = "", profile: str = "") -> str:
    """Cluster deploy: create or patch the InferenceService over the model store URI; returns its URL."""
    from tosguard.components.tracking import pipeline_run

    if not model_uri.startswith(("s3://", "gs://", "pvc://", "https://")):
        raise ValueError(f"KServe cannot fetch {model_uri!r}: set the pipeline's store to s3://BUCKET/PREFIX")
    started = time.time()
    from tosguard.components.kube import api_client as kube_client

    api_client = kube_client()
    check_allowlist(namespace, [service_name, f"{service_name}-runtime"], serving_image, service_account, api_client)
    runtime = build_serving_runtime(f"{service_name}-runtime", namespace, serving_image, auth_secret)
    isvc = build_inference_service(service_name, namespace, model_uri, f"{service_name}-runtime", service_account,
                                   min_replicas=min_replicas, max_replicas=max_replicas,
                                   concurrency_target=concurrency_target, expose=expose, profile=profile)
    result = deploy_inference_service(isvc, runtime, api_client=api_client, timeout=ready_timeout_s)
    with pipeline_run(mlflow_run_id) as mlflow:
        mlflow.set_tags({"endpoint": result["url"], "inference_service": f"{namespace}/{service_name}",
                         "deployed_version": model_version, "serving_profile": profile or "default"})
        mlflow.log_metric("step_seconds.deploy", time.time() - started)
    return result["url"]
