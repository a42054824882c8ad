"""Distillation teachers: kept by data hash, checked, shipped for the bundled data, and
their scores reaching the training target row by row."""
import json

import numpy as np
import pytest
from datasets import load_from_disk

from tosguard.components import storage, teachers
from tosguard.components.config import DEFAULT_TEACHER, PRESETS, TrainConfig
from tosguard.components.labels import CATEGORIES
from tosguard.pipelines.cli import main

BUNDLED_HASH = "b29e516ed32ea5ed8cf962c6c3651c80bdb03bf2bd4f2df6b0d2223ac40bade9"


def test_saved_scores_read_back_and_tampering_is_caught(tmp_path):
    scores = np.random.default_rng(0).random((30, len(CATEGORIES)))
    uri = teachers.save(str(tmp_path), "f" * 64, "t1", scores, {"model": "m"})
    assert np.allclose(teachers.read(uri), scores, atol=1e-7)
    with pytest.raises(ValueError, match="probabilities"):
        teachers.save(str(tmp_path), "f" * 64, "t2", scores * 2, {})
    with pytest.raises(ValueError, match="teacher names"):
        teachers.teacher_uri(str(tmp_path), "f" * 64, "../escape")
    raw = storage.local_path(uri + ".npy").read_bytes()
    storage.local_path(uri + ".npy").write_bytes(raw[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        teachers.read(uri)


def test_the_shipped_teacher_lands_in_the_store_once(tmp_path, caplog):
    """The shipped teacher for the bundled data comes with the project; the default preset
    does not distil (measured: no gain over seeds) and its keys ignore the new settings."""
    assert PRESETS["default"].distill_weight == 0
    assert "distill_weight" not in PRESETS["default"].key_json() and "teacher" not in PRESETS["default"].key_json()
    distilling = TrainConfig(distill_weight=0.5, teacher=DEFAULT_TEACHER)
    assert distilling.key_json({"teacher_sha256": "a"}) != distilling.key_json({"teacher_sha256": "b"})
    store = str(tmp_path / "store")
    import logging

    with caplog.at_level(logging.INFO, logger="tosguard.components.teachers"):
        uri = teachers.ensure(store, BUNDLED_HASH, DEFAULT_TEACHER, rows=5532)
        assert "the project's copy" in caplog.text
        caplog.clear()
        assert teachers.ensure(store, BUNDLED_HASH, DEFAULT_TEACHER, rows=5532) == uri
        assert "project's copy" not in caplog.text  # the second time from the store
    scores = teachers.read(uri)
    assert scores.shape == (5532, len(CATEGORIES)) and 0 <= scores.min() and scores.max() <= 1
    record = json.loads(storage.read_text(uri + ".json"))
    assert record["data_hash"] == BUNDLED_HASH and record["rows"] == 5532
    # The teacher agrees with the bundled train labels most of the time, not always.
    gold = np.array([[c in json.loads(line)["labels"] for c in range(len(CATEGORIES))]
                     for line in (teachers.VENDORED.parent / "unfair_tos" / "train.jsonl").read_text().splitlines()])
    agreement = ((scores > 0.5) == gold).mean()
    assert 0.99 < agreement < 1.0
    with pytest.raises(ValueError, match="scored 5532 train rows"):
        teachers.ensure(store, BUNDLED_HASH, DEFAULT_TEACHER, rows=400)


def test_other_data_without_a_teacher_is_told_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="tosguard teach --model MODEL --name"):
        teachers.ensure(str(tmp_path), "a" * 64, DEFAULT_TEACHER, rows=10)


def test_teacher_scores_follow_their_rows_into_the_target(tokenized_dir, tmp_path):
    """A teacher that repeats the gold labels changes nothing, even with a shuffled subset;
    a teacher that says otherwise changes the model."""
    import torch
    from safetensors.torch import load_file

    from tosguard.components.train.loop import train

    gold = np.asarray(load_from_disk(str(tokenized_dir))["train"]["label_vector"], dtype=np.float32)
    base = TrainConfig(method="lora", epochs=1, max_steps=5, batch_size=16, train_subset=200, checkpoint_every=0,
                       validation_subset=32)

    def head(name, scores, **changes):
        out = tmp_path / name
        train(str(tokenized_dir), TrainConfig(**{**base.to_dict(), **changes}), str(out), teacher=scores)
        return load_file(str(out / "classifier.safetensors"))["weight"]

    plain = head("plain", None)
    same = head("gold", gold, distill_weight=1.0, teacher="gold")
    other = head("contrary", 1.0 - gold, distill_weight=1.0, teacher="contrary")
    assert torch.equal(plain, same)
    assert (other - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no teacher scores"):
        train(str(tokenized_dir), TrainConfig(**{**base.to_dict(), "distill_weight": 0.5, "teacher": "x"}),
              str(tmp_path / "none"))
    with pytest.raises(ValueError, match="teacher scores have shape"):
        train(str(tokenized_dir), TrainConfig(**{**base.to_dict(), "distill_weight": 0.5, "teacher": "x"}),
              str(tmp_path / "short"), teacher=gold[:10])


def test_teach_scores_a_snapshot_with_a_model_and_stores_it(trained_model_dir, data_slice_dir, tmp_path, capsys):
    from tosguard.components.modeling import load_exported, score_encoded

    store = tmp_path / "store"
    snapshot = store / "data" / "unfair_tos" / ("c" * 64)
    snapshot.mkdir(parents=True)
    (snapshot / "train.jsonl").write_text((data_slice_dir / "train.jsonl").read_text())
    assert main(["teach", "--model", str(trained_model_dir), "--name", "slice-teacher", "--store", str(store)]) == 0
    assert "teacher slice-teacher: 400 rows" in capsys.readouterr().out
    scores = teachers.read(teachers.teacher_uri(str(store), "c" * 64, "slice-teacher"))
    model, tokenizer, _ = load_exported(str(trained_model_dir))
    texts = [json.loads(line)["text"] for line in (snapshot / "train.jsonl").read_text().splitlines()]
    expected = score_encoded(model, tokenizer(texts, truncation=True, max_length=128)["input_ids"],
                             tokenizer.pad_token_id)
    assert np.allclose(scores, expected, atol=1e-5)  # raw scores, not calibrated ones
    (store / "data" / "unfair_tos" / ("d" * 64)).mkdir()
    (store / "data" / "unfair_tos" / ("d" * 64) / "train.jsonl").write_text("{}\n")
    assert main(["teach", "--model", str(trained_model_dir), "--name", "x", "--store", str(store)]) == 2
    assert "name one with --data-hash" in capsys.readouterr().err


def test_names_and_hashes_cannot_leave_the_store(tmp_path):
    with pytest.raises(ValueError, match="data hash"):
        teachers.teacher_uri(str(tmp_path), "../../../etc", "ok")
    with pytest.raises(ValueError, match="data hash"):
        teachers.teach(str(tmp_path), str(tmp_path), "../x", "ok")
    with pytest.raises(ValueError, match="teacher names"):
        TrainConfig(distill_weight=0.5, teacher="../x").validate()


def test_teacher_check_reads_the_shipped_teacher_and_refuses_an_unknown_name(capsys):
    """benchmarks/teacher_check.py (the distillation section's command for the teacher's
    agreement with gold) scores every bundled train row from the shipped, sha-checked copy."""
    from tests.conftest import load_benchmark

    check = load_benchmark("teacher_check")
    assert check.main([]) == 0
    result = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1])
    assert result["rows"] == 5532 and result["gold_positive_cells"] > 0
    assert 0 < result["macro_f1"] <= 100 and 0 <= result["soft_share"] <= 1
    with pytest.raises(SystemExit, match="no teacher named 'nobody'"):
        check.main(["--name", "nobody"])
