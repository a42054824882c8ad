"""Training throughput: the seed recipe's loader against tosguard's, same model, same run.

- seed recipe: random order, every batch padded to max_length (128), as LexGLUE's scripts do;
- tosguard: length-grouped batches, each padded only to its own longest clause.

Both run the same optimizer steps on the same LoRA model (all-MiniLM-L6-v2 by default)
over a pass through the same train rows; the script prints samples/s, real tokens/s and
the share of compute spent on padding, and ends with a line `RESULT {json}`.

With --cpu-bf16 (a CPU with native bf16) a third row times tosguard's loader with the
training step under bf16 autocast, as the `cpu_bf16` setting trains (the quality preset).

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--method lora] [--batch-size 32]
        [--base-model NAME] [--cpu-bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch


def _run(model, optimizer, batches, input_ids, labels, pad_id, fixed_width, device, warm_pass=False, bf16=None):
    from tosguard.components.modeling import pad_batch

    model.train()
    real_tokens = padded_tokens = samples = 0
    loss_fn = torch.nn.BCEWithLogitsLoss()
    # One warm-up step outside the clock (allocations, lazy init). With warm_pass, a whole
    # untimed pass first: every batch width has been seen once (kernel selection per shape),
    # and the timed pass measures the steady state a long training lives in.
    timed = False
    started = 0.0
    cold_seconds = None
    if warm_pass:
        if device.type == "cuda":
            torch.cuda.synchronize()
        cold_started = time.perf_counter()
        _run(model, optimizer, batches, input_ids, labels, pad_id, fixed_width, device, bf16=bf16)
        cold_seconds = time.perf_counter() - cold_started
    for i, batch in enumerate(batches):
        rows = [input_ids[j] for j in batch]
        if fixed_width:
            rows_padded = [r + [pad_id] * (fixed_width - len(r)) for r in rows]
            ids, mask = pad_batch(rows_padded, pad_id)
            mask = (ids != pad_id).long()
        else:
            ids, mask = pad_batch(rows, pad_id)
        target = torch.from_numpy(labels[batch]).to(device)
        # As the training loop does: bf16 autocast on CUDA, fp32 on a CPU unless cpu_bf16.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if bf16 is None else bf16):
            logits = model(ids.to(device), mask.to(device))
        loss = loss_fn(logits.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not timed:
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed, started = True, time.perf_counter()
            continue
        samples += len(batch)
        real_tokens += int(sum(len(r) for r in rows))
        padded_tokens += int(ids.numel())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "samples_per_s": samples / seconds,
        "tokens_per_s": real_tokens / seconds,
        "padded_tokens_per_s": padded_tokens / seconds,
        "padding_share": 1 - real_tokens / padded_tokens,
        "seconds": seconds,
        "samples": samples,
        "cold_pass_seconds": cold_seconds,
    }


# Dense bf16 tensor-core peaks (TFLOP/s), for MFU.
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0}


def train_flops_per_token(config, method: str, width: float) -> float:
    """Training FLOPs per (padded) token: 2N forward over the encoder's N non-embedding
    weights, backward 4N for full fine-tuning (activation and weight gradients) or 2N with
    frozen LoRA/QLoRA bases (activation gradients only), plus attention's score and value
    products (4 x width x hidden per layer forward)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n = layers * (4 * d * d + 2 * d * f)
    attention = layers * 4 * width * d
    forward = 2 * n + attention
    return forward * (3 if method == "full" else 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per loader")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--method", default="lora", choices=["lora", "qlora", "full"])
    parser.add_argument("--base-model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--warm-pass", action="store_true",
                        help="run every batch once untimed first (steady state; shapes already seen)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU "
                                                          "(default: from the CUDA device name)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="also time tosguard's loader under bf16 autocast on this CPU (needs native bf16)")
    args = parser.parse_args(argv)

    from datasets import load_from_disk

    from tosguard.components.download import download
    from tosguard.components.modeling import build_classifier, resolve_base_model
    from tosguard.components.tokenize import tokenize
    from tosguard.components.train.loop import cpu_bf16_native, length_grouped_batches

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cpu_bf16 and (device.type == "cuda" or not cpu_bf16_native()):
        parser.error("--cpu-bf16 compares precisions on a CPU with native bf16 (AVX512-BF16/AMX); "
                     "this machine has " + ("CUDA (always bf16)" if device.type == "cuda" else "no native bf16"))
    with tempfile.TemporaryDirectory() as tmp:
        download("bundled", f"{tmp}/raw")
        tokenize(f"{tmp}/raw", args.base_model, args.max_length, f"{tmp}/tok")
        train = load_from_disk(f"{tmp}/tok")["train"]
        input_ids = list(train["input_ids"])
        labels = np.asarray(train["label_vector"], dtype=np.float32)
    lengths = [len(r) for r in input_ids]
    n = (args.steps + 1) * args.batch_size
    rng = np.random.default_rng(0)

    # The same rows for both loaders: a random sample of n train clauses (more passes over
    # the train split when n exceeds it, so large batches still get every timed step).
    passes = -(-n // len(input_ids))
    rows = np.concatenate([rng.permutation(len(input_ids)) for _ in range(passes)])[:n]
    seed_batches = [rows[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    grouped_local = length_grouped_batches([lengths[i] for i in rows], args.batch_size, np.random.default_rng(0))
    grouped_batches = [rows[b] for b in grouped_local]

    results = {}
    runs = [("seed_recipe", seed_batches, args.max_length, None), ("tosguard", grouped_batches, None, None)]
    if args.cpu_bf16:
        runs.append(("tosguard_bf16", grouped_batches, None, True))
    for name, batches, width, bf16 in runs:
        torch.manual_seed(0)
        model = build_classifier(resolve_base_model(args.base_model), args.method)
        if args.method != "qlora":
            model.to(device)
        else:  # the 4-bit encoder is placed on load; the head is not (as the training loop does)
            model.classifier.to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        results[name] = _run(model, optimizer, batches, input_ids, labels, 0, width, device, args.warm_pass, bf16)
        r = results[name]
        width = r["padded_tokens_per_s"] / r["samples_per_s"]
        flops = train_flops_per_token(model.encoder.config, args.method, width) * r["padded_tokens_per_s"]
        r["achieved_tflops"] = flops / 1e12
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                         if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
        r["mfu"] = r["achieved_tflops"] / peak if peak else None
        r["step_ms"] = 1000 * r["seconds"] / max(1, r["samples"] // args.batch_size)
        mfu = f"MFU {100 * r['mfu']:.1f}% of {peak:.0f}" if r["mfu"] is not None else "MFU n/a (no peak for this device)"
        print(f"{name:12s} {r['samples_per_s']:7.1f} samples/s  {r['tokens_per_s']:8.0f} tokens/s  "
              f"padding {100 * r['padding_share']:4.1f}%  step {r['step_ms']:.1f} ms  "
              f"{r['achieved_tflops']:.2f} TFLOP/s  {mfu}  ({r['samples']} samples in {r['seconds']:.1f} s)",
              flush=True)
    speedup = results["tosguard"]["samples_per_s"] / results["seed_recipe"]["samples_per_s"]
    print(f"speedup (samples/s): {speedup:.2f}x")
    bf16_speedup = (results["tosguard_bf16"]["samples_per_s"] / results["tosguard"]["samples_per_s"]
                    if args.cpu_bf16 else None)
    if bf16_speedup is not None:
        print(f"cpu bf16 autocast against fp32 (samples/s, tosguard's loader): {bf16_speedup:.2f}x")
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "method": args.method,
        "base_model": args.base_model, "batch_size": args.batch_size, "timed_steps": args.steps,
        "mean_train_tokens": float(np.mean(lengths)), **results, "speedup": speedup,
        "cpu_bf16_speedup": bf16_speedup,
    }
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
