"""What averaging trained seeds would give: each exported model's own scores (encoder blended
with its lexical side, as served), averaged in logit space over the models, on test.

Prints each model's test macro-F1 at 0.5, their mean, the average's test micro/macro-F1 at
0.5, the validation macro-F1 of the average (out of fold for refit lexical sides, as
calibration_study rebuilds them), and the time each model takes to load and score the test
split (an upper bound on its serving cost: loading is paid once by a server; an ensemble
served as one model pays the members' sum). Nothing here is served: it measures whether an
ensemble is worth building. Ends with a line `RESULT {json}`.

    .venv/bin/python benchmarks/seed_ensemble.py --models DIR [DIR ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks

import calibration_study  # noqa: E402
from tosguard.components.download import bundled_dir  # noqa: E402
from tosguard.components.labels import CATEGORIES  # noqa: E402
from tosguard.components.metrics import lexglue_scores, predict_from_probabilities  # noqa: E402


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def average(scores: list[np.ndarray]) -> np.ndarray:
    """The ensemble's probabilities: the mean of the members' logits, through the sigmoid."""
    return 1.0 / (1.0 + np.exp(-np.mean([_logit(s) for s in scores], axis=0)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    args = parser.parse_args(argv)
    study = calibration_study
    data = bundled_dir()
    train_text, train_gold = study._split("train", data)
    val_text, val_gold = study._split("validation", data)
    test_text, test_gold = study._split("test", data)
    flat = [0.5] * len(CATEGORIES)
    members, val_scores, test_scores = [], [], []
    for model_dir in args.models:
        val = study._raw_scores(model_dir, val_text, (train_text, train_gold, val_gold))
        started = time.time()
        test = study._raw_scores(model_dir, test_text)
        seconds = time.time() - started
        val_scores.append(val)
        test_scores.append(test)
        members.append({"model": model_dir, "seconds_test": seconds,
                        "val_macro_f1": lexglue_scores(val_gold, predict_from_probabilities(val, flat))["macro_f1"],
                        "test_macro_f1": lexglue_scores(test_gold, predict_from_probabilities(test, flat))["macro_f1"]})
        print(f"{model_dir}: validation {members[-1]['val_macro_f1']:.1f}, test {members[-1]['test_macro_f1']:.1f} "
              f"({seconds:.0f} s to load and score the {len(test_text)} test clauses)", flush=True)
    ensemble_test = lexglue_scores(test_gold, predict_from_probabilities(average(test_scores), flat))
    ensemble_val = lexglue_scores(val_gold, predict_from_probabilities(average(val_scores), flat))
    macros = [m["test_macro_f1"] for m in members]
    result = {
        "members": members,
        "member_test_macro_f1_mean": statistics.mean(macros),
        "member_test_macro_f1_std": statistics.stdev(macros) if len(macros) > 1 else 0.0,
        "ensemble_val_macro_f1": ensemble_val["macro_f1"],
        "ensemble_test_micro_f1": ensemble_test["micro_f1"], "ensemble_test_macro_f1": ensemble_test["macro_f1"],
        "ensemble_per_category_f1": ensemble_test["per_category_f1"],
        "ensemble_seconds_test": sum(m["seconds_test"] for m in members),
    }
    print(f"members: test macro-F1 mean {result['member_test_macro_f1_mean']:.1f} "
          f"± {result['member_test_macro_f1_std']:.1f}; the average of {len(members)}: validation "
          f"{ensemble_val['macro_f1']:.1f}, test micro/macro-F1 {ensemble_test['micro_f1']:.1f}/"
          f"{ensemble_test['macro_f1']:.1f}; load and score {result['ensemble_seconds_test']:.0f} s for the test split "
          f"(the members' sum)")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
