"""The LexGLUE 8+1 metric against cases computed by hand."""
import numpy as np
import pytest

from tosguard.components.labels import CATEGORIES, NONE_COLUMN
from tosguard.components.labels import multi_hot as row
from tosguard.components.metrics import lexglue_scores, predict_from_probabilities, with_none_column


def multi_hot(label_lists):
    return np.asarray([row(labels) for labels in label_lists], dtype=np.int64)


def test_none_column_marks_rows_without_labels():
    m = with_none_column(multi_hot([[], [0, 3], []]))
    assert m.shape == (3, 9)
    assert m[:, 8].tolist() == [1, 0, 1]
    assert m[1, :8].tolist() == [1, 0, 0, 1, 0, 0, 0, 0]


def test_perfect_predictions_score_100():
    gold = multi_hot([[0], [], [1, 2], [3], [4, 5], [6], [7]])
    scores = lexglue_scores(gold, gold)
    assert scores["micro_f1"] == pytest.approx(100.0)
    assert scores["macro_f1"] == pytest.approx(100.0)


def test_hand_computed_case():
    # Rows: gold / predicted
    #  r0: [0]   / [0]      -> cat0 TP
    #  r1: []    / []       -> none TP
    #  r2: []    / [1]      -> cat1 FP, none FN
    #  r3: [2]   / []       -> cat2 FN, none FP
    gold = multi_hot([[0], [], [], [2]])
    pred = multi_hot([[0], [], [1], []])
    s = lexglue_scores(gold, pred)
    # Totals over 9 columns: TP 2 (cat0, none r1), FP 2 (cat1 r2, none r3), FN 2 (cat2 r3, none r2)
    assert s["micro_f1"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 2 + 2))  # 50.0
    # Per column F1: cat0 1.0; cat1 0 (FP only); cat2 0 (FN only); cats 3-7 no support and
    # no predictions -> 0 (sklearn zero_division=0, as LexGLUE's sklearn call scores them);
    # none: TP1 FP1 FN1 -> 0.5
    per = s["per_category_f1"]
    assert per[CATEGORIES[0]] == pytest.approx(100.0)
    assert per[CATEGORIES[1]] == 0 and per[CATEGORIES[2]] == 0
    assert per[NONE_COLUMN] == pytest.approx(50.0)
    assert s["macro_f1"] == pytest.approx(100 * (1.0 + 0.5) / 9)


def test_predicting_nothing_only_scores_the_none_column():
    gold = multi_hot([[0], [], [], []])
    pred = multi_hot([[], [], [], []])
    s = lexglue_scores(gold, pred)
    # none column: gold [0,1,1,1], pred [1,1,1,1] -> P 3/4, R 1 -> F1 6/7
    assert s["per_category_f1"][NONE_COLUMN] == pytest.approx(100 * 6 / 7)
    assert s["macro_f1"] == pytest.approx(100 * (6 / 7) / 9)


def test_thresholds_are_strictly_exceeded_per_category():
    probs = np.array([[0.5, 0.7] + [0.0] * 6, [0.51, 0.69] + [0.0] * 6])
    pred = predict_from_probabilities(probs, [0.5, 0.7] + [0.5] * 6)
    assert pred[:, :2].tolist() == [[0, 0], [1, 0]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        lexglue_scores(np.zeros((2, 8)), np.zeros((2, 7)))
