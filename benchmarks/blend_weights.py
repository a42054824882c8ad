"""The lexical blend's weight for trained models, with the side they ship (refit on train +
validation): for each weight, the mean over the models of the validation macro-F1 out of
fold (each validation clause scored by a side fit without it, as training calibrates) and
of the test macro-F1, decision at 0.5. Choose by the validation column.

The encoder does not depend on the weight (it trains and picks its epoch on its own
validation score), so re-blending a trained model at another weight gives what training
with that weight would have exported. Needs models whose card has a refit lexical side.
Ends with a line `RESULT {json}`.

    .venv/bin/python benchmarks/blend_weights.py --models DIR [DIR ...] [--weights 0,0.1,0.2,0.3,0.4,0.5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks

import calibration_study  # noqa: E402
from tosguard.components import lexical  # noqa: E402
from tosguard.components.download import bundled_dir  # noqa: E402
from tosguard.components.labels import CATEGORIES  # noqa: E402
from tosguard.components.metrics import lexglue_scores, predict_from_probabilities  # noqa: E402


def _split(name: str):
    return calibration_study._split(name, bundled_dir())


def member_logits(model_dir: str, train, val, test) -> dict:
    """The encoder's own validation/test scores and the shipped side's logits: out of fold on
    validation (the card's C, folds and fold seed), the exported side's on test."""
    from tosguard.components.modeling import load_exported, score_encoded

    model, tokenizer, card = load_exported(model_dir)
    entry = card.get("lexical") or {}
    if entry.get("fit_on", "train") == "train":
        raise SystemExit(f"{model_dir}: needs a model with a refit lexical side (lexical_refit)")
    calibration_study.check_refit_entry(model_dir, entry, len(train[0]), len(val[0]))
    max_length = int(card.get("max_length", 128))
    view = {name: lexical.encoder_view(tokenizer, texts, max_length)
            for name, texts in (("train", train[0]), ("validation", val[0]), ("test", test[0]))}
    scores = {name: score_encoded(model, tokenizer(texts, truncation=True, max_length=max_length)["input_ids"],
                                  tokenizer.pad_token_id, 64, 8192)
              for name, texts in (("validation", val[0]), ("test", test[0]))}
    _, out_of_fold = lexical.LexicalModel.cross_fit(view["train"], train[1], view["validation"], val[1],
                                                    float(entry["c"]), 0.0, folds=int(entry["folds"]),
                                                    seed=int(entry["fold_seed"]))
    side = lexical.LexicalModel.load(model_dir, card)
    return {"encoder_val": scores["validation"], "encoder_test": scores["test"],
            "lexical_val": out_of_fold, "lexical_test": side.logits(view["test"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5")
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    train, val, test = _split("train"), _split("validation"), _split("test")
    flat = [0.5] * len(CATEGORIES)

    def macro(gold, scores):
        return lexglue_scores(gold, predict_from_probabilities(scores, flat))["macro_f1"]

    started = time.time()
    per_weight = {w: {"val": [], "test": []} for w in weights}
    for model_dir in args.models:
        m = member_logits(model_dir, train, val, test)
        for w in weights:
            per_weight[w]["val"].append(macro(val[1], lexical.blend(m["encoder_val"], m["lexical_val"], w)))
            per_weight[w]["test"].append(macro(test[1], lexical.blend(m["encoder_test"], m["lexical_test"], w)))
        print(f"{model_dir}: " + ", ".join(f"w {w:g}: {per_weight[w]['val'][-1]:.1f}/{per_weight[w]['test'][-1]:.1f}"
                                           for w in weights), flush=True)
    rows = []
    print(f"\nmean over {len(args.models)} models (validation out of fold / test macro-F1), {time.time() - started:.0f} s:")
    for w in weights:
        row = {"weight": w, "val_mean": statistics.mean(per_weight[w]["val"]),
               "test_mean": statistics.mean(per_weight[w]["test"]),
               "test_std": statistics.stdev(per_weight[w]["test"]) if len(args.models) > 1 else 0.0,
               "val": per_weight[w]["val"], "test": per_weight[w]["test"]}
        rows.append(row)
        print(f"  weight {w:g}: {row['val_mean']:.1f} / {row['test_mean']:.1f} ± {row['test_std']:.1f}")
    chosen = max(rows, key=lambda r: r["val_mean"])
    print(f"chosen on validation: weight {chosen['weight']:g} (test {chosen['test_mean']:.1f})")
    print("RESULT " + json.dumps({"models": args.models, "rows": rows, "chosen_on_validation": chosen["weight"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
