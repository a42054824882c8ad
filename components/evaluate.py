"""Step 4, evaluate: the LexGLUE score on the full test split and a report placing this
run inside the published LexGLUE table."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from components.labels import CATEGORIES, NONE_COLUMN
from components.metrics import lexglue_scores, predict_from_probabilities, with_none_column
from components.modeling import load_exported, score_encoded

log = logging.getLogger(__name__)

# LexGLUE UNFAIR-ToS test micro/macro-F1, latest leaderboard (coastalcph/lex-glue README
# at 419a49d0; see components/data/unfair_tos/BASELINES.md for sources).
LEXGLUE_TABLE: tuple[tuple[str, float, float], ...] = (
    ("TFIDF-SVM", 94.7, 75.0),
    ("BERT (base)", 95.6, 81.3),
    ("RoBERTa (base)", 95.2, 79.2),
    ("DeBERTa (base)", 95.5, 80.3),
    ("Longformer (base)", 95.5, 80.9),
    ("BigBird (base)", 95.7, 81.3),
    ("Legal-BERT (base)", 96.0, 83.0),
    ("CaseLaw-BERT (base)", 96.0, 82.3),
    ("RoBERTa (large)", 95.8, 81.6),
)


def report_markdown(scores: dict, run_label: str) -> str:
    rows = [(name, micro, macro, False) for name, micro, macro in LEXGLUE_TABLE]
    rows.append((run_label, scores["micro_f1"], scores["macro_f1"], True))
    # The published rows carry one decimal, so the run is placed at that precision: a run
    # at 83.02 is level with a published 83.0, not above it. Macro-F1 first, micro-F1 breaks
    # a tie, and a run still tied goes below the published row.
    rows.sort(key=lambda r: (-round(r[2], 1), -round(r[1], 1), r[3]))
    rank = next(i for i, r in enumerate(rows, start=1) if r[3])
    level = [name for name, _, macro, ours in rows if not ours and macro == round(scores["macro_f1"], 1)]
    placed = f"rank {rank} of {len(rows)} by macro-F1 among the published LexGLUE rows"
    if level:
        placed += f"; level on macro-F1 with {', '.join(level)} at the table's one decimal"
    lines = [
        "# tosguard evaluation: LexGLUE UNFAIR-ToS",
        "",
        f"Test split: {scores['rows']} clauses. Metric: LexGLUE 8+1 (8 categories plus 'none'), "
        "sklearn micro/macro-F1 over 9 columns.",
        "",
        f"**This run: micro-F1 {scores['micro_f1']:.1f}, macro-F1 {scores['macro_f1']:.1f}** "
        f"({placed}).",
        "",
        "| rank | model | micro-F1 | macro-F1 |",
        "|---:|---|---:|---:|",
    ]
    for i, (name, micro, macro, ours) in enumerate(rows, start=1):
        cell = f"**{name}**" if ours else name
        lines.append(f"| {i} | {cell} | {micro:.1f} | {macro:.1f} |")
    lines += ["", "## Per-category F1 (test)", "", "| category | F1 |", "|---|---:|"]
    for name in list(CATEGORIES) + [NONE_COLUMN]:
        lines.append(f"| {name} | {scores['per_category_f1'][name]:.1f} |")
    lines += [
        "",
        "Published rows: LexGLUE leaderboard (Chalkidis et al., ACL 2022; coastalcph/lex-glue README), "
        "each the test score of the seed with the best validation macro-F1.",
    ]
    return "\n".join(lines) + "\n"


def evaluate(model_dir: str, tokenized_dir: str, split: str = "test") -> dict:
    """Score the exported model on a tokenized split with its shipped thresholds."""
    from datasets import load_from_disk

    model, tokenizer, card = load_exported(model_dir)
    data = load_from_disk(tokenized_dir)[split]
    probabilities = score_encoded(model, data["input_ids"], tokenizer.pad_token_id)
    gold = np.asarray(data["label_vector"], dtype=np.int64)
    predicted = predict_from_probabilities(probabilities, card["thresholds"])
    scores = lexglue_scores(gold, predicted)
    scores["split"] = split
    scores["confusion"] = {
        name: {
            "tp": int(((gold[:, i] == 1) & (predicted[:, i] == 1)).sum()),
            "fp": int(((gold[:, i] == 0) & (predicted[:, i] == 1)).sum()),
            "fn": int(((gold[:, i] == 1) & (predicted[:, i] == 0)).sum()),
            "tn": int(((gold[:, i] == 0) & (predicted[:, i] == 0)).sum()),
        }
        for i, name in enumerate(CATEGORIES)
    }
    # Multi-label confusion over the 8+1 columns: cell (i, j) counts clauses whose gold set
    # holds column i and whose predicted set holds column j.
    gold9, pred9 = with_none_column(gold), with_none_column(predicted)
    scores["confusion_matrix"] = {
        "labels": list(CATEGORIES) + [NONE_COLUMN],
        "matrix": (gold9.T @ pred9).astype(int).tolist(),
    }
    log.info("evaluate: %s micro-F1 %.1f macro-F1 %.1f", split, scores["micro_f1"], scores["macro_f1"])
    return scores


def write_outputs(scores: dict, run_label: str, metrics_path: str, report_path: str) -> None:
    Path(metrics_path).write_text(json.dumps(scores, indent=2))
    Path(report_path).write_text(report_markdown(scores, run_label))
