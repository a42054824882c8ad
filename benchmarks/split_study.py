"""Clause splitting chosen by measurement: splitters against the gold sentences of the shared
newer Terms of Service (issue #14).

For every splitter: boundary precision/recall/F1 against the gold sentence offsets, the
document-mode micro/macro-F1 with a model (each gold sentence takes the categories of the
flagged clauses that overlap it: `documents.categories_on_gold`, the mapping `tosguard eval`
uses), next to scoring the gold sentences themselves, and the splitting time per document.
Then input normalizations of the clause text before scoring, on the gold sentences of the
shared documents and on LexGLUE UNFAIR-ToS test. Ends with a line `RESULT {json}`.

Boundaries: a split between two clauses is the number of non-whitespace characters before
it (so whitespace never decides a match); a predicted boundary matches a gold one at most
--tolerance non-whitespace characters away (default 0: the same gap), each gold boundary
matched at most once. The document's own start and end are not boundaries.

    .venv/bin/python benchmarks/split_study.py --model DIR [--docs /work/shared/data/tos_documents]

Texts changed and verdicts changed in the normalization table count the gold sentences of the
shared documents and the LexGLUE test sentences together (of 7,307 + 1,607).

The alternative splitters come with the `split-study` extra (pip install -e '.[split-study]');
one that is not installed is reported as skipped. NLTK's punkt is not among them: its
models are a separate data download that this project cannot ship offline.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import unicodedata
from pathlib import Path

DEFAULT_DOCS = "/work/shared/data/tos_documents"
LEXGLUE_TEST = Path(__file__).resolve().parents[1] / "components" / "data" / "unfair_tos" / "test.jsonl"


# ------------------------------------------------------------------------------ splitters
# Each: text -> [(start, end)], trimmed spans into the text.


def _previous_split(text: str) -> list[tuple[int, int]]:
    """tosguard's splitter before issue #14, kept verbatim here as the baseline: splits at
    . ! ? ; before whitespace, blank lines and newlines before list markers, with a short
    abbreviation list; a lone list marker is glued to the clause it opens; spans over 2,000
    characters cut at whitespace into pieces of at most 1,000."""
    abbreviations = {"e.g", "i.e", "etc", "inc", "ltd", "co", "corp", "llc", "u.s", "u.k", "no", "vs", "mr", "ms",
                     "dr", "st", "art", "sec", "para", "cf", "approx", "incl"}
    list_marker = re.compile(r"^\(?[0-9a-zA-Z]{1,3}[.)]$")
    boundary = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)]|\(?[a-z]\)))")

    def false_boundary(start: int, end: int) -> bool:
        tail = text[max(start, end - 16): end].rstrip()
        if not tail.endswith("."):
            return False
        last_word = tail.rsplit(None, 1)[-1].rstrip(".!?;").lower() if tail.strip() else ""
        if last_word in abbreviations:
            return True
        return end - start <= 16 and bool(list_marker.match(text[start:end].strip()))

    def chunks(start: int, end: int):  # an overlong span cut at whitespace, as in serving
        while end - start > 1_000:
            cut = text.rfind(" ", start + 500, start + 1_000)
            cut = cut if cut > start else start + 1_000
            yield start, cut
            start = cut
        yield start, end

    raw, start = [], 0
    for match in boundary.finditer(text):
        if false_boundary(start, match.start()):
            continue
        raw.append((start, match.start()))
        start = match.end()
    raw.append((start, len(text)))
    return _trimmed(text, [piece for s, e in raw for piece in (chunks(s, e) if e - s > 2_000 else [(s, e)])])


def _trimmed(text: str, spans) -> list[tuple[int, int]]:
    out = []
    for s, e in spans:
        piece = text[s:e]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            out.append((s + lead, s + lead + len(stripped)))
    return out


def _aligned(text: str, pieces) -> list[tuple[int, int]]:
    """Spans of sentence strings that a library returns without offsets, found in order."""
    spans, cursor = [], 0
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        at = text.find(piece, cursor)
        if at < 0:
            raise ValueError(f"the splitter changed the text near {piece[:40]!r}")
        spans.append((at, at + len(piece)))
        cursor = at + len(piece)
    return spans


def _tosguard(text):
    from tosguard.components.serving.split import split_sentences

    return split_sentences(text)


def _pysbd():
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False)  # char_span=True is far slower
    return lambda text: _aligned(text, segmenter.segment(text))


def _syntok():
    from syntok import segmenter

    def split(text):
        spans = []
        for paragraph in segmenter.analyze(text):
            for sentence in paragraph:
                tokens = [t for t in sentence if t.value]
                if tokens:
                    spans.append((tokens[0].offset, tokens[-1].offset + len(tokens[-1].value)))
        return _trimmed(text, spans)

    return split


def _spacy():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.max_length = 10_000_000

    def split(text):
        return _trimmed(text, [(s.start_char, s.end_char) for s in nlp(text).sents])

    return split


def _blingfire():
    import blingfire

    def split(text):
        _, offsets = blingfire.text_to_sentences_and_offsets(text)
        return _trimmed(text, offsets)

    return split


SPLITTERS = {
    "tosguard (before #14)": lambda: _previous_split,
    "tosguard": lambda: _tosguard,
    "pysbd 0.3": _pysbd,
    "syntok 1.4": _syntok,
    "spaCy sentencizer": _spacy,
    "blingfire": _blingfire,
}


# ------------------------------------------------------------------------------ boundaries


def _dense(text: str) -> list[int]:
    """offset -> non-whitespace characters before it (len(text) + 1 entries)."""
    counts, n = [0], 0
    for ch in text:
        n += not ch.isspace()
        counts.append(n)
    return counts


def boundaries(spans, dense: list[int]) -> list[int]:
    """The gaps between consecutive spans, in non-whitespace characters; distinct, sorted."""
    return sorted({dense[e] for (_, e) in spans[:-1]})


def match_boundaries(predicted: list[int], gold: list[int], tolerance: int) -> int:
    """How many predicted boundaries match a distinct gold one within the tolerance (greedy,
    in order: both lists are sorted, so this is the maximum matching)."""
    matched, g = 0, 0
    for p in predicted:
        while g < len(gold) and gold[g] < p - tolerance:
            g += 1
        if g < len(gold) and gold[g] <= p + tolerance:
            matched += 1
            g += 1
    return matched


def _prf(matched: int, predicted: int, gold: int) -> tuple[float, float, float]:
    p = 100.0 * matched / predicted if predicted else 0.0
    r = 100.0 * matched / gold if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


# ------------------------------------------------------------------------------ scoring


class CachedScorer:
    """Scores each distinct clause text once, in the scorer's length-sorted batches."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.cache: dict[str, list[str]] = {}
        self.seconds = 0.0

    def categories(self, clauses: list[str]) -> list[list[str]]:
        new = sorted({c for c in clauses if c not in self.cache})
        if new:
            started = time.perf_counter()
            for clause, result in zip(new, self.scorer.score(new)):
                self.cache[clause] = result["categories"]
            self.seconds += time.perf_counter() - started
        return [self.cache[c] for c in clauses]


def _f1(gold_rows, predicted_sets) -> dict:
    import numpy as np

    from tosguard.components.labels import CATEGORIES, multi_hot
    from tosguard.components.metrics import lexglue_scores

    index = {c: i for i, c in enumerate(CATEGORIES)}
    predicted = [multi_hot([index[c] for c in found]) for found in predicted_sets]
    return lexglue_scores(np.asarray(gold_rows), np.asarray(predicted))


# ------------------------------------------------------------------------------ normalization

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                         "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'"})
_DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
                         "\u2212": "-", "\u00a0": " ", "\u2026": "..."})


def _ascii_punctuation(text: str) -> str:
    return text.translate(_QUOTES).translate(_DASHES)


def _ptb_quotes(text: str) -> str:
    """LexGLUE's Penn-Treebank quoting: an opening double quote as ``, a closing one as ''."""
    text = _ascii_punctuation(text)
    text = re.sub(r'(^|[\s(\[{])"', r"\1`` ", text)
    return text.replace('"', " ''")


def _ptb_tokens(text: str) -> str:
    """Roughly LexGLUE's text: PTB quotes, contractions and punctuation split off, lowercased."""
    text = _ptb_quotes(text)
    text = re.sub(r"(?i)\b(\w+)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m)\b", r"\1 \2", text)
    text = re.sub(r"([,;:()\[\]?!])", r" \1 ", text)
    text = re.sub(r"\.(\s|$)", r" .\1", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _fix_mojibake(text: str) -> str:
    """UTF-8 read as cp1252/latin-1 (Â©, â€™): undone where that round-trips."""
    if not re.search("[\u00c2\u00c3\u00e2][\u0080-\u00bf\u2018-\u203a\u0152-\u0178]", text):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


NORMALIZATIONS = {
    "none": lambda t: t,
    "collapse whitespace": lambda t: re.sub(r"\s+", " ", t).strip(),
    "NFKC": _nfkc,
    "ASCII quotes and dashes": _ascii_punctuation,
    "PTB quotes (`` '')": _ptb_quotes,
    "PTB tokens (LexGLUE-like)": _ptb_tokens,
    "undo mojibake": _fix_mojibake,
}


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported model folder (or any tosguard.load_model URI)")
    parser.add_argument("--docs", default=DEFAULT_DOCS, help="folder of NAME.txt + NAME.labels.jsonl")
    parser.add_argument("--tolerance", type=int, default=0, help="boundary match distance, non-whitespace chars")
    parser.add_argument("--splitters", nargs="*", help=f"a subset of: {', '.join(SPLITTERS)}")
    parser.add_argument("--no-normalization", action="store_true", help="skip the normalization table")
    parser.add_argument("--cache", help="a JSON file keeping the categories found per clause text between runs "
                        "(for one model only: delete it when the model changes)")
    parser.add_argument("--show-errors", type=int, default=0, metavar="N",
                        help="print N missed and N extra boundaries per splitter (from a fixed sample)")
    args = parser.parse_args(argv)
    wall = time.perf_counter()

    import tosguard
    from tosguard.components.documents import categories_on_gold, read_labelled
    from tosguard.components.labels import multi_hot

    files = sorted(Path(args.docs).glob("*.txt"))
    if not files:
        parser.error(f"{args.docs}: no NAME.txt documents")
    docs = [read_labelled(str(f)) | {"name": f.stem} for f in files]
    for doc in docs:
        doc["dense"] = _dense(doc["text"])
        doc["gold_boundaries"] = boundaries(doc["spans"], doc["dense"])
    gold_rows = [multi_hot(l) for doc in docs for l in doc["labels"]]
    scorer = CachedScorer(tosguard.load_model(args.model))
    cache_file = Path(args.cache) if args.cache else None
    if cache_file and cache_file.is_file():
        kept = json.loads(cache_file.read_text(encoding="utf-8"))
        if kept.get("model") != args.model:
            parser.error(f"{cache_file} holds another model's scores ({kept.get('model')})")
        scorer.cache.update(kept["categories"])

    sentences = [c for doc in docs for c in doc["clauses"]]
    gold_mode = _f1(gold_rows, scorer.categories(sentences))
    print(f"{len(docs)} documents, {len(sentences)} gold sentences, "
          f"{sum(len(d['gold_boundaries']) for d in docs)} gold boundaries; model {args.model}")

    rows = [{"splitter": "gold sentences", "micro_f1": gold_mode["micro_f1"], "macro_f1": gold_mode["macro_f1"]}]
    for name in args.splitters or SPLITTERS:
        try:
            split = SPLITTERS[name]()
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        matched = predicted = gold_total = 0
        seconds, predicted_sets, clauses, missed, extra = [], [], 0, [], []
        for doc in docs:
            text = doc["text"]
            started = time.perf_counter()
            spans = split(text)
            seconds.append(time.perf_counter() - started)
            mine = boundaries(spans, doc["dense"])
            matched += match_boundaries(mine, doc["gold_boundaries"], args.tolerance)
            predicted, gold_total, clauses = predicted + len(mine), gold_total + len(doc["gold_boundaries"]), clauses + len(spans)
            if args.show_errors:
                at = {doc["dense"][e]: e for _, e in doc["spans"]} | {doc["dense"][e]: e for _, e in spans}
                gold_set, mine_set = set(doc["gold_boundaries"]), set(mine)
                missed += [(doc["name"], text, at[b]) for b in doc["gold_boundaries"] if b not in mine_set]
                extra += [(doc["name"], text, at[b]) for b in mine if b not in gold_set]
            found = scorer.categories([text[s:e] for s, e in spans])
            flagged = [{"start": s, "end": e, "categories": c} for (s, e), c in zip(spans, found) if c]
            predicted_sets += categories_on_gold(doc["spans"], flagged)
        p, r, f = _prf(matched, predicted, gold_total)
        scores = _f1(gold_rows, predicted_sets)
        rows.append({"splitter": name, "clauses": clauses, "boundary_precision": p, "boundary_recall": r,
                     "boundary_f1": f, "micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"],
                     "macro_gap": gold_mode["macro_f1"] - scores["macro_f1"],
                     "ms_per_document": 1000 * statistics.mean(seconds)})
        for title, cases in (("missed", missed), ("extra", extra)) if args.show_errors else ():
            for doc_name, text, at in cases[:: max(1, len(cases) // args.show_errors)][: args.show_errors]:
                print(f"  {name} {title} {doc_name}: {text[max(0, at - 60):at]!r} | {text[at:at + 40]!r}")

    print()
    print(f"{'splitter':<24} {'clauses':>7} {'bnd P':>6} {'bnd R':>6} {'bnd F1':>6} "
          f"{'micro':>6} {'macro':>6} {'gap':>5} {'ms/doc':>7}")
    for row in rows:
        if "clauses" not in row:
            print(f"{row['splitter']:<24} {len(sentences):>7} {'':>6} {'':>6} {'':>6} "
                  f"{row['micro_f1']:>6.1f} {row['macro_f1']:>6.1f} {'':>5} {'':>7}")
            continue
        print(f"{row['splitter']:<24} {row['clauses']:>7} {row['boundary_precision']:>6.1f} "
              f"{row['boundary_recall']:>6.1f} {row['boundary_f1']:>6.1f} {row['micro_f1']:>6.1f} "
              f"{row['macro_f1']:>6.1f} {row['macro_gap']:>5.1f} {row['ms_per_document']:>7.1f}")

    normalization = []
    if not args.no_normalization:
        lexglue = [json.loads(line) for line in LEXGLUE_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
        lexglue_rows = [multi_hot(r["labels"]) for r in lexglue]
        print()
        print(f"{'normalization (before scoring)':<30} {'shared micro':>12} {'shared macro':>12} "
              f"{'LexGLUE micro':>13} {'LexGLUE macro':>13} {'texts changed':>13} {'verdicts changed':>16}")
        plain = scorer.categories(sentences) + scorer.categories([r["text"] for r in lexglue])
        for name, normalize in NORMALIZATIONS.items():
            shared_found = scorer.categories([normalize(s) for s in sentences])
            test_found = scorer.categories([normalize(r["text"]) for r in lexglue])
            shared, test = _f1(gold_rows, shared_found), _f1(lexglue_rows, test_found)
            changed = sum(normalize(s) != s for s in sentences) + sum(normalize(r["text"]) != r["text"] for r in lexglue)
            flips = sum(set(a) != set(b) for a, b in zip(plain, shared_found + test_found))
            normalization.append({"normalization": name, "shared_micro_f1": shared["micro_f1"],
                                  "shared_macro_f1": shared["macro_f1"], "lexglue_test_micro_f1": test["micro_f1"],
                                  "lexglue_test_macro_f1": test["macro_f1"], "texts_changed": changed,
                                  "verdicts_changed": flips})
            print(f"{name:<30} {shared['micro_f1']:>12.1f} {shared['macro_f1']:>12.1f} "
                  f"{test['micro_f1']:>13.1f} {test['macro_f1']:>13.1f} {changed:>13} {flips:>16}")

    if cache_file:
        cache_file.write_text(json.dumps({"model": args.model, "categories": scorer.cache}), encoding="utf-8")
    seconds = time.perf_counter() - wall
    print(f"\nwall time {seconds:.0f} s ({scorer.seconds:.0f} s scoring {len(scorer.cache)} distinct clause texts)")
    print("RESULT " + json.dumps({"documents": len(docs), "gold_sentences": len(sentences), "tolerance": args.tolerance,
                                  "model": args.model, "splitters": rows, "normalization": normalization,
                                  "wall_s": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
