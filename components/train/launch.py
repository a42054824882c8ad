"""Data-parallel training on one machine: torchrun starts one worker per GPU (gloo
processes on a machine without CUDA), each running the same loop on its share of every
epoch's batches. Rank 0 exports the model and writes the summary.

Worker entry point: ``python -m tosguard.components.train.launch --tokenized DIR --config JSON ...``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tosguard.components.config import TrainConfig

log = logging.getLogger(__name__)
WORKER_MODULE = "tosguard.components.train.launch"
RESULT_FILE = "train_result.json"  # the training summary rank 0 uploads next to the model


def train_data_parallel(tokenized_dir: str, config: TrainConfig, output_dir: str, processes: int,
                        checkpoint_dir: str | None = None, teacher: str | None = None) -> dict:
    """Train with `processes` workers under torchrun; returns rank 0's summary."""
    import torch

    if processes < 1:
        raise ValueError(f"processes must be >= 1 (got {processes})")
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise ValueError(f"{processes} data-parallel workers asked for, {torch.cuda.device_count()} GPU(s) visible")
    with tempfile.TemporaryDirectory(prefix="tosguard-ddp-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", WORKER_MODULE, "--tokenized", tokenized_dir, "--config", config.to_json(),
            "--output", output_dir, "--summary", str(summary_path),
        ]
        if checkpoint_dir:
            command += ["--checkpoint-dir", checkpoint_dir]
        if teacher:
            command += ["--teacher", teacher]
        env = dict(os.environ)
        if not torch.cuda.is_available():  # share the cores out instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        log.info("train: %d data-parallel workers: %s", processes, " ".join(command[:6]))
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"data-parallel training failed (torchrun exit code {done.returncode}); "
                               "re-run the step to resume from the last checkpoint")
        return json.loads(summary_path.read_text())


def main(argv: list[str] | None = None) -> int:
    """One worker under torchrun."""
    import argparse

    from tosguard.components.train.loop import distributed, train

    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}")
    parser.add_argument("--tokenized", required=True)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON (a concrete method)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--summary", required=True, help="where rank 0 writes the summary JSON")
    parser.add_argument("--checkpoint-dir", help="folder or s3:// URI for resumable checkpoints")
    parser.add_argument("--teacher", help="the teacher's stored train-split scores (distillation; teachers.py)")
    parser.add_argument("--upload", metavar="URI", help="rank 0 copies the model there (without the complete mark) "
                                                        f"with {RESULT_FILE}: how a TrainJob hands its model back")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tokenized = args.tokenized
    if tokenized.startswith("s3://"):  # each node fetches the tokenized data from the store
        from tosguard.components.storage import fetch_folder

        tokenized = str(fetch_folder(tokenized))
    summary = train(tokenized, TrainConfig.from_json(args.config), args.output, checkpoint_dir=args.checkpoint_dir,
                    teacher=args.teacher)
    rank, world, _ = distributed()
    if rank == 0:
        Path(args.summary).write_text(json.dumps(summary, default=str))
        if args.upload:
            from tosguard.components import storage
            from tosguard.components.store import upload_model_files

            upload_model_files(args.output, args.upload)
            storage.write_text(storage.join(args.upload, RESULT_FILE), json.dumps(summary, default=str))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
