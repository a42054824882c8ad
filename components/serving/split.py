"""Clause splitting: a Terms of Service text -> the character spans of its sentences."""
from __future__ import annotations

import re

# Sentence ends: . ! ? ; followed by space, unless the word before is a known abbreviation.
_ABBREVIATIONS = {"e.g", "i.e", "etc", "inc", "ltd", "co", "corp", "llc", "u.s", "u.k", "no", "vs", "mr", "ms",
                  "dr", "st", "art", "sec", "para", "cf", "approx", "incl"}
_LIST_MARKER = re.compile(r"^\(?[0-9a-zA-Z]{1,3}[.)]$")  # "1." or "(a)" opening a clause
_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)]|\(?[a-z]\)))")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the sentences (clauses) of a document, whitespace trimmed."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        before = text[start : match.start()].rstrip()
        last_word = before.rsplit(None, 1)[-1].rstrip(".!?;").lower() if before else ""
        if before.endswith(".") and (last_word in _ABBREVIATIONS or _LIST_MARKER.match(before.strip())):
            continue
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        chunk = text[s:e]
        stripped = chunk.strip()
        if stripped:
            lead = len(chunk) - len(chunk.lstrip())
            out.append((s + lead, s + lead + len(stripped)))
    return out
