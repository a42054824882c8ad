"""Tokenize step: fast tokenizer, batched, truncation, no padding stored."""
from datasets import load_from_disk

from tosguard.components.labels import NUM_CATEGORIES


def test_tokenized_splits_have_no_padding_and_multi_hot_labels(tokenized_dir, raw_dir):
    tok = load_from_disk(str(tokenized_dir))
    raw = load_from_disk(str(raw_dir))
    assert set(tok) == {"train", "validation", "test"}
    for split in tok:
        ds = tok[split]
        assert len(ds) == len(raw[split])
        lengths = ds["length"]
        assert len(set(lengths)) > 5, "rows keep their own lengths: no padding to a fixed width"
        assert max(lengths) <= 128
        for ids, mask, n in zip(ds["input_ids"][:50], ds["attention_mask"][:50], lengths[:50]):
            assert len(ids) == n and all(m == 1 for m in mask)
            assert ids.count(0) == 0
        for vector, labels in zip(ds["label_vector"], raw[split]["labels"]):
            assert len(vector) == NUM_CATEGORIES
            assert [i for i, v in enumerate(vector) if v == 1.0] == sorted(labels)
    assert (tokenized_dir / "tokenizer" / "tokenizer.json").is_file()


def test_a_base_model_neither_offline_nor_reachable_says_what_to_do(raw_dir, tmp_path, monkeypatch):
    """No hub here: a hub model id that is not installed offline fails with the way
    forward, not with transformers' traceback about huggingface.co."""
    import pytest

    from tosguard.components.tokenize import tokenize

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"could not load 'example-org/no-such-model'.*pass --base-model a local folder"):
        tokenize(str(raw_dir), "example-org/no-such-model", 128, str(tmp_path / "tok"))
    assert not (tmp_path / "tok").exists()
