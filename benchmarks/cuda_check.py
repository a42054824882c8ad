"""The CUDA path on a real GPU, in one short run: QLoRA against LoRA (and full fine-tuning)
throughput with MFU, then whole default trainings with 4-bit NF4 QLoRA under bf16 autocast
scored on the LexGLUE test split.

Meant for a lent GPU machine with no registry: the base model comes as a local folder
(`--base-model DIR`), the data from the bundled splits. Prints one `RESULT {json}` line
per measurement and writes them all to `--out FILE`.

    python benchmarks/cuda_check.py --base-model /tmp/minilm --out results.json \
        [--seeds 42,1,2] [--batch-sizes 32,128] [--methods qlora,lora,full]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _versions() -> dict:
    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    found["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        found["device"] = torch.cuda.get_device_name()
        found["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return found


def _throughput(base_model: str, method: str, batch_size: int, steps: int, warm_pass: bool) -> dict:
    import train_throughput

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        train_throughput.main(["--method", method, "--batch-size", str(batch_size), "--steps", str(steps),
                               "--base-model", base_model] + (["--warm-pass"] if warm_pass else []))
    text = captured.getvalue()
    print(text, end="", flush=True)
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _train_and_test(base_model: str, method: str, seed: int, tokenized: str, work: str, max_steps: int = 0) -> dict:
    from tosguard.components.config import TrainConfig
    from tosguard.components.evaluate import evaluate
    from tosguard.components.train.loop import train

    config = TrainConfig(base_model=base_model, method=method, seed=seed, checkpoint_every=0, max_steps=max_steps)
    out = f"{work}/model-{method}-{seed}"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = train(tokenized, config, out)
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    test = evaluate(out, tokenized, "test")
    return {
        "kind": "train", "method": method, "seed": seed, "wall_seconds": wall,
        "train_seconds": summary["train_seconds"], "steps": summary["steps"], "best_epoch": summary["best_epoch"],
        "best_val_macro_f1": summary["best_val_macro_f1"], "test_micro_f1": test["micro_f1"],
        "test_macro_f1": test["macro_f1"], "peak_gpu_mib": peak,
        "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in summary["history"]],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", required=True, help="a local model folder (no hub here)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="qlora,lora,full")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cold", action="store_true", help="time the first pass over the batches (no warm pass)")
    parser.add_argument("--seeds", default="42,1,2", help="seeds of whole QLoRA trainings (empty: none)")
    parser.add_argument("--lora-seeds", default="42", help="seeds of whole LoRA trainings, for comparison")
    parser.add_argument("--max-steps", type=int, default=0, help="cap the trainings (a smoke test); 0: whole")
    args = parser.parse_args(argv)

    results = [{"kind": "environment", **_versions()}]
    print("RESULT " + json.dumps(results[0]), flush=True)

    def keep(record: dict) -> None:
        results.append(record)
        print("RESULT " + json.dumps(record), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    for method in filter(None, args.methods.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            try:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                record = _throughput(args.base_model, method, batch, args.steps, not args.cold)
                record["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() / 2**20
                                          if torch.cuda.is_available() else None)
                keep({"kind": "throughput", **record})
            except Exception as error:  # keep going: one failing method must not lose the rest
                keep({"kind": "throughput", "method": method, "batch_size": batch, "error": repr(error)})

    from tosguard.components.download import download
    from tosguard.components.tokenize import tokenize

    with tempfile.TemporaryDirectory() as work:
        download("bundled", f"{work}/raw")
        tokenize(f"{work}/raw", args.base_model, 128, f"{work}/tok")
        runs = [("qlora", int(s)) for s in filter(None, args.seeds.split(","))]
        runs += [("lora", int(s)) for s in filter(None, args.lora_seeds.split(","))]
        for method, seed in runs:
            try:
                keep(_train_and_test(args.base_model, method, seed, f"{work}/tok", work, args.max_steps))
            except Exception as error:
                keep({"kind": "train", "method": method, "seed": seed, "error": repr(error)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
