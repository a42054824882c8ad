"""Clause splitting: a Terms of Service text -> the character spans of its clauses.

Linear in the text's length: each boundary looks back a bounded distance only. A span
longer than MAX_SPAN_CHARS (a text without sentence boundaries) is cut at whitespace into
pieces of at most CHUNK_CHARS, so no document is ever scored as one giant clause.
"""
from __future__ import annotations

import re

MAX_SPAN_CHARS = 2_000
CHUNK_CHARS = 1_000
# Sentence ends: . ! ? ; followed by space, unless the word before is a known abbreviation.
_ABBREVIATIONS = {"e.g", "i.e", "etc", "inc", "ltd", "co", "corp", "llc", "u.s", "u.k", "no", "vs", "mr", "ms",
                  "dr", "st", "art", "sec", "para", "cf", "approx", "incl"}
_LIST_MARKER = re.compile(r"^\(?[0-9a-zA-Z]{1,3}[.)]$")  # "1." or "(a)" opening a clause
_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)]|\(?[a-z]\)))")
_LOOK_BACK = 16  # longer than any abbreviation and list marker


def _is_false_boundary(text: str, start: int, end: int) -> bool:
    """A full stop after an abbreviation, or after a list marker that opens the clause."""
    tail = text[max(start, end - _LOOK_BACK) : end].rstrip()
    if not tail.endswith("."):
        return False
    last_word = tail.rsplit(None, 1)[-1].rstrip(".!?;").lower() if tail.strip() else ""
    if last_word in _ABBREVIATIONS:
        return True
    return end - start <= _LOOK_BACK and bool(_LIST_MARKER.match(text[start:end].strip()))


def _chunks(text: str, start: int, end: int):
    """Cut an overlong span at whitespace into pieces of at most CHUNK_CHARS."""
    while end - start > CHUNK_CHARS:
        cut = text.rfind(" ", start + CHUNK_CHARS // 2, start + CHUNK_CHARS)
        cut = cut if cut > start else start + CHUNK_CHARS
        yield start, cut
        start = cut
    yield start, end


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the sentences (clauses) of a document, whitespace trimmed."""
    raw, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if _is_false_boundary(text, start, match.start()):
            continue
        raw.append((start, match.start()))
        start = match.end()
    raw.append((start, len(text)))
    out = []
    for s, e in raw:
        pieces = _chunks(text, s, e) if e - s > MAX_SPAN_CHARS else [(s, e)]
        for ps, pe in pieces:
            chunk = text[ps:pe]
            stripped = chunk.strip()
            if stripped:
                lead = len(chunk) - len(chunk.lstrip())
                out.append((ps + lead, ps + lead + len(stripped)))
    return out
