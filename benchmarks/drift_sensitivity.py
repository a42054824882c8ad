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
    parser.add_argument("--clauses", type=int, default=500, help="clauses per window (default: min_clauses)")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.05, 0.08, 0.1, 0.12, 0.15])
    parser.add_argument("--seed", type=int, default=0)
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
            result = monitor.compare(reference, {"clauses": args.clauses, "categories": categories})
            said += result["retrain"]
            psis.append(next(r["psi"] for r in result["categories"] if r["category"] == args.category))
        rows.append({"shift": shift, "retrain": said, "windows": args.windows, "median_psi": statistics.median(psis)})
        print(f"{shift:>6.2f} {said:>5}/{args.windows:<3} {statistics.median(psis):>11.3f}")
    print(f"{time.time() - started:.1f} s")
    print("RESULT " + json.dumps({"reference": args.reference, "category": args.category, "clauses": args.clauses,
                                  "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
