"""Calibration, its error measure and the decision profiles, on data with a known answer."""
import numpy as np
import pytest

from tosguard.components import calibration as C


def _distorted(n: int = 6000, k: int = 3, seed: int = 0):
    """True probabilities, gold drawn from them, and raw scores that are overconfident and
    shifted by a different amount per category (what an uncalibrated model gives)."""
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-rng.normal(-2.5, 1.5, size=(n, k))))
    gold = (rng.random((n, k)) < truth).astype(int)
    logit = np.log(truth / (1 - truth))
    raw = 1 / (1 + np.exp(-(np.array([2.0, 1.5, 0.7]) * logit + np.array([1.0, -0.5, 0.3]))))
    return truth, gold, raw


def test_platt_undoes_a_known_distortion_and_lowers_the_error_on_fresh_rows():
    _, gold, raw = _distorted(seed=0)
    params = C.fit_platt(raw, gold)
    # The distortion was a * logit + b with a = 2.0, 1.5, 0.7: the fit inverts it (1/a).
    for (a, b), true_a, true_b in zip(params, [2.0, 1.5, 0.7], [1.0, -0.5, 0.3]):
        assert a == pytest.approx(1 / true_a, rel=0.15)
        assert b == pytest.approx(-true_b / true_a, abs=0.25)
    _, gold_new, raw_new = _distorted(seed=1)  # measured on rows the fit never saw
    before = C.expected_calibration_error(raw_new, gold_new)
    after = C.expected_calibration_error(C.apply(raw_new, params), gold_new)
    assert after["mean_category_ece"] < before["mean_category_ece"] / 3
    assert after["ece"] < before["ece"]


def test_calibration_keeps_the_order_of_scores_and_the_default_decisions():
    _, gold, raw = _distorted()
    fitted = C.fit(raw, gold)
    calibrated = C.apply(raw, fitted["calibration"]["params"])
    for k in range(raw.shape[1]):
        order = np.argsort(raw[:, k], kind="stable")
        assert np.all(np.diff(calibrated[order, k]) >= -1e-7)  # monotone: ranking unchanged
    # The default profile is the raw 0.5 mapped through the calibration: same verdicts.
    assert np.array_equal(raw > 0.5, calibrated > np.asarray(fitted["thresholds"])[None, :])


def test_triage_thresholds_reach_the_recall_target_and_never_raise_a_threshold():
    _, gold, raw = _distorted()
    fitted = C.fit(raw, gold)
    calibrated = C.apply(raw, fitted["calibration"]["params"])
    triage = np.asarray(fitted["profiles"]["triage"])
    assert np.all(triage <= np.asarray(fitted["thresholds"]) + 1e-12)
    found = calibrated > triage[None, :]
    recall = (found & (gold == 1)).sum(axis=0) / gold.sum(axis=0)
    assert np.all(recall >= C.TRIAGE_RECALL)
    default_recall = ((calibrated > np.asarray(fitted["thresholds"])) & (gold == 1)).sum(axis=0) / gold.sum(axis=0)
    assert np.all(recall >= default_recall)


def test_a_category_without_positives_or_with_reversed_scores_keeps_the_identity():
    rng = np.random.default_rng(3)
    raw = rng.random((500, 2))
    gold = np.zeros((500, 2), dtype=int)
    gold[:, 1] = (raw[:, 1] < 0.2).astype(int)  # higher score, fewer positives: anti-correlated
    params = C.fit_platt(raw, gold)
    assert params[1] == [1.0, 0.0]  # never flips the ranking
    assert 0 < params[0][0]  # no positives: pushed down, order kept
    assert C.recall_thresholds(raw, gold)[0] == 0.5  # nothing to recall: no triage change


def test_ece_is_zero_for_perfect_bins_and_large_for_confident_mistakes():
    scores = np.array([[0.05], [0.05], [0.95], [0.95]] * 50)
    good = np.array([[0], [0], [1], [1]] * 50)
    assert C.expected_calibration_error(scores, good)["ece"] == pytest.approx(5.0)
    wrong = 1 - good
    assert C.expected_calibration_error(scores, wrong)["ece"] == pytest.approx(95.0)


def test_profiles_from_the_card():
    card = {"thresholds": [0.3, 0.4], "profiles": {"triage": [0.1, 0.2]}}
    assert C.profile_thresholds(card, "default") == [0.3, 0.4]
    assert C.profile_thresholds(card, "triage") == [0.1, 0.2]
    with pytest.raises(ValueError, match="no 'triage' profile"):
        C.profile_thresholds({"thresholds": [0.5, 0.5]}, "triage")
    with pytest.raises(ValueError, match="profile must be one of"):
        C.profile_thresholds(card, "paranoid")
    assert C.card_params({"thresholds": [0.5]}) is None
    raw = np.array([[0.2, 0.7]], dtype=np.float32)
    assert np.array_equal(C.apply(raw, None), raw)


def test_triage_keeps_positives_whose_scores_are_vanishingly_small():
    scores = np.array([[1e-11], [2e-11], [0.7], [0.8], [1e-12]], dtype=np.float32)
    gold = np.array([[1], [1], [1], [1], [0]])
    (threshold,) = C.recall_thresholds(scores, gold, target=1.0)
    assert ((scores[:, 0] > np.float32(threshold)) & (gold[:, 0] == 1)).sum() == 4
