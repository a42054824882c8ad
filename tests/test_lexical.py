"""The lexical side: its transform is scikit-learn's, what is stored reloads to the same
logits, the blend does what it says, and the served and evaluated scores carry it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tosguard.components import lexical
from tosguard.components.lexical import LexicalModel

CLAUSES = [
    "We may terminate your account at any time without notice.",
    "We may terminate or suspend your access immediately, for any reason.",
    "These Terms are governed by the laws of the State of California.",
    "These Terms are governed by the laws of England and Wales.",
    "We are not liable for any indirect or consequential damages.",
    "In no event shall we be liable for lost profits or damages.",
    "You can contact us by email at any time.",
    "The service is provided in English and French.",
    "Any dispute shall be resolved by binding arbitration.",
    "Disputes will be settled by arbitration in San Francisco.",
]
LABELS = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0],
                   [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_features_match_scikit_learns_tfidf_transform():
    from sklearn.feature_extraction.text import TfidfVectorizer

    model = LexicalModel.fit(CLAUSES, LABELS, c=10.0)
    reference = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(CLAUSES)
    unseen = ["WE MAY terminate terminate terminate your account, at any time!", "", "Ünïcode café laws laws",
              "governed by the laws of the State of California and the laws of England"]
    for texts in (CLAUSES, unseen):
        ours, theirs = model.features(texts).toarray(), reference.transform(texts).toarray()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert model.features(["", "qqq zzz"]).nnz == 0  # nothing known: an empty row, not a NaN


def test_word_tokenised_and_raw_text_give_the_same_terms():
    """LexGLUE's clauses are word-tokenised, served text is raw: the terms must agree."""
    assert lexical.terms("You do n't own the company 's content") == lexical.terms("You don't own the company's content")
    assert lexical.terms("We 're not liable , and we 'll decide .") == lexical.terms("We're not liable, and we'll decide.")


def test_the_lexical_side_sees_what_the_encoder_saw():
    """Neutral text padded on past the encoder's window is cut before the lexical side
    scores the clause, so it cannot wash the clause out."""
    from tosguard.components.config import DEFAULT_BASE_MODEL
    from tosguard.components.modeling import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model(DEFAULT_BASE_MODEL))
    clause = "We may terminate your account at any time without notice."
    padded = clause + " The service is provided in English and French." * 300
    short, cut = lexical.encoder_view(tokenizer, [clause, padded], 128)
    assert short == clause
    assert padded.startswith(cut) and len(tokenizer(cut)["input_ids"]) == 128 and len(cut) < len(padded) / 20
    model = LexicalModel.fit(CLAUSES, LABELS, c=100.0)
    alone, seen, whole = model.logits([clause, cut, padded])[:, 1]
    # The whole padded text pushes the termination logit down to the intercept; the cut
    # text (the clause and about ten neutral sentences) keeps a good part of it.
    assert alone > seen > whole + 1 and whole == pytest.approx(model.logits([""])[0, 1], abs=0.5)


def test_it_learns_the_categories_and_a_category_without_positives_never_fires():
    model = LexicalModel.fit(CLAUSES, LABELS, c=100.0)
    logits = model.logits(["We may terminate your account without notice.", "Governed by the laws of California."])
    assert logits[0, 1] > 0 > logits[0, 0] and logits[1, 0] > 0 > logits[1, 1]
    assert (logits[:, 2] <= -19).all()  # no positive training clause: never found


def test_save_and_load_give_the_same_logits(tmp_path):
    model = LexicalModel.fit(CLAUSES, LABELS, c=100.0, weight=0.4)
    entry = model.save(tmp_path)
    assert entry["weight"] == 0.4 and entry["terms"] == len(model.vocabulary)
    loaded = LexicalModel.load(tmp_path, {"lexical": entry})
    texts = CLAUSES + ["an unseen clause about arbitration and the laws"]
    np.testing.assert_allclose(loaded.logits(texts), model.logits(texts), atol=1e-4)  # stored as float32
    assert loaded.weight == 0.4
    assert LexicalModel.load(tmp_path, {}) is None  # a card without a lexical side
    with pytest.raises(ValueError, match="weight must be a number"):
        LexicalModel.load(tmp_path, {"lexical": {**entry, "weight": 1.5}})
    (tmp_path / lexical.TERMS_FILE).write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="must be a JSON list"):
        LexicalModel.load(tmp_path, {"lexical": entry})
    (tmp_path / lexical.TERMS_FILE).unlink()
    with pytest.raises(ValueError, match="lexical_terms.json is missing"):
        LexicalModel.load(tmp_path, {"lexical": entry})


def test_unusable_lexical_files_fail_at_load_and_say_where(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = LexicalModel.fit(CLAUSES, LABELS, c=100.0, weight=0.4)
    entry = model.save(tmp_path)
    card = {"categories": ["a", "b", "c"], "lexical": entry}
    assert LexicalModel.load(tmp_path, card) is not None
    arrays = load_file(str(tmp_path / lexical.WEIGHTS_FILE))
    cases = {
        "must be an object": ({**card, "lexical": None}, None),
        "unknown blend": ({**card, "lexical": {**entry, "blend": "probability"}}, None),
        "weight must be a number": ({**card, "lexical": {**entry, "weight": True}}, None),
        "counts 5 terms": ({**card, "lexical": {**entry, "terms": 5}}, None),
        "names 4": ({**card, "categories": ["a", "b", "c", "d"]}, None),
        "NaN or infinite": (card, {**arrays, "coef": np.full_like(arrays["coef"], np.nan)}),
        "idf values must be >= 1": (card, {**arrays, "idf": -arrays["idf"]}),
        "lacks ['intercept']": (card, {"idf": arrays["idf"], "coef": arrays["coef"]}),
    }
    for message, (bad_card, bad_arrays) in cases.items():
        save_file(bad_arrays or arrays, str(tmp_path / lexical.WEIGHTS_FILE))
        with pytest.raises(ValueError, match="not usable") as caught:
            LexicalModel.load(tmp_path, bad_card)
        assert message in str(caught.value) and str(tmp_path) in str(caught.value)
    (tmp_path / lexical.WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="cannot be read"):
        LexicalModel.load(tmp_path, card)
    (tmp_path / lexical.WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="lexical.safetensors is missing"):
        LexicalModel.load(tmp_path, card)


def test_a_train_split_with_no_usable_words_says_what_to_do():
    with pytest.raises(ValueError, match="lexical_weight=0"):
        LexicalModel.fit(["!!", "?", "a b"], np.zeros((3, 2)))


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError, match="shapes disagree"):
        LexicalModel(["a", "b"], np.ones(3), np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="repeat"):
        LexicalModel(["a", "a"], np.ones(2), np.zeros((1, 2)), np.zeros(1))


def test_blend_is_a_weighted_sum_of_logits():
    p = np.array([[0.9, 0.1, 0.5]], dtype=np.float32)
    z = np.array([[-2.0, 3.0, 0.0]])
    np.testing.assert_allclose(lexical.blend(p, z, 0.0), p, rtol=1e-6)
    expected = 1 / (1 + np.exp(-(0.6 * np.log(p / (1 - p)) + 0.4 * z)))
    out = lexical.blend(p, z, 0.4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert np.isfinite(lexical.blend(np.array([[0.0, 1.0, 0.5]]), np.zeros((1, 3)), 0.4)).all()
    with pytest.raises(ValueError, match="differ in shape"):
        lexical.blend(p, np.zeros((2, 3)), 0.4)


def test_served_and_evaluated_scores_carry_the_blend(trained_model_dir, tokenized_dir, tmp_path):
    """The fixture model is trained with the default lexical weight: its card names the
    lexical side, serving blends it in, and dropping it from the card changes the scores
    by exactly the blend."""
    from datasets import load_from_disk

    from tosguard.components import calibration
    from tosguard.components.config import CARD_FILE
    from tosguard.components.serving.scorer import ClauseScorer

    card = json.loads((trained_model_dir / CARD_FILE).read_text())
    assert card["lexical"]["weight"] == 0.4 and card["lexical"]["terms"] > 100
    texts = load_from_disk(str(tokenized_dir))["test"]["text"][:24]
    texts.append("We may terminate your account at any time." + " The service is offered in English." * 200)
    served = ClauseScorer(str(trained_model_dir), "fp32")
    assert served.lexical is not None

    bare = tmp_path / "bare"
    shutil.copytree(trained_model_dir, bare)
    card_without = {k: v for k, v in card.items() if k != "lexical"}
    (bare / CARD_FILE).write_text(json.dumps(card_without))
    encoder_only = ClauseScorer(str(bare), "fp32")
    assert encoder_only.lexical is None

    # Undo the calibration on the encoder-only scores, blend, and calibrate again.
    params = calibration.card_params(card)
    from tosguard.components.modeling import score_encoded

    ids = served.tokenizer(texts, truncation=True, max_length=served.max_length)["input_ids"]
    raw = score_encoded(served.classifier, ids, served.tokenizer.pad_token_id)
    seen = lexical.encoder_view(served.tokenizer, texts, served.max_length)
    assert seen[-1] != texts[-1] and texts[-1].startswith(seen[-1])
    expected = calibration.apply(lexical.blend(raw, served.lexical.logits(seen), 0.4), params)
    got = served.raw_scores(texts)[:, :-1]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, encoder_only.raw_scores(texts)[:, :-1], atol=1e-3)


def test_the_setting_is_validated_and_keys_the_model():
    from tosguard.components.config import PRESETS, TrainConfig

    assert PRESETS["default"].lexical_weight == 0.4 and PRESETS["quality"].lexical_weight == 0.4
    for bad in ({"lexical_weight": 1.0}, {"lexical_weight": -0.1}, {"lexical_weight": float("nan")},
                {"lexical_c": 0}, {"lexical_c": float("nan")}):
        with pytest.raises(ValueError, match="lexical_"):
            TrainConfig.from_dict(bad)
    # A blended model and the encoder alone are different models in the store...
    assert TrainConfig().key_json() != TrainConfig(lexical_weight=0.0).key_json()
    # ...and turning the blend off gives the key a model trained before the setting existed had.
    assert "lexical" not in TrainConfig(lexical_weight=0.0).key_json()
    assert TrainConfig(lexical_weight=0.3).key_json() != TrainConfig(lexical_weight=0.4).key_json()
    assert TrainConfig(lexical_weight=0.0, lexical_c=10).key_json() == TrainConfig(lexical_weight=0.0).key_json()
    # Refitting on validation is another model; with no blend it changes nothing.
    assert TrainConfig().key_json() != TrainConfig(lexical_refit=False).key_json()
    assert TrainConfig(lexical_weight=0.0, lexical_refit=False).key_json() == TrainConfig(lexical_weight=0.0).key_json()
    assert "lexical_refit" not in TrainConfig(lexical_refit=False).key_json()


def test_cross_fit_scores_each_held_clause_with_a_side_that_never_saw_it():
    """The refit: the returned model is the fit on train and held-out clauses together, and
    each held-out clause's logits come from a fit on train and the other folds only (so a
    clause's own label cannot leak into the scores calibration is fit on)."""
    held = ["We may terminate your account without notice at our discretion.",
            "These Terms are governed by the laws of Ireland.",
            "We may suspend your access at any time.",
            "The laws of Germany govern these Terms.",
            "Please read these Terms carefully."]
    held_labels = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    model, out_of_fold = LexicalModel.cross_fit(CLAUSES, LABELS, held, held_labels, c=10.0, weight=0.4, folds=5, seed=3)
    everything = LexicalModel.fit(CLAUSES + held, np.concatenate([LABELS, held_labels]), c=10.0, weight=0.4)
    assert model.vocabulary == everything.vocabulary and model.weight == 0.4
    np.testing.assert_allclose(model.coef, everything.coef)
    # Five folds of five clauses: each clause is its own fold.
    for i in range(len(held)):
        others = [j for j in range(len(held)) if j != i]
        without = LexicalModel.fit(CLAUSES + [held[j] for j in others],
                                   np.concatenate([LABELS, held_labels[others]]), c=10.0)
        np.testing.assert_allclose(out_of_fold[i], without.logits([held[i]])[0], atol=1e-9)
    # In-sample logits are more confident about the held clauses' own labels than out-of-fold ones.
    in_sample = model.logits(held)
    sign = np.where(held_labels > 0, 1.0, -1.0)
    assert (sign * in_sample).sum() > (sign * out_of_fold).sum()
    with pytest.raises(ValueError, match="folds"):
        LexicalModel.cross_fit(CLAUSES, LABELS, held[:1], held_labels[:1], folds=2)
    with pytest.raises(ValueError, match="held-out labels"):
        LexicalModel.cross_fit(CLAUSES, LABELS, held, held_labels[:, :2])
    with pytest.raises(ValueError, match=r"^labels must be"):  # the train labels named, not the held ones
        LexicalModel.cross_fit(CLAUSES, LABELS[:, 0], held, held_labels)


def test_the_trained_model_refits_its_lexical_side_and_calibrates_out_of_fold(trained_model_dir, tokenized_dir,
                                                                              tmp_path):
    """Training with lexical_refit (the default): the exported side is the fit on train and
    validation, and the card's calibration is what fitting on the encoder's validation scores
    blended with out-of-fold lexical logits gives, not the in-sample ones."""
    from datasets import load_from_disk

    from tosguard.components import calibration
    from tosguard.components.config import CARD_FILE, TrainConfig
    from tosguard.components.modeling import load_exported, score_encoded

    assert TrainConfig().lexical_refit
    card = json.loads((trained_model_dir / CARD_FILE).read_text())
    assert card["lexical"]["fit_on"] == "train+validation"
    assert card["calibration"]["lexical_scores"] == "out of fold" and 0 <= card["val_macro_f1_out_of_fold"] <= 100
    data = load_from_disk(str(tokenized_dir))
    model, tokenizer, _ = load_exported(str(trained_model_dir))
    train_seen = lexical.encoder_view(tokenizer, data["train"]["text"], 128)
    val_seen = lexical.encoder_view(tokenizer, data["validation"]["text"], 128)
    train_gold = np.asarray(data["train"]["label_vector"], dtype=np.float32)
    val_gold = np.asarray(data["validation"]["label_vector"], dtype=np.int64)
    refit, out_of_fold = LexicalModel.cross_fit(train_seen, train_gold, val_seen, val_gold, 256.0, 0.4,
                                                folds=min(5, len(val_seen)), seed=42)
    stored = LexicalModel.load(trained_model_dir, card)
    assert stored.vocabulary == refit.vocabulary
    np.testing.assert_allclose(stored.coef, refit.coef, atol=1e-4)

    encoder = score_encoded(model, data["validation"]["input_ids"], tokenizer.pad_token_id)
    honest = calibration.fit(lexical.blend(encoder, out_of_fold, 0.4), val_gold)["calibration"]["params"]
    leaky = calibration.fit(lexical.blend(encoder, refit.logits(val_seen), 0.4), val_gold)["calibration"]["params"]
    np.testing.assert_allclose(card["calibration"]["params"], honest, atol=1e-3)
    assert not np.allclose(card["calibration"]["params"], leaky, atol=1e-2)

    # The calibration study rebuilds the same out-of-fold validation scores from the card.
    from tests.conftest import load_benchmark

    assert {k: card["lexical"][k] for k in ("c", "folds", "fold_seed", "rows")} == {
        "c": 256.0, "folds": 5, "fold_seed": 42, "rows": {"train": len(train_seen), "validation": len(val_seen)}}
    study = load_benchmark("calibration_study")
    rebuilt = study._raw_scores(str(trained_model_dir), list(data["validation"]["text"]),
                                (list(data["train"]["text"]), train_gold, val_gold))
    np.testing.assert_allclose(rebuilt, lexical.blend(encoder, out_of_fold, 0.4), atol=1e-5)
    # Other rows than the card's (a subset), or a card from before the folds were kept: a clear stop.
    with pytest.raises(SystemExit, match="subset"):
        study._raw_scores(str(trained_model_dir), list(data["validation"]["text"])[:-1],
                          (list(data["train"]["text"]), train_gold, val_gold[:-1]))
    older = tmp_path / "older"
    shutil.copytree(trained_model_dir, older)
    (older / CARD_FILE).write_text(json.dumps({**card, "lexical": {
        k: v for k, v in card["lexical"].items() if k not in ("folds", "fold_seed")}}))
    with pytest.raises(SystemExit, match="lacks folds, fold_seed"):
        study._raw_scores(str(older), list(data["validation"]["text"]),
                          (list(data["train"]["text"]), train_gold, val_gold))


def test_recalibrating_the_export_keeps_the_out_of_fold_marker(trained_model_dir, tokenized_dir, tmp_path):
    """QLoRA re-fits calibration on the exported model (_refit_on_export): with a refit side
    it still says the lexical scores were out of fold and recomputes the out-of-fold
    validation macro-F1 from the exported model's own scores."""
    import shutil

    from datasets import load_from_disk

    from tosguard.components import calibration
    from tosguard.components.config import CARD_FILE
    from tosguard.components.labels import CATEGORIES
    from tosguard.components.metrics import lexglue_scores, predict_from_probabilities
    from tosguard.components.modeling import load_exported, score_encoded
    from tosguard.components.train.loop import _refit_on_export

    data = load_from_disk(str(tokenized_dir))
    val_gold = np.asarray(data["validation"]["label_vector"], dtype=np.int64)
    model, tokenizer, card = load_exported(str(trained_model_dir))
    train_seen = lexical.encoder_view(tokenizer, data["train"]["text"], 128)
    val_seen = lexical.encoder_view(tokenizer, data["validation"]["text"], 128)
    _, out_of_fold = LexicalModel.cross_fit(train_seen, np.asarray(data["train"]["label_vector"], dtype=np.float32),
                                            val_seen, val_gold, 256.0, 0.4, folds=5, seed=42)
    encoder = score_encoded(model, data["validation"]["input_ids"], tokenizer.pad_token_id)
    # The card as export wrote it, before the re-fit: no marker, no score.
    exported = tmp_path / "exported"
    shutil.copytree(trained_model_dir, exported)
    stale = {**card, "calibration": {k: v for k, v in card["calibration"].items() if k != "lexical_scores"}}
    stale.pop("val_macro_f1_out_of_fold")
    (exported / CARD_FILE).write_text(json.dumps(stale))

    returned = _refit_on_export(str(exported), data["validation"], val_gold, 0.5, out_of_fold)
    written = json.loads((exported / CARD_FILE).read_text())
    blended = lexical.blend(encoder, out_of_fold, 0.4)
    expected = lexglue_scores(val_gold, predict_from_probabilities(blended, [0.5] * len(CATEGORIES)))["macro_f1"]
    assert written["calibration"]["lexical_scores"] == "out of fold"
    assert returned == pytest.approx(expected) and written["val_macro_f1_out_of_fold"] == pytest.approx(expected)
    np.testing.assert_allclose(written["calibration"]["params"],
                               calibration.fit(blended, val_gold)["calibration"]["params"], atol=1e-3)

    # A side fit on train alone: calibration on its own logits, no marker and no score.
    (exported / CARD_FILE).write_text(json.dumps({**stale, "lexical": {**card["lexical"], "fit_on": "train"}}))
    assert _refit_on_export(str(exported), data["validation"], val_gold, 0.5, out_of_fold) is None
    written = json.loads((exported / CARD_FILE).read_text())
    assert "lexical_scores" not in written["calibration"] and "val_macro_f1_out_of_fold" not in written


def test_lexglue_style_selection_ranks_refit_seeds_by_their_out_of_fold_score():
    """A refit side has seen validation, and the best epoch's score is of the side fit on
    train alone: seed_spread ranks such seeds by the exported model's out-of-fold score."""
    from tests.conftest import load_benchmark

    spread = load_benchmark("seed_spread")
    rows = [{"seed": 42, "val_macro_f1": 76.5, "val_macro_f1_out_of_fold": 78.8},
            {"seed": 2, "val_macro_f1": 76.1, "val_macro_f1_out_of_fold": 79.5}]
    assert max(rows, key=spread._selection_score)["seed"] == 2
    plain = [{"seed": 42, "val_macro_f1": 76.5}, {"seed": 2, "val_macro_f1": 76.1}]  # no refit side
    assert max(plain, key=spread._selection_score)["seed"] == 42


def test_seed_spread_distillation_needs_a_teacher_and_names_a_missing_one(capsys):
    """The distillation table's command (seed_spread --distill-weight --teacher) refuses a
    weight without a teacher, and a teacher the project does not ship, before any training."""
    from tests.conftest import load_benchmark

    spread = load_benchmark("seed_spread")
    with pytest.raises(ValueError, match="distill_weight needs a teacher"):
        spread.main(["--distill-weight", "0.5", "--seeds", "1"])
    with pytest.raises(FileNotFoundError, match="no scores of teacher 'no-such-teacher'"):
        spread.main(["--distill-weight", "0.5", "--teacher", "no-such-teacher", "--seeds", "1"])
