"""The tosguard pipeline: download -> tokenize -> train -> evaluate -> deploy.

Read top to bottom, this is the whole system. The same graph runs locally through
kfp.local (embedded default) and on Kubeflow from the compiled YAML (cluster); only the
parameters and the Kubernetes settings (ignored by kfp.local) differ.
"""

from dataclasses import dataclass

from kfp import dsl, kubernetes

from tosguard.components.config import (GATE_FLOOR, GATE_TOLERANCE, KS_THRESHOLD, MIN_CLAUSES, NAME, PRESETS,
                                       PSI_THRESHOLD, TrainConfig)
from tosguard.pipelines import steps
from tosguard.pipelines.images import SERVING_IMAGE, TRAINER_IMAGE


@dataclass(frozen=True)
class GpuPool:
    """Where the train step runs in a cluster: an A100 node pool (defaults: GKE labels)."""

    accelerator: str = "nvidia.com/gpu"
    count: int = 1  # the default of the pipeline's `gpus` parameter
    node_selector_key: str = "cloud.google.com/gke-accelerator"
    node_selector_value: str = "nvidia-tesla-a100"
    taint_key: str = "nvidia.com/gpu"
    taint_value: str = "present"
    taint_effect: str = "NoSchedule"


@dataclass(frozen=True)
class ClusterSettings:
    """Credentials (Kubernetes Secrets, exposed to steps as env) and per-task resources."""

    s3_secret: str = "tosguard-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3
    mlflow_secret: str = "tosguard-mlflow"  # keys MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, ..._PASSWORD
    caching: bool = True  # False: every task runs afresh (compile/submit --no-cache)
    # Retries with backoff for steps that reach S3, MLflow or the Kubernetes API. kfp.local
    # honours them too, and cannot tell bad data from a network blip, so local runs turn
    # them off (tosguard's storage and MLflow clients retry transient errors themselves).
    retries: bool = True
    # The Kubeflow Trainer branch (trainer=trainjob). kfp.local cannot merge the outputs of
    # two branches (dsl.OneOf of artifacts), so local runs build the one-node graph only.
    trainjob_branch: bool = True
    # The drift watch reads a token-protected endpoint with the key `token` of this Secret
    # (mounted when it exists; the same Secret the deploy's `auth_secret` names).
    endpoint_token_secret: str = "tosguard-auth"


_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")
_MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _restricted(task):
    """Pod Security "restricted": the images' user (1000), never root; the KFP backend adds
    no privilege escalation, all capabilities dropped and the default seccomp profile. The
    MLflow server's NetworkPolicy admits pods with the tosguard.io/role label."""
    kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
    kubernetes.add_pod_label(task, "tosguard.io/role", "pipeline")
    return task


def _on_cluster(task, cluster: ClusterSettings, cpu: str, memory: str, network_retries: int = 0):
    """Resources, credentials from Secrets, retries for steps that talk to the network.
    kfp.local ignores all of these; the compiled YAML carries them."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    _restricted(task)
    kubernetes.use_secret_as_env(task, cluster.s3_secret, {k: k for k in _S3_KEYS})
    kubernetes.use_secret_as_env(task, cluster.mlflow_secret, {k: k for k in _MLFLOW_KEYS})
    if network_retries and cluster.retries:
        task.set_retry(num_retries=network_retries, backoff_duration="30s", backoff_factor=2.0)
    if not cluster.caching:
        task.set_caching_options(False)
    return task


def make_pipeline(pool: GpuPool = GpuPool(), cluster: ClusterSettings = ClusterSettings(),
                  train_defaults: TrainConfig = PRESETS["default"], gate_floor_default: float = GATE_FLOOR):
    """The pipeline; `train_defaults` is the training block the run form starts from and
    `gate_floor_default` its gate floor (the preset's: 0 for quick)."""

    @dsl.pipeline(
        name=NAME,
        description="Fine-tune a transformer with QLoRA on LexGLUE UNFAIR-ToS, score it as LexGLUE does, serve it.",
    )
    def tosguard_pipeline(
        run_name: str = NAME,
        source: str = "bundled",
        # Every training setting in one block (components/config.py: TrainConfig). A run may
        # pass the whole block or {"preset": NAME, ...changes}; open-run validates it once.
        train: dict = train_defaults.to_dict(),
        gpus: int = pool.count,
        # "pod": the train task itself trains, on one GPU node; "trainjob": a Kubeflow Trainer
        # TrainJob trains across `nodes` nodes of `gpus` GPUs each (needs an s3:// store).
        trainer: str = "pod",
        nodes: int = 1,
        store: str = "",
        reuse_stored_model: bool = cluster.caching,
        gate_floor: float = gate_floor_default,
        gate_tolerance: float = GATE_TOLERANCE,
        deploy: bool = True,
        deploy_target: str = "kserve",
        service_name: str = NAME,
        namespace: str = NAME,
        serving_image: str = SERVING_IMAGE,
        service_account: str = f"{NAME}-predictor",
        ready_timeout_s: int = 900,
        min_replicas: int = 1,
        max_replicas: int = 3,
        concurrency_target: int = 4,
        expose: bool = False,
        auth_secret: str = "",
        serve_profile: str = "",  # the decision thresholds served: default, triage (high recall); "": the server's
    ):
        run = steps.open_run(run_name=run_name, source=source, train=train, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                             kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, serve_profile=serve_profile,
                             trainer=trainer, deploy_target=deploy_target, gpus=gpus, nodes=nodes,
                             min_replicas=min_replicas, max_replicas=max_replicas,
                             concurrency_target=concurrency_target, ready_timeout_s=ready_timeout_s)
        run.set_display_name("Validate inputs, open MLflow run")
        _on_cluster(run, cluster, "500m", "1Gi", network_retries=3)
        # Every pipeline run opens its own MLflow run: never answered from KFP's cache, which
        # keys on inputs alone (a recurring run's inputs repeat). Every later task takes the
        # run id as an input, so none of them can be answered from another run's cache
        # either; a trained model is reused only through the store's content key.
        run.set_caching_options(False)
        train_config = run.outputs["train_config"]
        run_id = run.outputs["mlflow_run_id"]

        download = steps.download_data(source=source, store=store, mlflow_run_id=run_id)
        download.set_display_name("Download UNFAIR-ToS")
        _on_cluster(download, cluster, "1", "4Gi", network_retries=3)
        # Never cached: a cached download would hide changed data. Later steps take the
        # data hash as an input, so their cache keys change whenever the data does.
        download.set_caching_options(False)
        data_hash = download.outputs["Output"]

        tokenize = steps.tokenize_data(
            raw_data=download.outputs["raw_data"], data_hash=data_hash, train_config=train_config,
            mlflow_run_id=run_id,
        ).set_display_name("Tokenize to Arrow")
        _on_cluster(tokenize, cluster, "2", "8Gi", network_retries=2)

        def train_on_one_node():
            fit = steps.train_model(
                tokenized_data=tokenize.outputs["tokenized_data"], data_hash=data_hash, train_config=train_config,
                store=store, source=source, gpus=gpus, reuse_stored_model=reuse_stored_model, mlflow_run_id=run_id,
            ).set_display_name("Fine-tune (QLoRA), keep in model store")
            _on_cluster(fit, cluster, "8", "64Gi", network_retries=2)
            # The GPU count is a run parameter: the pod asks for that many, and train runs one
            # data-parallel worker per GPU.
            fit.set_accelerator_type(pool.accelerator).set_accelerator_limit(gpus)
            kubernetes.add_node_selector(fit, pool.node_selector_key, pool.node_selector_value)
            kubernetes.add_toleration(
                fit, key=pool.taint_key, operator="Equal", value=pool.taint_value, effect=pool.taint_effect
            )
            return fit

        if cluster.trainjob_branch:
            with dsl.If(trainer == "trainjob", name="trainer-trainjob"):
                # Kubeflow Trainer runs the workers (nodes x gpus) on the GPU pool; this task
                # only creates the TrainJob, follows it and takes the model from the store.
                across_nodes = steps.train_with_trainjob(
                    tokenized_data=tokenize.outputs["tokenized_data"], data_hash=data_hash,
                    train_config=train_config, store=store, source=source, nodes=nodes, gpus=gpus,
                    trainer_image=TRAINER_IMAGE, namespace=namespace, reuse_stored_model=reuse_stored_model,
                    mlflow_run_id=run_id,
                ).set_display_name("Fine-tune across nodes (Kubeflow Trainer TrainJob)")
                _on_cluster(across_nodes, cluster, "500m", "2Gi", network_retries=2)
            with dsl.Else():
                fit = train_on_one_node()
            model_uri = dsl.OneOf(across_nodes.outputs["Output"], fit.outputs["Output"])
            trained = dsl.OneOf(across_nodes.outputs["model"], fit.outputs["model"])
        else:
            fit = train_on_one_node()
            model_uri, trained = fit.outputs["Output"], fit.outputs["model"]

        evaluate = steps.evaluate_model(
            tokenized_data=tokenize.outputs["tokenized_data"], model=trained, model_uri=model_uri,
            data_hash=data_hash, mlflow_run_id=run_id, gate_floor=gate_floor, gate_tolerance=gate_tolerance,
            deploy=deploy,
        ).set_display_name("Evaluate on LexGLUE test, gate, register")
        _on_cluster(evaluate, cluster, "4", "8Gi", network_retries=2)
        # The gate reads the registry's current champion: never answer it from the cache.
        evaluate.set_caching_options(False)
        model_version = evaluate.outputs["model_version"]

        with dsl.If(deploy == True, name="deploy-requested"):  # noqa: E712 (a pipeline channel)
            with dsl.If(evaluate.outputs["gate_passed"] == True, name="gate-passed"):  # noqa: E712
                with dsl.If(deploy_target == "kserve", name="target-kserve"):
                    deploy_isvc = steps.deploy_kserve(
                        model_uri=model_uri, model_version=model_version, mlflow_run_id=run_id,
                        service_name=service_name, namespace=namespace, serving_image=serving_image,
                        service_account=service_account, ready_timeout_s=ready_timeout_s,
                        min_replicas=min_replicas, max_replicas=max_replicas, concurrency_target=concurrency_target,
                        expose=expose, auth_secret=auth_secret, serve_profile=serve_profile,
                    ).set_display_name("Deploy InferenceService (KServe)")
                    _on_cluster(deploy_isvc, cluster, "500m", "1Gi", network_retries=3)
                    deploy_isvc.set_caching_options(False)
                with dsl.Else():
                    deploy_here = steps.deploy_local(
                        model_uri=model_uri, model_version=model_version, mlflow_run_id=run_id,
                        serve_profile=serve_profile,
                    ).set_display_name("Deploy (local KServe ModelServer)")
                    deploy_here.set_caching_options(False)
                    _restricted(deploy_here)

    return tosguard_pipeline


tosguard_pipeline = make_pipeline()


def make_drift_pipeline(pool: GpuPool = GpuPool(), cluster: ClusterSettings = ClusterSettings(),
                        train_defaults: TrainConfig = PRESETS["default"], gate_floor_default: float = GATE_FLOOR):
    """The drift watch: check the live endpoint against the served model's test reference;
    when drift crosses the thresholds, run the whole training pipeline (inline, as a
    sub-DAG). Scheduled with `tosguard schedule --drift-watch`, it retrains only when the
    traffic has moved. Every parameter of the training pipeline passes through, so a
    retrain deploys as the last run did (its token Secret, replicas, image). A protected
    endpoint is read with the token in the Secret `cluster.endpoint_token_secret` (key
    `token`, mounted if it exists)."""
    training = make_pipeline(pool, cluster, train_defaults, gate_floor_default)

    @dsl.pipeline(
        name=f"{NAME}-drift-watch",
        description="Compare the endpoint's score distributions with the served model's test reference (PSI, KS "
                    "per category); retrain through the tosguard pipeline when they drift.",
    )
    def drift_watch(
        url: str = f"http://{NAME}-predictor.{NAME}.svc.cluster.local",
        model: str = "",  # the served model's store URI; empty: the registry's champion
        window_s: float = 0.0,  # > 0: only what the server scores during this many seconds
        since_last_check: bool = True,  # with window_s 0: only what was scored since the last judged check
        metric_reads: int = 12,  # reads of /metrics per check: the replicas they reach are judged together
        psi_threshold: float = PSI_THRESHOLD,
        ks_threshold: float = KS_THRESHOLD,
        min_clauses: int = MIN_CLAUSES,
        run_name: str = f"{NAME}-drift-retrain",
        source: str = "bundled",
        train: dict = train_defaults.to_dict(),
        store: str = "",
        gate_floor: float = gate_floor_default,
        gate_tolerance: float = GATE_TOLERANCE,
        deploy: bool = True,
        deploy_target: str = "kserve",
        service_name: str = NAME,
        namespace: str = NAME,
        gpus: int = pool.count,
        trainer: str = "pod",
        nodes: int = 1,
        reuse_stored_model: bool = cluster.caching,
        serving_image: str = SERVING_IMAGE,
        service_account: str = f"{NAME}-predictor",
        ready_timeout_s: int = 900,
        min_replicas: int = 1,
        max_replicas: int = 3,
        concurrency_target: int = 4,
        expose: bool = False,
        auth_secret: str = "",
        serve_profile: str = "",
    ):
        check = steps.check_drift(url=url, model=model, window_s=window_s, psi_threshold=psi_threshold,
                                  ks_threshold=ks_threshold, min_clauses=min_clauses,
                                  since_last_check=since_last_check, store=store,
                                  run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, metric_reads=metric_reads)
        check.set_display_name("Check the endpoint for drift")
        _on_cluster(check, cluster, "500m", "1Gi", network_retries=2)
        check.set_caching_options(False)  # the traffic changes between runs with the same inputs
        kubernetes.use_secret_as_env(check, cluster.endpoint_token_secret, {"token": "TOSGUARD_AUTH_TOKEN"},
                                     optional=True)
        with dsl.If(check.outputs["Output"] == True, name="drift-found"):  # noqa: E712 (a pipeline channel)
            retrain = training(
                run_name=run_name, source=source, train=train, store=store, gate_floor=gate_floor,
                gate_tolerance=gate_tolerance, deploy=deploy, deploy_target=deploy_target,
                service_name=service_name, namespace=namespace, gpus=gpus, trainer=trainer, nodes=nodes,
                reuse_stored_model=reuse_stored_model, serving_image=serving_image, service_account=service_account,
                ready_timeout_s=ready_timeout_s, min_replicas=min_replicas, max_replicas=max_replicas,
                concurrency_target=concurrency_target, expose=expose, auth_secret=auth_secret,
                serve_profile=serve_profile,
            )
            retrain.set_display_name("Retrain (tosguard pipeline)")
            done = steps.acknowledge_drift(url=url, window_s=window_s, since_last_check=since_last_check,
                                           store=store, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).after(retrain)
            done.set_display_name("Mark the drift as acted on")
            _on_cluster(done, cluster, "250m", "512Mi", network_retries=2)
            done.set_caching_options(False)  # it moves a mark in the store: never answered from the cache

    return drift_watch


drift_watch_pipeline = make_drift_pipeline()
