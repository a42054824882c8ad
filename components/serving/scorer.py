"""Scoring with an exported model: clauses in, per-category calibrated scores, the categories
that pass the thresholds shipped with the model, and whole-document analysis.

Multi-label: a category is found when its score exceeds that category's threshold; never
softmax/argmax. Clauses are scored in length-sorted batches capped by padded tokens, in
bf16 on CPUs with bf16 matrix instructions.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from tosguard.components import calibration, lexical, monitor
from tosguard.components.config import PROFILES, env_number
from tosguard.components.modeling import load_exported, score_encoded
from tosguard.components.serving.split import split_sentences

log = logging.getLogger(__name__)

BATCH_SIZE = env_number("TOSGUARD_BATCH_SIZE", 64, low=1)
# Padded tokens per forward pass: long clauses go in small batches (measured here: 1,024
# served random 64-clause requests 2.4x faster than fixed batches of 64).
BATCH_TOKENS = env_number("TOSGUARD_BATCH_TOKENS", 1024, low=1)
# Batch widths rounded up to a multiple of 8: far fewer distinct shapes for oneDNN to build
# kernels for, and AMX-friendly tiles (measured: 423 against 375 clauses/s on a cold pass).
PAD_MULTIPLE = 8


def _bf16_matmul_is_native() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class ClauseScorer:
    """An exported tosguard model folder, ready to score clauses and documents."""

    def __init__(self, model_dir: str, precision: str | None = None, profile: str | None = None):
        """precision: auto (bf16 where the CPU has bf16 instructions), bf16 or fp32;
        default from TOSGUARD_SERVE_PRECISION. profile: `default` or `triage` (lower
        thresholds for about 0.9 recall per category, see calibration.py); default from
        TOSGUARD_PROFILE."""
        self.model_dir = model_dir
        self.precision = precision or os.environ.get("TOSGUARD_SERVE_PRECISION", "auto")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32 (got {self.precision!r})")
        self.classifier, self.tokenizer, self.card = load_exported(model_dir)
        self.categories = list(self.card["categories"])
        self.profile = profile or os.environ.get("TOSGUARD_PROFILE", "default")
        if not profile and self.profile not in PROFILES:
            raise ValueError(f"TOSGUARD_PROFILE must be one of {', '.join(PROFILES)} (got {self.profile!r})")
        self.thresholds = np.asarray(calibration.profile_thresholds(self.card, self.profile), dtype=np.float32)
        self.calibration = calibration.card_params(self.card)  # None: a model from before calibration
        self.max_length = int(self.card.get("max_length", 128))
        # The TF-IDF side blended with the encoder (None: a model trained without it).
        self.lexical = lexical.LexicalModel.load(model_dir, self.card)
        self.fingerprint = monitor.model_fingerprint(model_dir)  # the drift reference names the same
        use_bf16 = self.precision == "bf16" or (
            self.precision == "auto" and not torch.cuda.is_available() and _bf16_matmul_is_native()
        )
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        if use_bf16:
            # The encoder's weights in bf16 once, rather than autocast casting them on every
            # pass: measured 514 against 334 clauses/s in 64-clause batches here. Pooling
            # and the head stay in fp32 (ClauseClassifier casts the hidden states up).
            self.classifier.encoder.to(torch.bfloat16)

    def raw_scores(self, clauses: list[str]) -> np.ndarray:
        """(clauses, categories + 1): calibrated scores, and a last column flagging truncation."""
        encoded = self.tokenizer(clauses, truncation=True, max_length=self.max_length, padding=False,
                                 return_offsets_mapping=self.lexical is not None)
        ids = encoded["input_ids"]
        scores = score_encoded(self.classifier, ids, self.tokenizer.pad_token_id, BATCH_SIZE, BATCH_TOKENS, PAD_MULTIPLE)
        if self.lexical is not None:  # on the text the encoder saw
            seen = lexical.visible_texts(clauses, ids, encoded["offset_mapping"], self.max_length)
            scores = lexical.apply(scores, self.lexical, seen)
        scores = calibration.apply(scores, self.calibration)
        truncated = np.asarray([len(row) >= self.max_length for row in ids], dtype=np.float32)[:, None]
        return np.concatenate([scores.astype(np.float32), truncated], axis=1)

    def warm_up(self) -> None:
        """Score clauses of every padded width once, so the first requests do not pay for
        building kernels."""
        words = "we may change these terms at any time without notice to you".split()
        clauses = [" ".join(words[i % len(words)] for i in range(n)) for n in range(4, 132, 8)]
        for size in (1, 8, len(clauses)):
            self.raw_scores(clauses[:size])

    def results(self, raw: np.ndarray) -> list[dict]:
        """raw_scores rows -> {unfair, categories, scores, truncated} per clause."""
        out = []
        for row in raw:
            scores, truncated = row[:-1], bool(row[-1])
            found = [c for c, s, t in zip(self.categories, scores, self.thresholds) if s > t]
            out.append({
                "unfair": bool(found),
                "categories": found,
                "scores": {c: round(float(s), 6) for c, s in zip(self.categories, scores)},
                "truncated": truncated,
            })
        return out

    def score(self, clauses: list[str]) -> list[dict]:
        """Per clause: `unfair`, the `categories` found, a score per category, `truncated`."""
        if isinstance(clauses, str):
            raise TypeError("score() takes a list of clauses; use analyze() for a whole document")
        return self.results(self.raw_scores(list(clauses))) if clauses else []

    def analyze(self, document: str) -> dict:
        """A whole ToS text -> {sentences, unfair, flagged: [{clause, start, end, ...}]}."""
        return analyze_document(document, self.score)


def analyze_document(document: str, score) -> dict:
    """Split a document as the server does, score its clauses with `score` (a list of
    clauses -> their results), and report (the `--url` client uses it too)."""
    spans = split_sentences(document)
    return document_report(document, spans, score([document[s:e] for s, e in spans]))


def document_report(document: str, spans: list[tuple[int, int]], results: list[dict]) -> dict:
    """The document answer: how many sentences, and the flagged ones with their offsets."""
    flagged = [{"clause": document[s:e], "start": s, "end": e, **r} for (s, e), r in zip(spans, results) if r["unfair"]]
    return {"sentences": len(spans), "flagged": flagged, "unfair": bool(flagged)}
