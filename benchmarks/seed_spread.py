"""Quality over seeds: train and evaluate the same recipe with several seeds.

Prints, per seed, the best validation epoch and macro-F1 and the test micro/macro-F1
(LexGLUE 8+1), then the mean and standard deviation over seeds and the LexGLUE-style
figure (the test score of the seed with the best validation macro-F1). Ends with a line
`RESULT {json}`.

    .venv/bin/python benchmarks/seed_spread.py --preset default --seeds 42 1 2 [--method lora]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--method")
    parser.add_argument("--base-model")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--target-modules", help="comma-separated LoRA targets (default: per architecture)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")  # per-epoch lines

    import torch

    from tosguard.components.config import preset
    from tosguard.components.download import download
    from tosguard.components.evaluate import evaluate
    from tosguard.components.tokenize import tokenize
    from tosguard.components.train.loop import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = preset(args.preset, method=args.method, base_model=args.base_model, epochs=args.epochs,
                      learning_rate=args.learning_rate, target_modules=args.target_modules
                      ).resolved(cuda=torch.cuda.is_available())
        download("bundled", f"{tmp}/raw")
        tokenize(f"{tmp}/raw", base.base_model, base.max_length, f"{tmp}/tok")
        for seed in args.seeds:
            config = replace(base, seed=seed)
            started = time.time()
            summary = train(f"{tmp}/tok", config, f"{tmp}/model-{seed}")
            scores = evaluate(f"{tmp}/model-{seed}", f"{tmp}/tok")
            row = {
                "seed": seed, "best_epoch": summary["best_epoch"], "val_macro_f1": summary["best_val_macro_f1"],
                "test_micro_f1": scores["micro_f1"], "test_macro_f1": scores["macro_f1"],
                "val_curve": [round(h["val_macro_f1"], 1) for h in summary["history"]],
                "seconds": time.time() - started,
            }
            rows.append(row)
            print(f"seed {seed}: best epoch {row['best_epoch']} (validation macro-F1 {row['val_macro_f1']:.1f}), "
                  f"test micro/macro-F1 {row['test_micro_f1']:.1f}/{row['test_macro_f1']:.1f}, {row['seconds']:.0f} s",
                  flush=True)
    macro = [r["test_macro_f1"] for r in rows]
    micro = [r["test_micro_f1"] for r in rows]
    chosen = max(rows, key=lambda r: r["val_macro_f1"])
    result = {
        "config": {k: v for k, v in json.loads(base.to_json()).items() if k != "seed"},  # seeds: below
        "seeds": rows,
        "test_macro_f1_mean": statistics.mean(macro),
        "test_macro_f1_std": statistics.stdev(macro) if len(macro) > 1 else 0.0,
        "test_micro_f1_mean": statistics.mean(micro),
        "lexglue_style": {"seed": chosen["seed"], "test_micro_f1": chosen["test_micro_f1"],
                          "test_macro_f1": chosen["test_macro_f1"]},
    }
    print(f"test macro-F1 over {len(rows)} seeds: mean {result['test_macro_f1_mean']:.1f} "
          f"± {result['test_macro_f1_std']:.1f}; LexGLUE-style (best validation seed {chosen['seed']}): "
          f"{chosen['test_micro_f1']:.1f}/{chosen['test_macro_f1']:.1f}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
