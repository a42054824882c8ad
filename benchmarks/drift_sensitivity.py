"""How sensitive the drift rule is for one model: windows of live traffic drawn from the
model's own test reference (reference.json), with a share of one category's clauses moved
from the lowest score bucket to the top one, judged as `tosguard monitor` judges them.

Prints per shift how many of the windows said retrain and the median PSI of the shifted
category; shift 0 is the false-alarm rate on traffic like the reference. Ends with a line
`RESULT {json}`.

    .venv/bin/python benchmarks/drift_sensitivity.py --reference MODEL/reference.json
        [--category "Unilateral termination"] [--clauses 500] [--windows 200]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a model's reference.json")
    parser.add_argument("--category", default="Unilateral termination", help="the category whose scores move")
    parser.add_argument("--clauses", type=int, default=500,
                        help="clauses per window (default 500, the monitor's min_clauses; a smaller window is judged "
                             "with min_clauses lowered to its size)")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.05, 0.08, 0.1, 0.12, 0.15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="the reference's model folder: also score the bundled test split at the "
                                        "serving precision bf16 and compare it with the (fp32) reference")
    args = parser.parse_args(argv)

    from tosguard.components import monitor

    reference = json.loads(open(args.reference, encoding="utf-8").read())
    if args.category not in reference["categories"]:
        parser.error(f"no category {args.category!r} in the reference: {', '.join(reference['categories'])}")
    rng = np.random.default_rng(args.seed)
    started = time.time()
    rows = []
    print(f"{'shift':>6} {'retrain':>9} {'median PSI':>11}")
    for shift in args.shifts:
        said, psis = 0, []
        for _ in range(args.windows):
            categories = {}
            for name, entry in reference["categories"].items():
                share = np.asarray(entry["counts"], dtype=np.float64) / sum(entry["counts"])
                if name == args.category:
                    moved = min(shift, share[0])
                    share[0] -= moved
                    share[-1] += moved
                categories[name] = {"bounds": reference["buckets"], "positives": 0.0,
                                    "counts": rng.multinomial(args.clauses, share).tolist()}
            result = monitor.compare(reference, {"clauses": args.clauses, "categories": categories},
                                     min_clauses=min(args.clauses, monitor.MIN_CLAUSES))
            said += result["retrain"]
            psis.append(next(r["psi"] for r in result["categories"] if r["category"] == args.category))
        rows.append({"shift": shift, "retrain": said, "windows": args.windows, "median_psi": statistics.median(psis)})
        print(f"{shift:>6.2f} {said:>5}/{args.windows:<3} {statistics.median(psis):>11.3f}")
    print(f"{time.time() - started:.1f} s")
    offset = _precision_offset(args.model, reference) if args.model else None
    print("RESULT " + json.dumps({"reference": args.reference, "category": args.category, "clauses": args.clauses,
                                  "rows": rows, "bf16_against_reference": offset}))
    return 0


def _precision_offset(model: str, reference: dict) -> dict:
    """The test split scored as a bf16 server scores it, judged against the reference (scored
    in fp32 by the evaluate step): the drift a server reports from precision alone."""
    from tosguard.components import monitor
    from tosguard.components.download import bundled_dir
    from tosguard.components.serving.scorer import ClauseScorer

    texts = [json.loads(line)["text"] for line in (bundled_dir() / "test.jsonl").read_text().splitlines()]
    if reference.get("clauses") != len(texts):
        raise SystemExit(f"the reference holds {reference.get('clauses')} clauses and the bundled test split "
                         f"{len(texts)}: it was not made from the bundled data")
    if reference.get("model") and reference["model"] != monitor.model_fingerprint(model):
        raise SystemExit(f"{model} is not the reference's model (fingerprint {monitor.model_fingerprint(model)}, "
                         f"the reference's {reference['model']})")
    started = time.time()
    scorer = ClauseScorer(model, "bf16")
    scores = np.concatenate([scorer.raw_scores(texts[i:i + 64])[:, :-1] for i in range(0, len(texts), 64)])
    live = {"clauses": len(texts), "categories": {
        name: {"bounds": reference["buckets"], "positives": 0.0,
               "counts": monitor._bucket_counts(scores[:, k], reference["buckets"])}
        for k, name in enumerate(scorer.categories)}}
    result = monitor.compare(reference, live)
    out = {"max_psi": max(r["psi"] for r in result["categories"]), "max_ks": max(r["ks"] for r in result["categories"]),
           "retrain": result["retrain"], "seconds": time.time() - started}
    print(f"bf16 scores of the {len(texts)} test clauses against the reference: largest PSI {out['max_psi']:.4f}, "
          f"largest KS {out['max_ks']:.4f}, retrain {out['retrain']} ({out['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    sys.exit(main())
