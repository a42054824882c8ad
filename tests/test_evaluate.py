"""Evaluate step: the score on a split and the report inside the LexGLUE table."""
from tosguard.components.evaluate import LEXGLUE_TABLE, evaluate, report_markdown
from tosguard.components.labels import CATEGORIES


def test_evaluate_scores_every_row_and_fills_the_confusion(trained_model_dir, tokenized_dir):
    scores = evaluate(str(trained_model_dir), str(tokenized_dir))
    assert scores["rows"] == 160
    assert 0 <= scores["macro_f1"] <= scores["micro_f1"] <= 100
    for name in CATEGORIES:
        c = scores["confusion"][name]
        assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == 160
    # The 9x9 gold-by-predicted matrix: its diagonal holds each category's true positives.
    matrix = scores["confusion_matrix"]["matrix"]
    assert len(matrix) == 9 and all(len(row) == 9 for row in matrix)
    for i, name in enumerate(CATEGORIES):
        assert matrix[i][i] == scores["confusion"][name]["tp"]


def test_report_places_the_run_inside_the_published_table():
    per = {name: 50.0 for name in list(CATEGORIES) + ["None (fair)"]}
    md = report_markdown({"micro_f1": 95.9, "macro_f1": 82.0, "per_category_f1": per, "rows": 1607}, "this run")
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(table) == len(LEXGLUE_TABLE) + 1
    names = [row.split("|")[2].strip() for row in table]
    # 82.0 sits below Legal-BERT (83.0) and CaseLaw-BERT (82.3), above RoBERTa-large (81.6).
    assert names[:3] == ["Legal-BERT (base)", "CaseLaw-BERT (base)", "**this run**"]
    assert "rank 3 of 10" in md


def test_report_places_a_run_at_the_tables_precision():
    """83.02 is level with Legal-BERT's published 83.0, not above it; micro-F1 breaks the tie."""
    per = {name: 50.0 for name in list(CATEGORIES) + ["None (fair)"]}
    md = report_markdown({"micro_f1": 95.7, "macro_f1": 83.02, "per_category_f1": per, "rows": 1607}, "this run")
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    names = [row.split("|")[2].strip() for row in table]
    assert names[:2] == ["Legal-BERT (base)", "**this run**"]
    assert "rank 2 of 10" in md and "level on macro-F1 with Legal-BERT (base)" in md
    # Clearly above at one decimal: first, and level with no one.
    md = report_markdown({"micro_f1": 95.7, "macro_f1": 83.06, "per_category_f1": per, "rows": 1607}, "this run")
    assert "rank 1 of 10" in md and "level on" not in md
