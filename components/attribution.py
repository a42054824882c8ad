"""Which words drove a flagged clause: occlusion (leave one word out).

For a clause flagged with category c at score p, each word's weight is p minus the score
of c for the same clause with that word deleted. Positive: the word pushed the clause
towards c. Why this method:

- faithful by construction: it measures the model's own answer without the word, through
  the same scoring path the report used (bf16 server, in-process scorer or a remote
  endpoint alike), instead of a gradient's local slope;
- it needs no gradients, which the served bf16 encoder does not keep;
- its cost is known: one extra clause scored per word (capped per clause and per report).

Its known weakness: credit for a phrase ("sole discretion") is split between its words,
and a word that matters only together with another may score near zero.
`benchmarks/attribution_check.py` measures how much the top words matter (deleting them
against deleting as many random words).

The module only builds the variants and reads their scores; the caller scores them, so
the CLI (sync) and the predictor (async, through its batcher) share it.
"""
from __future__ import annotations

import re

# A word: letters/digits with their combining accents, and apostrophes or hyphens only
# between letters ("don't", "third-party"; not the quote after "terms'").
WORD = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f]|['’-](?=[^\W_]))*")
MAX_WORDS = 48  # words occluded per clause (the first ones; clauses average ~25 words)
MAX_CLAUSES = 60  # flagged clauses explained per report, highest score first
TOP_WORDS = 5  # words kept per clause and category
MIN_WEIGHT = 0.01  # below this a word's deletion did not change the score


def _words(clause: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in WORD.finditer(clause)][:MAX_WORDS]


def variants(report: dict, max_rows: int | None = None) -> tuple[list[str], list[tuple[int, list[tuple[int, int]]]]]:
    """The texts to score: for each explained flagged clause, the clause with one word
    deleted, for each of its words. Returns (texts, plan) where plan holds, per explained
    clause, its index in report["flagged"] and its word spans (relative to the clause).
    Clauses are taken highest score first, at most MAX_CLAUSES, and only while their
    variants fit in `max_rows` (None: no budget)."""
    flagged = report["flagged"]
    order = sorted(range(len(flagged)), key=lambda i: -max(flagged[i]["scores"][c] for c in flagged[i]["categories"]))
    texts, plan = [], []
    for index in order[:MAX_CLAUSES]:
        clause = flagged[index]["clause"]
        spans = _words(clause)
        if len(spans) < 2:  # one word: deleting it leaves nothing to score (a server refuses "")
            continue
        if max_rows is not None and len(texts) + len(spans) > max_rows:
            break
        plan.append((index, spans))
        texts += [(clause[:s] + clause[e:]).strip() for s, e in spans]
    return texts, plan


def attach(report: dict, plan: list, scores: list[dict]) -> dict:
    """Put each explained clause's words into it: flagged[i]["words"] = {category:
    [{"start", "end", "word", "weight"}, ...]} with document offsets, largest weight first.
    `scores` are the score dicts of variants()'s texts, in order."""
    position = 0
    for index, spans in plan:
        clause = report["flagged"][index]
        mine = scores[position : position + len(spans)]
        position += len(spans)
        words = {}
        for category in clause["categories"]:
            full = clause["scores"][category]
            weighted = sorted(((full - s["scores"][category], span) for s, span in zip(mine, spans)), reverse=True)
            words[category] = [
                {"start": clause["start"] + a, "end": clause["start"] + b, "word": clause["clause"][a:b],
                 "weight": round(float(w), 4)}
                for w, (a, b) in weighted[:TOP_WORDS] if w >= MIN_WEIGHT
            ]
        clause["words"] = words
    report["attribution"] = {"method": "occlusion", "explained": len(plan), "of": len(report["flagged"]),
                             "max_words": MAX_WORDS}
    return report


def explain(report: dict, score) -> dict:
    """Occlusion weights for the report's flagged clauses; `score(texts) -> [score dicts]`."""
    texts, plan = variants(report)
    scores = []
    for i in range(0, len(texts), 256):
        scores += score(texts[i : i + 256])
    return attach(report, plan, scores)
