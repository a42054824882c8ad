"""The cluster deploy: an InferenceService built with the kserve SDK, created or patched
through the Kubernetes API (a kmock fake API server on 127.0.0.1), waited on until Ready."""
import time

import pytest
from kubernetes import client as k8s

from tosguard.components.deploy import (
    KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION, RUNTIME_PLURAL, RUNTIME_VERSION, build_inference_service,
    build_serving_runtime, deploy_inference_service,
)

from tests.servers import emulated_cluster

NS, NAME = "tosguard", "tosguard"


def _body(uri="s3://bucket/models/tosguard/v1"):
    return build_inference_service(NAME, NS, uri, "tosguard-runtime", "tosguard-predictor")


def _runtime(image="registry.example/tosguard-serving:1"):
    return build_serving_runtime("tosguard-runtime", NS, image)


def test_inference_service_and_runtime_are_built_from_sdk_models():
    from kserve import V1alpha1ServingRuntimeSpec, V1beta1InferenceService, V1beta1ModelSpec

    body = _body()
    assert body["apiVersion"] == "serving.kserve.io/v1beta1" and body["kind"] == "InferenceService"
    predictor = body["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "tosguard-predictor"
    model = predictor["model"]
    assert model["storageUri"] == "s3://bucket/models/tosguard/v1"
    assert model["runtime"] == "tosguard-runtime" and model["modelFormat"]["name"] == "tosguard"
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    # Every key is one the SDK models know (camelCase attribute maps).
    assert set(body) <= set(V1beta1InferenceService.attribute_map.values())
    assert set(model) <= set(V1beta1ModelSpec.attribute_map.values())

    runtime = _runtime()
    assert set(runtime["spec"]) <= set(V1alpha1ServingRuntimeSpec.attribute_map.values())
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == "registry.example/tosguard-serving:1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "tosguard"


def _with_fake_cluster(work, mark_ready_after: float | None):
    """Run work(api_client) in a thread against a kmock Kubernetes emulator; optionally a
    second thread plays the KServe controller and marks the service Ready."""

    def controller(api_client, stop):
        """Plays KServe: for every new spec (storageUri), a new revision is created
        after `mark_ready_after` s and becomes ready `mark_ready_after` s later; the
        old revision stays Ready meanwhile (the stale Ready a deploy must not trust)."""
        api = k8s.CustomObjectsApi(api_client)
        served, revision = None, 0
        while not stop.is_set():
            try:
                obj = api.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL, NAME)
            except k8s.ApiException:
                time.sleep(0.05)
                continue
            uri = obj["spec"]["predictor"]["model"]["storageUri"]
            if uri == served:
                time.sleep(0.05)
                continue
            served, revision = uri, revision + 1
            old = obj.get("status") or {}
            old_ready = ((old.get("components") or {}).get("predictor") or {}).get("latestReadyRevision")
            name = f"{NAME}-predictor-{revision:05d}"
            time.sleep(mark_ready_after)
            api.patch_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL, NAME, {
                "status": {"components": {"predictor": {"latestCreatedRevision": name,
                                                        "latestReadyRevision": old_ready}}}})
            time.sleep(mark_ready_after)
            api.patch_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL, NAME, {
                "status": {"url": f"http://{NAME}.{NS}.example.com",
                           "conditions": [{"type": "Ready", "status": "True"}],
                           "components": {"predictor": {"latestCreatedRevision": name,
                                                        "latestReadyRevision": name}}}})

    return emulated_cluster({f"{KSERVE_GROUP}/{KSERVE_VERSION}/{KSERVE_PLURAL}": "InferenceService",
                             f"{KSERVE_GROUP}/{RUNTIME_VERSION}/{RUNTIME_PLURAL}": "ServingRuntime",
                             "v1/configmaps": "ConfigMap"},
                            work, controller if mark_ready_after is not None else None)


def test_create_then_patch_is_idempotent_and_waits_for_ready():
    def work(api_client):
        first = deploy_inference_service(_body(), _runtime(), api_client=api_client, timeout=20, poll_seconds=0.1)
        second = deploy_inference_service(_body(uri="s3://bucket/models/tosguard/v2"),
                                          _runtime(image="registry.example/tosguard-serving:2"),
                                          api_client=api_client, timeout=20, poll_seconds=0.1)
        api = k8s.CustomObjectsApi(api_client)
        stored = api.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL, NAME)
        runtime = api.get_namespaced_custom_object(KSERVE_GROUP, RUNTIME_VERSION, NS, RUNTIME_PLURAL, "tosguard-runtime")
        listed = api.list_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL)["items"]
        return first, second, stored, runtime, listed

    first, second, stored, runtime, listed = _with_fake_cluster(work, mark_ready_after=0.3)
    assert first == {"name": NAME, "namespace": NS, "action": "created", "url": f"http://{NAME}.{NS}.example.com",
                     "revision": f"{NAME}-predictor-00001"}
    assert second["action"] == "patched" and second["url"] == first["url"]
    # The patched spec's own revision serves: the first revision's Ready did not count.
    assert second["revision"] == f"{NAME}-predictor-00002"
    assert stored["spec"]["predictor"]["model"]["storageUri"] == "s3://bucket/models/tosguard/v2"
    assert runtime["spec"]["containers"][0]["image"] == "registry.example/tosguard-serving:2"
    assert len(listed) == 1


def test_not_ready_in_time_is_a_timeout_naming_the_service():
    def work(api_client):
        with pytest.raises(TimeoutError, match=f"InferenceService {NS}/{NAME} not Ready with the new spec after 1 s"):
            deploy_inference_service(_body(), api_client=api_client, timeout=1, poll_seconds=0.1)
        return True

    assert _with_fake_cluster(work, mark_ready_after=None)


def test_a_stale_ready_does_not_pass_for_a_new_model():
    """While the old revision still serves (Ready), a deploy of a new model waits until the
    new revision is the latest ready one; re-applying an unchanged spec returns at once."""

    def work(api_client):
        deploy_inference_service(_body(), _runtime(), api_client=api_client, timeout=20, poll_seconds=0.05)
        started = time.time()
        second = deploy_inference_service(_body(uri="s3://bucket/models/tosguard/v2"), api_client=api_client,
                                          timeout=20, poll_seconds=0.05)
        waited = time.time() - started
        started = time.time()
        same = deploy_inference_service(_body(uri="s3://bucket/models/tosguard/v2"), api_client=api_client,
                                        timeout=20, poll_seconds=0.05)
        return second, waited, same, time.time() - started

    second, waited, same, again = _with_fake_cluster(work, mark_ready_after=0.6)
    assert second["revision"] == f"{NAME}-predictor-00002"
    assert waited >= 1.1, "returned on the old revision's Ready"
    assert same["revision"] == second["revision"] and again < 1.0


def test_images_and_service_accounts_outside_the_allowlist_are_refused():
    """serving_image and service_account are run parameters: the deploy step checks them
    against the namespace's allow-list ConfigMap before it applies anything."""
    from tosguard.components.deploy import ALLOWLIST, check_allowlist

    def work(api_client):
        core = k8s.CoreV1Api(api_client)
        with pytest.raises(PermissionError, match="no ConfigMap"):
            check_allowlist(NS, [NAME], "registry.example/tosguard-serving:1", "tosguard-predictor", api_client)
        core.create_namespaced_config_map(NS, {"metadata": {"name": ALLOWLIST, "namespace": NS}, "data": {
            "names": f"{NAME}\n{NAME}-runtime\n", "serving_images": "registry.example/tosguard-serving:1\n",
            "service_accounts": "tosguard-predictor\n"}})
        check_allowlist(NS, [NAME, f"{NAME}-runtime"], "registry.example/tosguard-serving:1", "tosguard-predictor",
                        api_client)
        refused = []
        for image, account, names in (("evil.example/miner:1", "tosguard-predictor", [NAME]),
                                      ("registry.example/tosguard-serving:1", "cluster-admin-sa", [NAME]),
                                      ("registry.example/tosguard-serving:1", "tosguard-predictor", ["other"])):
            with pytest.raises(PermissionError) as err:
                check_allowlist(NS, names, image, account, api_client)
            refused.append(str(err.value))
        api = k8s.CustomObjectsApi(api_client)
        listed = api.list_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, NS, KSERVE_PLURAL)["items"]
        return refused, listed

    refused, listed = _with_fake_cluster(work, mark_ready_after=None)
    assert "serving image 'evil.example/miner:1'" in refused[0]
    assert "service account 'cluster-admin-sa'" in refused[1]
    assert "name 'other'" in refused[2]
    assert listed == []  # nothing was applied
