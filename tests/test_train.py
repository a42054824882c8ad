"""Train step: the model learns, only intended parameters change, export is consistent."""
import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from tosguard.components.config import TrainConfig, preset
from tosguard.components.modeling import (
    ClauseClassifier, build_classifier, load_exported, lora_targets, pad_batch, resolve_base_model, score_encoded,
)
from tosguard.components.train.loop import length_grouped_batches


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(5, 128, size=1000))
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_padded = sum(32 * max(lengths[i] for i in range(s, min(s + 32, 1000))) for s in range(0, 1000, 32))
    assert padded < 0.8 * random_padded, "grouping by length must cut pad tokens"


def test_config_rejects_bad_values_with_a_clear_message():
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method="dora").validate()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        preset("quick", epochs=0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert TrainConfig.from_json(TrainConfig().to_json()) == TrainConfig()


def test_lora_targets_per_architecture_and_override():
    assert lora_targets("mpnet") == ["q", "k", "v", "o"]
    assert lora_targets("bert", ["query"]) == ["query"]
    with pytest.raises(ValueError, match="no default LoRA target modules"):
        lora_targets("t5")


def _few_steps(method, tokenized_dir, steps=6):
    torch.manual_seed(0)
    model = build_classifier(resolve_base_model("all-MiniLM-L6-v2"), method)
    data = load_from_disk(str(tokenized_dir))["train"].select(range(24))
    labels = torch.tensor(data["label_vector"])
    model.init_bias_to_prior(labels.mean(0).numpy())
    ids, mask = pad_batch(data["input_ids"], 0)
    model.eval()  # no dropout: a repeatable loss to compare
    model(ids[:2], mask[:2])  # bitsandbytes repacks 4-bit storage for the CPU on first use
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-3 if method != "full" else 1e-4)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    changed = {k for k, v in model.named_parameters() if not torch.equal(before[k], v.detach())}
    return model, losses, changed


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_methods_train_only_adapters_and_head(method, tokenized_dir):
    model, losses, changed = _few_steps(method, tokenized_dir)
    assert losses[-1] < losses[0]
    assert changed, "some parameters must move"
    for name in changed:
        assert "lora_" in name or name.startswith("classifier."), f"{name} changed but is frozen by design"
    assert any(n.startswith("classifier.") for n in changed)
    if method == "qlora":
        import bitsandbytes as bnb

        linear4 = [m for m in model.encoder.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert linear4, "QLoRA must hold a 4-bit base"
        assert linear4[0].weight.quant_state.quant_type == "nf4"
        assert not isinstance(model.classifier, bnb.nn.Linear4bit)


def test_trained_export_loads_without_peft_and_matches_the_adapter(trained_model_dir, tokenized_dir):
    from peft import PeftModel

    card = json.loads((trained_model_dir / "tosguard.json").read_text())
    from tosguard.components import calibration

    # The shipped thresholds are the raw 0.5, mapped through the calibration fit on validation.
    raw_half = calibration.apply(np.full((1, 8), 0.5), card["calibration"]["params"])[0]
    assert card["thresholds"] == pytest.approx(raw_half.tolist()) and card["pooling"] == "mean"
    assert card["calibration"]["fit_on"] == "validation" and len(card["profiles"]["triage"]) == 8
    assert (trained_model_dir / "model.safetensors").is_file()
    assert (trained_model_dir / "adapter" / "adapter_model.safetensors").is_file()
    merged, tokenizer, _ = load_exported(str(trained_model_dir))
    assert not any("lora_" in n for n, _ in merged.named_parameters())

    # The same head over base + adapter (peft) must give the merged model's scores.
    from tosguard.components.modeling import load_encoder

    adapter_encoder = PeftModel.from_pretrained(
        load_encoder(resolve_base_model("all-MiniLM-L6-v2")), str(trained_model_dir / "adapter")
    )
    via_adapter = ClauseClassifier(adapter_encoder)
    via_adapter.classifier.load_state_dict(merged.classifier.state_dict())
    ids = load_from_disk(str(tokenized_dir))["test"]["input_ids"][:40]
    a = score_encoded(merged, ids, tokenizer.pad_token_id)
    b = score_encoded(via_adapter, ids, tokenizer.pad_token_id)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("method", ["full"])
def test_full_fine_tuning_trains_encoder_and_head(method, tokenized_dir):
    model, losses, changed = _few_steps(method, tokenized_dir)
    assert losses[-1] < losses[0]
    assert any(n.startswith("encoder.") for n in changed) and any(n.startswith("classifier.") for n in changed)
    assert not any("lora_" in n for n, _ in model.named_parameters())


_CHILD = """
import sys, time
import tosguard.components.train.checkpoint as c
import tosguard.components.train.loop as t
from tosguard.components.config import TrainConfig
original = c.save
def save_then_stall(uri, model, optimizer, scheduler, progress):
    original(uri, model, optimizer, scheduler, progress)
    if progress["step"] == int(sys.argv[5]):
        print("SAVED", progress["step"], flush=True)
        time.sleep(120)  # the parent kills us here, mid-epoch
c.save = save_then_stall
config = TrainConfig.from_json(sys.argv[1])
t.train(sys.argv[2], config, sys.argv[3], checkpoint_dir=sys.argv[4])
print("FINISHED", flush=True)
"""


def _checkpoints(location: str) -> list[str]:
    from tosguard.components import storage

    return [rel for rel in storage.list_files(location) if rel.endswith("checkpoint.safetensors")]


@pytest.mark.parametrize("where", ["folder", "s3", "folder-accumulating"])
def test_a_killed_training_resumes_from_its_last_checkpoint(where, tokenized_dir, tmp_path, request):
    """Killed in its second epoch (after the first epoch's validation), re-run with the same
    checkpoint location (a folder, or S3 as under a cluster's model store): it resumes and
    reaches the weights of an uninterrupted run; also when each step accumulates two
    micro-batches (the resume skips whole steps' micro-batches, dropout is seeded per
    micro-batch)."""
    import signal
    import subprocess
    import sys

    from tosguard.components.train.loop import train

    if where == "s3":
        request.getfixturevalue("s3_env")
        location, other = "s3://tosguard/ckpt-test/a", "s3://tosguard/ckpt-test/b"
    else:
        location, other = str(tmp_path / "ckpt"), str(tmp_path / "ckpt2")
    config = TrainConfig(method="lora", epochs=2, max_steps=60, batch_size=8, checkpoint_every=4,
                         validation_subset=32, seed=7)
    if where == "folder-accumulating":
        config = TrainConfig.from_dict({**config.to_dict(), "batch_size": 4, "gradient_accumulation": 2})
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, config.to_json(), str(tokenized_dir), str(tmp_path / "killed"), location, "56"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "SAVED 56", line
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert len(_checkpoints(location)) == 1
    assert not (tmp_path / "killed" / "tosguard.json").exists(), "the killed run never exported"

    resumed = train(str(tokenized_dir), config, str(tmp_path / "resumed"), checkpoint_dir=location)
    assert resumed["resumed_from_step"] == 56 and resumed["steps"] == 60
    assert not _checkpoints(location), "a finished run removes its checkpoint"

    fresh = train(str(tokenized_dir), config, str(tmp_path / "fresh"), checkpoint_dir=other)
    assert fresh["resumed_from_step"] == 0
    # Resuming restores weights, optimizer, schedule, every RNG, the data position, the
    # history and the best epoch's weights: the same curve and the same exported model.
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(resumed["history"], fresh["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_macro_f1"] == pytest.approx(b["val_macro_f1"], abs=1e-6)
    assert resumed["best_epoch"] == fresh["best_epoch"]
    a, tok, _ = load_exported(str(tmp_path / "resumed"))
    b, _, _ = load_exported(str(tmp_path / "fresh"))
    ids = load_from_disk(str(tokenized_dir))["test"]["input_ids"][:32]
    assert np.abs(score_encoded(a, ids, tok.pad_token_id) - score_encoded(b, ids, tok.pad_token_id)).max() < 1e-4


def test_checkpoints_hold_no_pickle_and_a_corrupt_one_is_skipped(tokenized_dir, tmp_path, caplog):
    import json as _json
    import struct

    from tosguard.components.train import checkpoint
    from tosguard.components.train.loop import train

    config = TrainConfig(method="lora", epochs=1, max_steps=8, batch_size=8, checkpoint_every=4, validation_subset=32)
    folder = tmp_path / "ckpt"
    original = checkpoint.remove
    try:  # keep the last checkpoint to look at it
        checkpoint.remove = lambda u: None
        train(str(tokenized_dir), config, str(tmp_path / "a"), checkpoint_dir=str(folder))
    finally:
        checkpoint.remove = original
    (path,) = folder.rglob("checkpoint.safetensors")
    raw = path.read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = _json.loads(raw[8:8 + header_size])  # a safetensors header: tensors and JSON metadata, no pickle
    state = _json.loads(header["__metadata__"]["tosguard"])
    assert state["step"] == 4 and state["format"] == "tosguard-checkpoint-1"
    assert any(k.startswith("optim.") for k in header) and "rng.torch" in header
    assert not any(tmp.name.endswith(".tmp") for tmp in folder.rglob("*")), "written atomically"

    path.write_bytes(raw[: len(raw) // 2])  # truncated, as by a kill mid-copy
    caplog.set_level("WARNING")
    summary = train(str(tokenized_dir), config, str(tmp_path / "b"), checkpoint_dir=str(folder))
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 8
    assert "cannot be read" in caplog.text and list(folder.rglob("*.corrupt"))


def test_gradient_checkpointing_gives_the_same_gradients(tokenized_dir):
    """Recomputing activations must not change what LoRA learns (non-reentrant checkpointing)."""
    from tosguard.components.modeling import build_classifier

    data = load_from_disk(str(tokenized_dir))["train"].select(range(8))
    ids, mask = pad_batch(data["input_ids"], 0)
    labels = torch.tensor(data["label_vector"])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_classifier(resolve_base_model("all-MiniLM-L6-v2"), "lora", gradient_checkpointing=checkpointing)
        model.eval()
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask), labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, recomputed = grads
    assert set(plain) == set(recomputed) and any("lora_" in n for n in plain)
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], atol=1e-6), name


def test_data_parallel_training_under_torchrun_on_cpu(tokenized_dir, tmp_path):
    """Two gloo workers (as two GPUs would be in a cluster): each takes half of every epoch's
    batches, rank 0 validates, exports and reports."""
    from tosguard.components.modeling import load_exported
    from tosguard.components.train.launch import train_data_parallel

    config = TrainConfig(method="lora", epochs=2, max_steps=6, batch_size=16, checkpoint_every=0, validation_subset=64)
    summary = train_data_parallel(str(tokenized_dir), config, str(tmp_path / "ddp"), processes=2,
                                  checkpoint_dir=str(tmp_path / "ckpt"))
    assert summary["world_size"] == 2 and summary["steps"] == 6
    # 400 train rows in batches of 16 over 2 workers: 12 steps an epoch, so 6 steps end inside epoch 1.
    assert [h["epoch"] for h in summary["history"]] == [1]
    model, tokenizer, card = load_exported(str(tmp_path / "ddp"))
    assert card["method"] == "lora" and tokenizer("a clause .")["input_ids"]
    with pytest.raises(ValueError, match="processes must be >= 1"):
        train_data_parallel(str(tokenized_dir), config, str(tmp_path / "x"), processes=0)


def test_the_lexical_refit_setting_does_not_orphan_a_checkpoint(tokenized_dir, tmp_path):
    """lexical_refit acts after the last epoch, so a run interrupted without it (or before it
    existed) resumes with it; settings that change the training still key the checkpoint."""
    from dataclasses import replace

    from tosguard.components.train import checkpoint
    from tosguard.components.train.loop import train

    config = TrainConfig(method="lora", epochs=1, max_steps=8, batch_size=8, checkpoint_every=4, validation_subset=32)
    uri = checkpoint.checkpoint_uri
    assert uri(config, "d", "x") == uri(replace(config, lexical_refit=False), "d", "x")
    for changed in (replace(config, lexical_weight=0.0), replace(config, lexical_c=10.0), replace(config, seed=1)):
        assert uri(changed, "d", "x") != uri(config, "d", "x")

    folder = tmp_path / "ckpt"
    original = checkpoint.remove
    try:  # an interrupted run: its step-4 checkpoint stays behind
        checkpoint.remove = lambda u: None
        train(str(tokenized_dir), replace(config, lexical_refit=False), str(tmp_path / "a"), checkpoint_dir=str(folder))
    finally:
        checkpoint.remove = original
    summary = train(str(tokenized_dir), config, str(tmp_path / "b"), checkpoint_dir=str(folder))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    card = json.loads((tmp_path / "b" / "tosguard.json").read_text())
    assert card["lexical"]["fit_on"] == "train+validation"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_trains_under_autocast_only_where_native_and_scores_in_fp32(native, tokenized_dir, tmp_path,
                                                                             monkeypatch):
    """cpu_bf16: the training step's linear layers compute in bf16 on a CPU with native bf16;
    validation (and so the card's scores) stays fp32; a CPU without it trains in fp32."""
    from tosguard.components.train import loop

    if native and not loop.cpu_bf16_native():
        pytest.skip("this CPU has no native bf16")
    monkeypatch.setattr(loop, "cpu_bf16_native", lambda: native)
    seen = {True: set(), False: set()}  # module.training -> output dtypes of linear layers

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            seen[module.training].add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        config = TrainConfig(method="lora", epochs=1, max_steps=4, batch_size=8, checkpoint_every=0,
                             validation_subset=32, cpu_bf16=True)
        loop.train(str(tokenized_dir), config, str(tmp_path / "m"))
    finally:
        handle.remove()
    assert seen[True] == ({torch.bfloat16} if native else {torch.float32})
    assert seen[False] == {torch.float32}  # validation scores in fp32
    card = json.loads((tmp_path / "m" / "tosguard.json").read_text())
    assert card["train_precision"] == ("bf16" if native else "fp32")
    assert preset("quality").cpu_bf16 and preset("default").cpu_bf16 and not preset("quick").cpu_bf16


def test_cpu_bf16_keys_stored_models_and_checkpoints_only_when_on():
    """The setting as asked for keys stored models and checkpoints: a request with cpu_bf16
    does not reuse a model stored without it (or back), and models stored before the setting
    existed keep their keys. (What a run actually used is the card's train_precision: fp32
    on a CPU without native bf16, bf16 on CUDA either way.)"""
    on, off = TrainConfig(cpu_bf16=True), TrainConfig()
    assert "cpu_bf16" not in off.key_json() and on.key_json() != off.key_json()
    assert TrainConfig.from_dict({"preset": "default", "cpu_bf16": "true"}).cpu_bf16 is True
    with pytest.raises(ValueError, match="cpu_bf16"):
        TrainConfig.from_dict({"cpu_bf16": "yes please"})
