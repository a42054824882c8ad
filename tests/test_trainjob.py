"""Training across nodes: the Kubeflow Trainer TrainJob against a Kubernetes API emulator
on 127.0.0.1 (kmock), and torchrun as two nodes on this machine (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from kubernetes import client as k8s

from tests.conftest import free_port
from tests.servers import emulated_cluster
from tosguard.components import storage
from tosguard.components.config import TrainConfig
from tosguard.components.train.trainjob import GROUP, PLURAL, VERSION, build_train_job, job_name, run_train_job

NS = "tosguard"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_trainer(work, controller=None):
    """Run work(api_client) against an emulated API that serves TrainJobs; `controller`
    (api_client, stop) plays Kubeflow Trainer in a thread."""
    return emulated_cluster({f"{GROUP}/{VERSION}/{PLURAL}": "TrainJob"}, work, controller)


def _trainer_playing(outcome: str, delay: float = 0.3, on_start=None):
    """A fake Kubeflow Trainer: marks every TrainJob it sees Created, then Complete or Failed."""

    def controller(api_client, stop):
        api = k8s.CustomObjectsApi(api_client)
        done = set()
        while not stop.is_set():
            for job in api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]:
                name = job["metadata"]["name"]
                if name in done:
                    continue
                done.add(name)
                api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"status": {"conditions": [
                    {"type": "Created", "status": "True", "reason": "JobsCreated", "message": ""}]}})
                if on_start:
                    on_start(job)
                time.sleep(delay)
                final = {"Complete": ("Complete", "JobsCompleted", "all nodes finished"),
                         "Failed": ("Failed", "TrainerFailed", "node 1: exit code 137 (OOMKilled)")}.get(outcome)
                if final:
                    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"status": {"conditions": [
                        {"type": "Created", "status": "True", "reason": "JobsCreated", "message": ""},
                        {"type": final[0], "status": "True", "reason": final[1], "message": final[2]}]}})
            time.sleep(0.05)

    return controller


def _job(name="tosguard-train-test"):
    return build_train_job(name, NS, "registry.example/tosguard-trainer:1", nodes=2, procs_per_node=4,
                           worker_args=["--tokenized", "s3://b/t", "--config", "{}"], gpus_per_node=4)


def test_the_train_job_is_built_from_the_api_models_and_the_runtime_manifest_validates():
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainingRuntime, TrainerV1alpha1TrainJob

    job = _job()
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["command"]) == (2, 4, ["torchrun"])
    assert trainer["args"][:2] == ["-m", "tosguard.components.train.launch"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["spec"]["runtimeRef"] == {"apiGroup": GROUP, "kind": "TrainingRuntime", "name": "tosguard-torch"}
    docs = list(yaml.safe_load_all(open(os.path.join(ROOT, "manifests", "trainer", "trainingruntime.yaml"))))
    runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
    parsed = TrainerV1alpha1TrainingRuntime.from_dict(runtime).to_dict()
    assert parsed == runtime, "every field of the runtime manifest is known to the Trainer API models"
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["containers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"]}
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == NS
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert {"create", "get", "delete"} == set(next(r for r in role["rules"] if r["resources"] == ["trainjobs"])["verbs"])
    with pytest.raises(ValueError, match="nodes and processes per node"):
        build_train_job("x", NS, "img", nodes=0, procs_per_node=1, worker_args=[])


def test_a_train_job_is_created_followed_to_completion_and_cleaned_up():
    def work(api_client):
        result = run_train_job(_job(), api_client=api_client, timeout=20, poll_seconds=0.05)
        left = k8s.CustomObjectsApi(api_client).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        return result, left

    result, left = _with_trainer(work, _trainer_playing("Complete"))
    assert result["name"] == "tosguard-train-test"
    assert {c["type"] for c in result["conditions"]} == {"Created", "Complete"}
    assert left == [], "a completed TrainJob is deleted"


def test_a_failed_train_job_fails_the_step_with_its_reason_and_is_kept():
    def work(api_client):
        with pytest.raises(RuntimeError) as err:
            run_train_job(_job(), api_client=api_client, timeout=20, poll_seconds=0.05)
        left = k8s.CustomObjectsApi(api_client).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        return str(err.value), left

    message, left = _with_trainer(work, _trainer_playing("Failed"))
    assert "TrainerFailed" in message and "OOMKilled" in message and "kept for inspection" in message
    assert [j["metadata"]["name"] for j in left] == ["tosguard-train-test"]


def test_a_train_job_past_its_timeout_is_deleted():
    def work(api_client):
        with pytest.raises(TimeoutError, match="did not complete within 1 s"):
            run_train_job(_job(), api_client=api_client, timeout=1, poll_seconds=0.05)
        return k8s.CustomObjectsApi(api_client).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]

    assert _with_trainer(work, _trainer_playing("never")) == []


def test_a_retried_step_follows_the_train_job_it_already_created():
    """The TrainJob's name comes from the model version, which is fixed per pipeline run: a
    retried step finds the TrainJob still running and follows it instead of starting another."""
    name = job_name("k/run-123")
    assert name == job_name("k/run-123") != job_name("k/run-456") and len(name) <= 63
    created = []

    def work(api_client):
        api = k8s.CustomObjectsApi(api_client)
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _job(name))  # the first attempt's
        result = run_train_job(_job(name), api_client=api_client, timeout=20, poll_seconds=0.05)
        return result

    result = _with_trainer(work, _trainer_playing("Complete", on_start=lambda job: created.append(job)))
    assert result["name"] == name and len(created) == 1


def test_the_train_step_runs_a_train_job_and_takes_the_model_from_the_store(
        s3_env, tokenized_dir, trained_model_dir, tosguard_home, monkeypatch):
    """The whole step with trainer=trainjob: the tokenized data goes to the store, the
    TrainJob is created with the worker's arguments, its rank 0 (played here by the fake
    controller) uploads a model, and the step completes the version and records it."""
    from mlflow import MlflowClient

    from tosguard.components.store import find_model
    from tosguard.components.tracking import open_pipeline_run, tracking_uri
    from tosguard.components.train import step

    def rank0_uploads(job):
        args = job["spec"]["trainer"]["args"]
        upload = args[args.index("--upload") + 1]
        assert storage.exists(storage.join(args[args.index("--tokenized") + 1], ".complete"))
        assert TrainConfig.from_json(args[args.index("--config") + 1]).method == "qlora"  # GPUs on the nodes
        from tosguard.components.store import upload_model_files

        upload_model_files(str(trained_model_dir), upload)
        storage.write_text(storage.join(upload, "train_result.json"), json.dumps({
            "best_epoch": 1, "best_val_macro_f1": 50.0, "steps": 12, "history": [
                {"epoch": 1, "step": 12, "train_loss": 0.3, "val_micro_f1": 80.0, "val_macro_f1": 50.0}],
            "world_size": 4}))

    monkeypatch.setattr("tosguard.components.kube.api_client", lambda: api_holder["client"])
    monkeypatch.setenv("TOSGUARD_TRAINJOB_POLL_S", "0.05")
    api_holder = {}
    config = TrainConfig(epochs=1, max_steps=4, batch_size=16).to_json()

    def work(api_client):
        api_holder["client"] = api_client
        run_id = open_pipeline_run("trainjob", {"source": "slice"})
        return run_id, step.run_step(str(tokenized_dir), "a" * 64, config, run_id, str(tosguard_home / "out"),
                                     store="s3://tosguard/tj", gpus=2, trainer="trainjob", nodes=2,
                                     trainjob_image="registry.example/tosguard-trainer:1", namespace=NS)

    run_id, summary = _with_trainer(work, _trainer_playing("Complete", on_start=rank0_uploads))
    assert summary["model_uri"].endswith(f"/run-{run_id}") and summary["method"] == "qlora"
    assert find_model(summary["model_uri"])["world_size"] == 4, "the version was completed, mark last"
    assert (tosguard_home / "out" / "model.safetensors").is_file()
    # The training curves, drawn from the workers' summary, join the version before its mark.
    assert "training_curves.png" in storage.list_files(summary["model_uri"])
    logged = {a.path for a in MlflowClient(tracking_uri()).list_artifacts(run_id, "model")}
    assert "model/training_curves.png" in logged
    with pytest.raises(ValueError, match="needs an s3:// store"):
        step.run_step(str(tokenized_dir), "b" * 64, config, run_id, str(tosguard_home / "x"),
                      store=str(tosguard_home / "local-store"), gpus=1, trainer="trainjob")


_NODE = """
import json, sys
from tosguard.components.train.launch import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_nodes_reach_the_weights_of_one_worker_with_the_same_global_batch(tokenized_dir, tmp_path):
    """torchrun as two nodes of one gloo worker each (separate processes with node ranks and
    a rendezvous on 127.0.0.1, as Kubeflow Trainer starts them) against ONE worker that
    accumulates two micro-batches per optimizer step: the same global batch (2 x 8), the
    same micro-batches in the same order, dropout seeded per micro-batch from its place in
    the epoch's order. What may differ is only the order of floating-point sums (all-reduce
    of (g0 + g1) / 2 against g0 / 2 + g1 / 2 accumulated, and matmul reductions split over
    1 thread against 2). Measured: trained weights at most 1.2e-6 apart (Adam moves each
    weight by up to lr = 5e-4 a step, so that is 0.2% of one step; LoRA B reaches 2.2e-3),
    scores of 48 test clauses 2e-8 apart. Tolerance 1e-5 on both. With dropout seeds not
    tied to the micro-batch's place the weights end 4e-3 apart (checked below), so the
    tolerance sits far below what a broken equivalence gives."""
    from dataclasses import replace

    import torch
    from datasets import load_from_disk
    from safetensors.torch import load_file

    from tosguard.components.modeling import load_exported, score_encoded
    from tosguard.components.train.loop import train

    config = TrainConfig(method="lora", epochs=1, max_steps=8, batch_size=8, checkpoint_every=0,
                         validation_subset=32, seed=3)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "tosguard.components.train.launch",
         "--tokenized", str(tokenized_dir), "--config", config.to_json(), "--output", str(tmp_path / f"node{rank}"),
         "--summary", str(tmp_path / f"summary{rank}.json")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    # Meanwhile, in this process: one worker, two micro-batches of 8 per step.
    one_worker = train(str(tokenized_dir), replace(config, gradient_accumulation=2), str(tmp_path / "one-worker"))
    for node in nodes:
        out, _ = node.communicate(timeout=300)
        assert node.returncode == 0, out[-3000:]
    two_nodes = json.loads((tmp_path / "summary0.json").read_text())
    assert (two_nodes["world_size"], one_worker["world_size"]) == (2, 1)
    assert two_nodes["steps"] == one_worker["steps"] == 8
    assert not (tmp_path / "node1" / "tosguard.json").exists(), "only rank 0 exports"

    adapters = [load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
                for name in ("one-worker", "node0")]
    assert adapters[0].keys() == adapters[1].keys()
    weight_gap = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    moved = max((adapters[0][k]).abs().max().item() for k in adapters[0] if "lora_B" in k)
    assert moved > 1e-3, "LoRA B starts at zero: the runs must have trained"
    assert weight_gap < 1e-5, weight_gap

    a, tokenizer, _ = load_exported(str(tmp_path / "one-worker"))
    b, _, _ = load_exported(str(tmp_path / "node0"))
    ids = load_from_disk(str(tokenized_dir))["test"]["input_ids"][:48]
    difference = np.abs(score_encoded(a, ids, tokenizer.pad_token_id) - score_encoded(b, ids, tokenizer.pad_token_id))
    assert difference.max() < 1e-5, difference.max()

    # The tolerance has teeth: the same single worker with one dropout seed for every
    # micro-batch (masks not tied to their place in the order) lands measurably elsewhere.
    import tosguard.components.train.loop as loop

    original = loop.micro_batch_seed
    loop.micro_batch_seed = lambda seed, epoch, position: seed
    try:
        torch.manual_seed(0)
        train(str(tokenized_dir), replace(config, gradient_accumulation=2), str(tmp_path / "one-stream"))
    finally:
        loop.micro_batch_seed = original
    c = load_file(str(tmp_path / "one-stream" / "adapter" / "adapter_model.safetensors"))
    assert max((adapters[1][k] - c[k]).abs().max().item() for k in c) > 1e-4
