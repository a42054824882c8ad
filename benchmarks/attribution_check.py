"""How much the words occlusion picks really matter: delete a flagged clause's top-k words
(by occlusion weight) together and measure how far its category score falls, against
deleting k words chosen at random (the same clause, averaged over draws).

Clauses: the gold sentences of labelled documents (default: ../shared/data/tos_documents)
that the model flags. Prints a table and a final `RESULT {json}` line.

    .venv/bin/python benchmarks/attribution_check.py --model DIR [FILES...] [--k 1,3,5]
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time

import numpy as np


def _delete(clause: str, spans: list[tuple[int, int]]) -> str:
    out, position = [], 0
    for start, end in sorted(spans):
        out.append(clause[position:start])
        position = end
    out.append(clause[position:])
    return " ".join("".join(out).split())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--model", required=True, help="a tosguard model folder or URI")
    parser.add_argument("--k", default="1,3,5")
    parser.add_argument("--draws", type=int, default=5, help="random deletions per clause and k")
    args = parser.parse_args(argv)
    files = args.files or sorted(glob.glob("../shared/data/tos_documents/*.txt"))

    import tosguard
    from tosguard.components import attribution
    from tosguard.components.attribution import _words, explain
    from tosguard.components.documents import read_labelled

    # Rank every word of every flagged clause (the report keeps the top 5 above 0.01 of at
    # most 60 clauses; here the ranking itself is under test).
    attribution.MAX_CLAUSES, attribution.TOP_WORDS, attribution.MIN_WEIGHT = 10**6, 10**6, -1.0

    started = time.time()
    scorer = tosguard.load_model(args.model)
    clauses = [c for path in files for c in read_labelled(path)["clauses"]]
    results = scorer.score(clauses)
    flagged = [{"clause": c, "start": 0, "end": len(c), **r} for c, r in zip(clauses, results) if r["unfair"]]
    report = explain({"flagged": flagged}, scorer.score)
    rng = np.random.default_rng(0)
    ks = [int(k) for k in args.k.split(",")]
    texts, plan = [], []  # (k, kind, category, base score) per text
    for clause in report["flagged"]:
        if "words" not in clause:
            continue
        category = clause["categories"][0]
        base = clause["scores"][category]
        spans = _words(clause["clause"])
        ranked = [(w["start"], w["end"]) for w in clause["words"][category]]
        for k in ks:
            if len(spans) <= k or len(ranked) < k:
                continue
            texts.append(_delete(clause["clause"], ranked[:k]))
            plan.append((k, "top", category, base))
            for _ in range(args.draws):
                chosen = rng.choice(len(spans), size=k, replace=False)
                texts.append(_delete(clause["clause"], [spans[i] for i in chosen]))
                plan.append((k, "random", category, base))
    scored = scorer.score(texts)
    rows = {}
    for (k, kind, category, base), result in zip(plan, scored):
        drop = base - result["scores"][category]
        flipped = category not in result["categories"]
        rows.setdefault((k, kind), []).append((drop, flipped))
    print(f"{len(clauses)} gold sentences in {len(files)} documents, {len(flagged)} flagged by the model, "
          f"{report['attribution']['explained']} explained")
    print(f"{'k':>2}  {'deleted words':14}  {'clauses':>7}  {'mean score drop':>15}  {'category lost':>13}")
    summary = {}
    for k in ks:
        for kind in ("top", "random"):
            values = rows.get((k, kind), [])
            if not values:
                continue
            drops = np.array([d for d, _ in values])
            lost = np.mean([f for _, f in values])
            n = len(values) // (args.draws if kind == "random" else 1)
            summary[f"{kind}{k}"] = {"mean_drop": float(drops.mean()), "lost": float(lost), "clauses": n}
            print(f"{k:>2}  {'top by occlusion' if kind == 'top' else 'random':14}  {n:7d}  {drops.mean():15.3f}  "
                  f"{100 * lost:12.1f}%")
    wall = time.time() - started
    print(f"wall {wall:.0f} s")
    print("RESULT " + json.dumps({"model": args.model, "files": len(files), "flagged": len(flagged),
                                  "wall_seconds": wall, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
