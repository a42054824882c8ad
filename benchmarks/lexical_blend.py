"""How the lexical blend was chosen: features, C and weight, by validation over trained models.

For each model folder, scores the bundled validation and test splits with the encoder alone
(cached under --cache); then for each lexical variant (features x C) fit on the train split
and each blend weight, prints the mean validation and test macro-F1 (LexGLUE 8+1, decision
at 0.5) over the models. Choose by the validation column. Ends with a line `RESULT {json}`.
The variants use scikit-learn's own analyzers on the clauses as given; the shipped side
(components/lexical.py) is the `words12` variant with clitics rejoined and each clause cut
to the encoder's view, which moved the chosen row's means by 0.1 or less (validation
76.3 -> 76.4, test 82.7 -> 82.7 over the 9 models of docs/lab-notes.md, figures of a
scratch driver not kept).

    .venv/bin/python benchmarks/lexical_blend.py --models DIR [DIR ...] [--cache DIR]
        [--features words12,words13,words12+chars25] [--c 64,256,1024] [--weights 0.2,0.3,0.4]
        [--refit]

--refit adds, per row, what `lexical_refit` ships: the side fit again on train + validation,
its validation score out of fold (5 folds, each scored by a side fit on train and the other
folds) and its test score.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = {
    "words12": [{"ngram_range": (1, 2), "min_df": 2}],
    "words13": [{"ngram_range": (1, 3), "min_df": 2}],
    "chars25": [{"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 3, "max_features": 200000}],
    "words12+chars25": [{"ngram_range": (1, 2), "min_df": 2},
                        {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 3, "max_features": 200000}],
}


def _split(name: str):
    from tosguard.components.download import bundled_dir
    from tosguard.components.labels import multi_hot

    rows = [json.loads(line) for line in (bundled_dir() / f"{name}.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows], np.asarray([multi_hot(r["labels"]) for r in rows], dtype=np.int64)


def _encoder_scores(model_dir: str, texts: dict, cache: Path) -> dict:
    """The encoder's own sigmoid scores on each split (no blend, no calibration), cached."""
    key = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
    files = {split: cache / f"{key}-{split}.npy" for split in texts}
    if all(f.is_file() for f in files.values()):
        return {split: np.load(f) for split, f in files.items()}
    from tosguard.components.modeling import load_exported, score_encoded

    model, tokenizer, card = load_exported(model_dir)
    out = {}
    for split, split_texts in texts.items():
        ids = tokenizer(split_texts, truncation=True, max_length=int(card.get("max_length", 128)))["input_ids"]
        out[split] = score_encoded(model, ids, tokenizer.pad_token_id, 64, 8192)
        np.save(files[split], out[split])
    return out


def _lexical_logits(name: str, c: float, train, others: list) -> list:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizers = [TfidfVectorizer(sublinear_tf=True, **kw) for kw in FEATURES[name]]
    x_train = hstack([v.fit_transform(train[0]) for v in vectorizers]).tocsr()
    xs = [hstack([v.transform(texts) for v in vectorizers]).tocsr() for texts in others]
    logits = [np.zeros((x.shape[0], train[1].shape[1])) for x in xs]
    for k in range(train[1].shape[1]):
        regression = LogisticRegression(C=c, max_iter=5000).fit(x_train, train[1][:, k])
        for out, x in zip(logits, xs):
            out[:, k] = regression.decision_function(x)
    return logits


def _out_of_fold(name: str, c: float, train, val, folds: int = 5, seed: int = 42) -> np.ndarray:
    """Validation logits, each fold's from a side fit on train and the other folds."""
    fold = np.random.default_rng(seed).permutation(len(val[0])) % folds
    out = np.zeros(val[1].shape)
    for k in range(folds):
        inside, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fit_on = (train[0] + [val[0][i] for i in inside], np.concatenate([train[1], val[1][inside]]))
        (out[held],) = _lexical_logits(name, c, fit_on, [[val[0][i] for i in held]])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported model folders")
    parser.add_argument("--cache", default="/tmp/tosguard-lexical-blend", help="where encoder scores are cached")
    parser.add_argument("--features", default="words12,words13,chars25,words12+chars25")
    parser.add_argument("--c", default="64,256,1024")
    parser.add_argument("--weights", default="0.2,0.3,0.4")
    parser.add_argument("--refit", action="store_true", help="also the side refit on train + validation")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.features.split(",")) - set(FEATURES))
    if unknown:
        parser.error(f"unknown features {unknown}; choose from {', '.join(FEATURES)}")

    from tosguard.components.lexical import blend
    from tosguard.components.metrics import lexglue_scores

    started = time.time()
    train, val, test = _split("train"), _split("validation"), _split("test")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    encoders = [_encoder_scores(m, {"validation": val[0], "test": test[0]}, cache) for m in args.models]

    def macro(gold, scores):
        return lexglue_scores(gold, (scores > 0.5).astype(np.int64))["macro_f1"]

    alone = {"validation": statistics.mean(macro(val[1], e["validation"]) for e in encoders),
             "test": statistics.mean(macro(test[1], e["test"]) for e in encoders)}
    print(f"{len(encoders)} models, the encoder alone: validation {alone['validation']:.1f}, test {alone['test']:.1f}")
    rows = []
    for name in args.features.split(","):
        for c in (float(x) for x in args.c.split(",")):
            z_val, z_test = _lexical_logits(name, c, train, [val[0], test[0]])
            if args.refit:
                both = (train[0] + val[0], np.concatenate([train[1], val[1]]))
                (z_refit,) = _lexical_logits(name, c, both, [test[0]])
                z_oof = _out_of_fold(name, c, train, val)
            cells = []
            for weight in (float(x) for x in args.weights.split(",")):
                v = statistics.mean(macro(val[1], blend(e["validation"], z_val, weight)) for e in encoders)
                t = statistics.mean(macro(test[1], blend(e["test"], z_test, weight)) for e in encoders)
                row = {"features": name, "c": c, "weight": weight, "validation": v, "test": t}
                cells.append(f"w {weight}: {v:.1f} / {t:.1f}")
                if args.refit:
                    tests = [macro(test[1], blend(e["test"], z_refit, weight)) for e in encoders]
                    row.update(refit_validation_out_of_fold=statistics.mean(
                        macro(val[1], blend(e["validation"], z_oof, weight)) for e in encoders),
                        refit_test=statistics.mean(tests), refit_test_sd=statistics.stdev(tests) if len(tests) > 1 else 0.0)
                    cells[-1] += f" (refit {row['refit_validation_out_of_fold']:.1f} / {row['refit_test']:.1f})"
                rows.append(row)
            print(f"{name:16s} C {c:<6g} " + " | ".join(cells), flush=True)
    best = max(rows, key=lambda r: r["validation"])
    print(f"best on validation: {best['features']}, C {best['c']:g}, weight {best['weight']} "
          f"(validation {best['validation']:.1f}; test {best['test']:.1f}); {time.time() - started:.0f} s")
    print("RESULT " + json.dumps({"encoder_alone": alone, "rows": rows, "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
