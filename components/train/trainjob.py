"""Training across nodes with Kubeflow Trainer: the train step creates a TrainJob on the
`tosguard-torch` TrainingRuntime (manifests/trainer/), which runs torchrun over the same
worker entry point (launch.py) on N nodes x M GPUs. The workers read the tokenized data
from the S3 store and rank 0 uploads the model there; the step follows the TrainJob's
status, fails with its reason, cleans up, and picks the model up from the store.

Objects are built with kubeflow-trainer-api's models (trainer.kubeflow.org/v1alpha1).
"""
from __future__ import annotations

import hashlib
import logging
import time

from tosguard.components.config import NAME, env_number

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = f"{NAME}-torch"


def job_name(model_version: str) -> str:
    """A TrainJob name (a DNS label) that one training attempt keeps across step retries."""
    return f"{NAME}-train-{hashlib.sha256(model_version.encode()).hexdigest()[:12]}"


def build_train_job(name: str, namespace: str, image: str, nodes: int, procs_per_node: int, worker_args: list[str],
                    gpus_per_node: int = 1, cpu: str = "8", memory: str = "64Gi", runtime: str = RUNTIME) -> dict:
    """The TrainJob: `nodes` pods of `procs_per_node` torchrun workers each."""
    from kubeflow_trainer_api import models as m

    from tosguard.components.train.launch import WORKER_MODULE

    if nodes < 1 or procs_per_node < 1:
        raise ValueError(f"nodes and processes per node must be >= 1 (got {nodes}, {procs_per_node})")
    limits = {"cpu": cpu, "memory": memory}
    if gpus_per_node:
        limits["nvidia.com/gpu"] = str(gpus_per_node)
    job = m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": NAME}),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=runtime, kind="TrainingRuntime", api_group=GROUP),
            trainer=m.TrainerV1alpha1Trainer(
                image=image, num_nodes=nodes, num_proc_per_node=procs_per_node,
                command=["torchrun"], args=["-m", WORKER_MODULE, *worker_args],
                resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(
                    limits={k: m.IoK8sApimachineryPkgApiResourceQuantity(actual_instance=v) for k, v in limits.items()},
                    requests={k: m.IoK8sApimachineryPkgApiResourceQuantity(actual_instance=v) for k, v in limits.items()},
                ),
            ),
        ),
    )
    return job.to_dict()


def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or [])}


def run_train_job(job: dict, api_client=None, timeout: float | None = None, poll_seconds: float | None = None) -> dict:
    """Create the TrainJob (or follow the one a previous attempt of this step created),
    wait until it completes, then delete it. Raises RuntimeError when it fails (the failed
    TrainJob is kept for inspection) and TimeoutError past `timeout` (it is deleted)."""
    from kubernetes import client as k8s

    from tosguard.components.kube import api_client as kube_client

    timeout = timeout if timeout is not None else env_number("TOSGUARD_TRAINJOB_TIMEOUT_S", 24 * 3600, float, low=1)
    poll_seconds = poll_seconds if poll_seconds is not None else env_number("TOSGUARD_TRAINJOB_POLL_S", 15, float, low=0.001)
    api = k8s.CustomObjectsApi(api_client or kube_client())
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    args = (GROUP, VERSION, namespace, PLURAL)
    try:
        api.create_namespaced_custom_object(*args, job)
        log.info("train: created TrainJob %s/%s (%d nodes)", namespace, name, job["spec"]["trainer"]["numNodes"])
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
        log.info("train: TrainJob %s/%s exists (an earlier attempt of this step); following it", namespace, name)
    log.info("train: follow its logs with: kubectl logs -n %s -l jobset.sigs.k8s.io/jobset-name=%s -f "
             "--max-log-requests=%d --prefix", namespace, name, max(6, job["spec"]["trainer"]["numNodes"]))
    deadline, seen = time.time() + timeout, None
    while True:
        obj = api.get_namespaced_custom_object(*args, name)
        conditions = _conditions(obj)
        state = sorted(t for t, c in conditions.items() if str(c.get("status")) == "True")
        if state != seen:
            log.info("train: TrainJob %s/%s: %s", namespace, name, ", ".join(state) or "pending")
            seen = state
        failed = conditions.get("Failed")
        if failed and str(failed.get("status")) == "True":
            raise RuntimeError(
                f"TrainJob {namespace}/{name} failed: {failed.get('reason', '?')}: {failed.get('message', '')}. "
                f"It is kept for inspection (kubectl describe trainjob -n {namespace} {name}); delete it before "
                "re-running the step, which then trains again from the last checkpoint in the store")
        complete = conditions.get("Complete")
        if complete and str(complete.get("status")) == "True":
            _delete(api, args, name)
            return {"name": name, "namespace": namespace, "conditions": list(conditions.values())}
        if time.time() > deadline:
            _delete(api, args, name)
            raise TimeoutError(f"TrainJob {namespace}/{name} did not complete within {timeout:.0f} s "
                               f"(conditions: {list(conditions.values())}); it was deleted")
        time.sleep(poll_seconds)


def _delete(api, args, name: str) -> None:
    from kubernetes import client as k8s

    try:
        api.delete_namespaced_custom_object(*args, name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
