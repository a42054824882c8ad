"""Decision thresholds, calibration and the triage profile, measured over trained seeds.

For each exported model: raw sigmoid scores on the validation and test splits. Then

- thresholds: a flat 0.5; one global threshold chosen on validation (grid 0.05-0.95,
  the best validation macro-F1); one threshold per category chosen on validation. Each
  is applied to test. A method earns its place only if it beats 0.5 on test on average
  over the seeds.
- calibration: Platt per category fit on validation (what training ships), expected
  calibration error on test before and after.
- triage: thresholds for 0.9 validation recall per category (calibration.py), test recall,
  precision and the share of clauses flagged, against the default profile.

    .venv/bin/python benchmarks/calibration_study.py --models DIR [DIR ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tosguard.components import calibration  # noqa: E402
from tosguard.components.download import bundled_dir  # noqa: E402
from tosguard.components.labels import CATEGORIES, multi_hot  # noqa: E402
from tosguard.components.metrics import lexglue_scores, predict_from_probabilities  # noqa: E402

GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def _split(name: str, data: Path) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows], np.asarray([multi_hot(r["labels"]) for r in rows], dtype=np.int64)


def check_refit_entry(model_dir: str, entry: dict, train_rows: int, validation_rows: int) -> None:
    """Stop unless a refit lexical side's out-of-fold validation scores can be rebuilt here:
    the card keeps C, the folds and their seed, and it was cross-fit on as many train and
    validation clauses as given (a model trained on a subset was not)."""
    missing = [key for key in ("c", "folds", "fold_seed") if key not in entry]
    if missing:
        raise SystemExit(f"{model_dir}: the card's lexical entry lacks {', '.join(missing)} (a model trained "
                         "before they were kept): its out-of-fold validation scores cannot be rebuilt; retrain it")
    rows = entry.get("rows")
    if not rows:
        print(f"warning: {model_dir}: the card does not say how many clauses its side was cross-fit on; "
              f"assuming the full splits ({train_rows} train, {validation_rows} validation)", file=sys.stderr)
    elif (rows.get("train"), rows.get("validation")) != (train_rows, validation_rows):
        raise SystemExit(f"{model_dir}: its lexical side was cross-fit on {rows.get('train')} train and "
                         f"{rows.get('validation')} validation clauses, here there are {train_rows} and "
                         f"{validation_rows} (a model trained on a subset): the folds cannot be rebuilt")


def _raw_scores(model_dir: str, texts: list[str], out_of_fold: tuple | None = None) -> np.ndarray:
    """The model's scores before calibration: the encoder's, blended with its lexical side
    where it has one (what calibration is fit on at training time). out_of_fold: for the
    validation split, (train texts, train gold, validation gold): a side refit on train +
    validation (`lexical_refit`) saw these clauses, so they are scored out of fold, as
    training calibrated them (the card keeps the folds and their seed)."""
    from tosguard.components import lexical
    from tosguard.components.modeling import load_exported, score_encoded

    model, tokenizer, card = load_exported(model_dir)
    max_length = int(card.get("max_length", 128))
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    scores = score_encoded(model, ids, tokenizer.pad_token_id, 64, 8192)
    entry = card.get("lexical") or {}
    if out_of_fold is not None and entry.get("fit_on", "train") != "train":
        train_text, train_gold, gold = out_of_fold
        check_refit_entry(model_dir, entry, len(train_text), len(texts))
        _, logits = lexical.LexicalModel.cross_fit(
            lexical.encoder_view(tokenizer, train_text, max_length), train_gold,
            lexical.encoder_view(tokenizer, texts, max_length), gold, float(entry["c"]), float(entry["weight"]),
            folds=int(entry["folds"]), seed=int(entry["fold_seed"]))
        return lexical.blend(scores, logits, float(entry["weight"]))
    return lexical.apply_to_clauses(scores, lexical.LexicalModel.load(model_dir, card), tokenizer, texts, max_length)


def _macro(gold, scores, thresholds) -> float:
    return lexglue_scores(gold, predict_from_probabilities(scores, thresholds))["macro_f1"]


def _per_category_f1(gold_k, found_k) -> float:
    tp = int(((gold_k == 1) & found_k).sum())
    denominator = 2 * tp + int(((gold_k == 0) & found_k).sum()) + int(((gold_k == 1) & ~found_k).sum())
    return 2 * tp / denominator if denominator else 0.0


def study(model_dir: str, data: Path) -> dict:
    started = time.time()
    (val_text, val_gold), (test_text, test_gold) = _split("validation", data), _split("test", data)
    train_text, train_gold = _split("train", data)
    val = _raw_scores(model_dir, val_text, (train_text, train_gold, val_gold))
    test = _raw_scores(model_dir, test_text)
    k = len(CATEGORIES)
    flat = _macro(test_gold, test, [0.5] * k)
    best_global = max(GRID, key=lambda t: (_macro(val_gold, val, [t] * k), -abs(t - 0.5)))
    per_category = [float(max(GRID, key=lambda t: (_per_category_f1(val_gold[:, c], val[:, c] > t), -abs(t - 0.5))))
                    for c in range(k)]
    fitted = calibration.fit(val, val_gold)
    params = fitted["calibration"]["params"]
    calibrated_test = calibration.apply(test, params)
    before = calibration.expected_calibration_error(test, test_gold)
    after = calibration.expected_calibration_error(calibrated_test, test_gold)

    def profile(thresholds):
        found = calibrated_test > np.asarray(thresholds)[None, :]
        tp = (found & (test_gold == 1)).sum(axis=0)
        return {"recall": float(np.mean(tp / np.maximum(test_gold.sum(axis=0), 1))),
                "precision": float(np.mean(tp / np.maximum(found.sum(axis=0), 1))),
                "min_recall": float(np.min(tp / np.maximum(test_gold.sum(axis=0), 1))),
                "flagged": float((found.sum(axis=1) > 0).mean()),
                "macro_f1": lexglue_scores(test_gold, found.astype(np.int64))["macro_f1"]}

    return {
        "model": model_dir, "seconds": round(time.time() - started, 1),
        "test_macro_f1": {"flat 0.5": flat, "global (validation)": _macro(test_gold, test, [best_global] * k),
                          "per category (validation)": _macro(test_gold, test, per_category)},
        "global_threshold": float(best_global), "per_category_thresholds": per_category,
        "ece": {"raw": before["ece"], "calibrated": after["ece"], "raw_per_category": before["mean_category_ece"],
                "calibrated_per_category": after["mean_category_ece"]},
        "default": profile(fitted["thresholds"]), "triage": profile(fitted["profiles"]["triage"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported model folders (one per seed)")
    parser.add_argument("--data", default=str(bundled_dir()), help="folder with validation.jsonl and test.jsonl")
    parser.add_argument("--json", help="also write the per-model results here")
    args = parser.parse_args(argv)
    results = []
    for model in args.models:
        result = study(model, Path(args.data))
        results.append(result)
        print(f"{model}: " + ", ".join(f"{k} {v:.1f}" for k, v in result["test_macro_f1"].items())
              + f" ({result['seconds']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

    def mean_sd(values):
        values = np.asarray(values, dtype=float)
        return f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0:.1f}"

    print(f"\nTest macro-F1 over {len(results)} models (mean ± sd):")
    for method in results[0]["test_macro_f1"]:
        print(f"  {method:<28} {mean_sd([r['test_macro_f1'][method] for r in results])}")
    print("  global thresholds chosen: " + ", ".join(f"{r['global_threshold']:.2f}" for r in results))
    print("ECE on test, percent (every clause-category score / mean per category):")
    print(f"  raw        {mean_sd([r['ece']['raw'] for r in results])} / "
          f"{mean_sd([r['ece']['raw_per_category'] for r in results])}")
    print(f"  calibrated {mean_sd([r['ece']['calibrated'] for r in results])} / "
          f"{mean_sd([r['ece']['calibrated_per_category'] for r in results])}")
    print("Profiles on test (mean over categories, then over models):")
    for name in ("default", "triage"):
        rows = [r[name] for r in results]
        print(f"  {name:<8} recall {mean_sd([100 * x['recall'] for x in rows])} (lowest category "
              f"{mean_sd([100 * x['min_recall'] for x in rows])}), precision "
              f"{mean_sd([100 * x['precision'] for x in rows])}, clauses flagged "
              f"{mean_sd([100 * x['flagged'] for x in rows])}%, macro-F1 {mean_sd([x['macro_f1'] for x in rows])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
