"""The embedded main job: the pipeline through kfp.local's SubprocessRunner, then a summary."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tosguard.components.config import GATE_TOLERANCE, NAME, TrainConfig, check_gate, home

log = logging.getLogger(__name__)
STEPS = ("download", "tokenize", "train", "evaluate", "deploy")


def _find_run(run_name: str) -> dict:
    from tosguard.components.tracking import find_runs, run_info, tracking_uri

    runs = find_runs(f"tags.`mlflow.runName` = '{run_name}'")
    if not runs:
        raise RuntimeError(f"no MLflow run named {run_name!r} at {tracking_uri()}")
    return run_info(runs[0].info.run_id)


def run_pipeline(config: TrainConfig, source: str, output_dir: Path, deploy: bool = True, store: str = "",
                 gate_floor: float = 0.0, gate_tolerance: float = GATE_TOLERANCE, reuse_stored_model: bool = True,
                 serve_profile: str = "") -> dict:
    """Run the whole pipeline locally; write and return summary.json's content."""
    check_gate(gate_floor, gate_tolerance)  # before training, not at the gate after it
    from kfp import local

    from tosguard.pipelines.pipeline import ClusterSettings, make_pipeline

    tosguard_pipeline = make_pipeline(cluster=ClusterSettings(retries=False, trainjob_branch=False))

    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # Steps run in subprocesses: hand them the same home (MLflow sqlite, local server).
    os.environ["TOSGUARD_HOME"] = str(home())
    run_name = f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "artifacts"),
        raise_on_error=True,
    )
    started = time.time()
    tosguard_pipeline(
        run_name=run_name, source=source, train=config.to_dict(), store=store, gate_floor=gate_floor,
        gate_tolerance=gate_tolerance, reuse_stored_model=reuse_stored_model, deploy=deploy, deploy_target="local",
        serve_profile=serve_profile,
    )
    wall = time.time() - started
    info = _find_run(run_name)
    metrics, tags = info["metrics"], info["tags"]
    model_dir = tags.get("model_uri", "")
    gate = json.loads(tags["gate"]) if "gate" in tags else {}
    deployed = bool(deploy and tags.get("endpoint") and tags.get("deployed_version") == tags.get("model_version"))
    summary = {
        "run_name": run_name,
        "test": {
            "micro_f1": metrics.get("test_micro_f1"),
            "macro_f1": metrics.get("test_macro_f1"),
            "per_category_f1": {k[len("test_f1."):]: v for k, v in metrics.items() if k.startswith("test_f1.")},
        },
        "validation": {"best_macro_f1": metrics.get("best_val_macro_f1"), "best_epoch": metrics.get("best_epoch"),
                       "macro_f1_out_of_fold": metrics.get("val_macro_f1_out_of_fold")},
        "mlflow": {
            "tracking_uri": info["tracking_uri"],
            "experiment_id": info["experiment_id"],
            "run_id": info["run_id"],
            "artifact_uri": info["artifact_uri"],
        },
        "artifacts": {
            "pipeline_root": str(output_dir / "artifacts"),
            "model": model_dir,
            "report": str(output_dir / "report.md"),
            "report_html": str(output_dir / "report.html"),
        },
        "gate": gate,
        "deployed": deployed,
        "endpoint": tags.get("endpoint") if deployed else None,
        "registry": {"name": NAME, "version": tags.get("model_version"), "source": model_dir},
        "store": store,
        "data_snapshot": tags.get("data_snapshot"),
        "train_reused_stored_model": tags.get("train.reused") == "True",
        "data_hash": tags.get("data_hash"),
        "step_seconds": {s: round(metrics[f"step_seconds.{s}"], 1) for s in STEPS if f"step_seconds.{s}" in metrics},
        "wall_seconds": round(wall, 1),
        "config": config.to_dict(),
        "source": source,
    }
    # Copy the reports next to the summary so a person finds them in one place.
    for artifact, name in (("report", "report.md"), ("report_html", "report.html")):
        report = next((output_dir / "artifacts").glob(f"*/evaluate-model/{artifact}"), None)
        if report:
            (output_dir / name).write_bytes(report.read_bytes())
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
