"""Serving speed of the local KServe endpoint against a naive baseline, in one run.

Measures, over HTTP on 127.0.0.1 against the real server process (`tosguard serve`):
- single-clause latency (p50/p99) over sequential V1 requests of one test clause each;
- batched throughput: V1 requests of 64 clauses each over the test split;
- one whole document of 300 test sentences (V1 "document");
and, in-process, the naive baseline: a transformers feature-extraction pipeline called once
per clause (then mean pooling and the same head). Ends with a line `RESULT {json}`.

    .venv/bin/python benchmarks/serve_latency.py [--model DIR] [--single 300] [--clauses 1600]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import requests


def _test_clauses(n: int) -> list[str]:
    from tosguard.components.download import bundled_dir

    lines = (bundled_dir() / "test.jsonl").read_text().splitlines()
    return [json.loads(l)["text"].strip() for l in lines[:n]]


def _percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def naive_baseline(model_dir: str, clauses: list[str]) -> dict:
    from safetensors.torch import load_file
    from transformers import pipeline

    extractor = pipeline("feature-extraction", model=model_dir, tokenizer=model_dir, framework="pt", device=-1)
    head = load_file(os.path.join(model_dir, "classifier.safetensors"))
    weight, bias = head["weight"].numpy(), head["bias"].numpy()
    started = time.perf_counter()
    for clause in clauses:
        hidden = np.asarray(extractor(clause, truncation=True, max_length=128)[0])  # tokens x hidden
        logits = hidden.mean(axis=0) @ weight.T + bias
        1 / (1 + np.exp(-logits))
    seconds = time.perf_counter() - started
    return {"clauses_per_s": len(clauses) / seconds, "mean_ms": 1000 * seconds / len(clauses)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model folder (default: the latest trained model)")
    parser.add_argument("--single", type=int, default=300, help="single-clause requests to time")
    parser.add_argument("--clauses", type=int, default=1600, help="clauses for the batched measure")
    parser.add_argument("--batch", type=int, default=64, help="clauses per batched request")
    parser.add_argument("--baseline", type=int, default=200, help="clauses for the naive baseline")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args(argv)

    os.environ.setdefault("TOSGUARD_HOME", tempfile.mkdtemp(prefix="tosguard-bench-"))
    os.environ["TOSGUARD_SERVE_PRECISION"] = args.precision
    from tosguard.components.deploy import start_local_server, stop_local_server

    model_dir = args.model
    if not model_dir:
        from tosguard.pipelines.cli import _latest_model_dir

        model_dir = _latest_model_dir()
    clauses = _test_clauses(max(args.clauses, args.single, 300))
    state = start_local_server(model_dir)
    url = f"{state['url']}/v1/models/tosguard:predict"
    http = requests.Session()
    try:
        for clause in clauses[:20]:  # warm-up
            http.post(url, json={"instances": [clause]}).raise_for_status()
        single = []
        for clause in clauses[: args.single]:
            t = time.perf_counter()
            http.post(url, json={"instances": [clause]}).raise_for_status()
            single.append(time.perf_counter() - t)
        batched = clauses[: args.clauses]
        t = time.perf_counter()
        for i in range(0, len(batched), args.batch):
            http.post(url, json={"instances": batched[i : i + args.batch]}).raise_for_status()
        batched_s = time.perf_counter() - t
        document = " ".join(clauses[:300])
        t = time.perf_counter()
        doc = http.post(url, json={"document": document})
        doc.raise_for_status()
        document_s = time.perf_counter() - t
        sentences = doc.json()["document"]["sentences"]
    finally:
        stop_local_server()
    result = {
        "precision": args.precision,
        "single_clause_ms": {"p50": _percentile(single, 50), "p99": _percentile(single, 99), "n": len(single)},
        "batched": {"clauses_per_s": len(batched) / batched_s, "clauses": len(batched), "batch": args.batch},
        "document": {"characters": len(document), "sentences": sentences, "seconds": document_s},
    }
    print(f"single clause: p50 {result['single_clause_ms']['p50']:.1f} ms, p99 {result['single_clause_ms']['p99']:.1f} ms")
    print(f"batched ({args.batch}/request): {result['batched']['clauses_per_s']:.0f} clauses/s")
    print(f"document of {sentences} sentences: {document_s:.2f} s")
    baseline = naive_baseline(model_dir, clauses[: args.baseline])
    result["naive_baseline"] = baseline
    result["speedup_vs_naive"] = result["batched"]["clauses_per_s"] / baseline["clauses_per_s"]
    print(f"naive baseline (transformers pipeline per clause): {baseline['clauses_per_s']:.0f} clauses/s, "
          f"{baseline['mean_ms']:.1f} ms/clause; batched speedup {result['speedup_vs_naive']:.1f}x")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
