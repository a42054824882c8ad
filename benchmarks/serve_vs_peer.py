"""tosguard's predictor against KServe's own huggingfaceserver, side by side in one run.

Both serve a MiniLM-L6-size classifier on 127.0.0.1, one at a time, and the same reference
client (../shared/peers/kserve-huggingfaceserver/bench.py) sends both the same LexGLUE test
clauses in the same order: single-clause latency, 64-clause batches, 4 concurrent clients
x 16 clauses. Then, in-process, how often bf16 scoring changes a test clause's category
set against fp32. Prints a table and one line `RESULT {json}`.

    bash ../shared/peers/kserve-huggingfaceserver/setup.sh /tmp/kserve-peer   # once
    .venv/bin/python benchmarks/serve_vs_peer.py --model DIR [--peer-dir /tmp/kserve-peer] [--precision auto]

Run it on an otherwise idle machine: the two servers share its cores with nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "kserve-huggingfaceserver"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: list[str], ready_url: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if requests.get(ready_url, timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"server not ready after 300 s; see {log}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _bench(url: str, model: str, clauses: Path, label: str, smoke: bool) -> dict:
    command = [sys.executable, str(PEER / "bench.py"), "--url", url, "--model", model, "--clauses", str(clauses),
               "--label", label] + (["--smoke"] if smoke else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"bench.py failed for {label}: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def category_agreement(model_dir: str, clauses: list[str]) -> dict:
    """How many test clauses get another category set in bf16 than in fp32."""
    from tosguard.components.serving.scorer import ClauseScorer

    fp32 = ClauseScorer(model_dir, "fp32").score(clauses)
    bf16 = ClauseScorer(model_dir, "bf16").score(clauses)
    differ = sum(a["categories"] != b["categories"] for a, b in zip(fp32, bf16))
    worst = max(abs(a["scores"][c] - b["scores"][c]) for a, b in zip(fp32, bf16) for c in a["scores"])
    return {"clauses": len(clauses), "category_sets_differ": differ, "percent": 100 * differ / len(clauses),
            "max_score_difference": worst}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported tosguard model folder (MiniLM-L6 size)")
    parser.add_argument("--peer-dir", default="/tmp/kserve-peer", help="where setup.sh built the peer")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--smoke", action="store_true", help="a tiny run to check the wiring; not a benchmark")
    parser.add_argument("--skip-peer", action="store_true", help="measure tosguard only")
    args = parser.parse_args(argv)

    from tosguard.components.download import bundled_dir

    clauses_file = bundled_dir() / "test.jsonl"
    clauses = [json.loads(l)["text"] for l in clauses_file.read_text().splitlines() if l.strip()]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    results = {}

    port = _free_port()
    env = dict(os.environ, TOSGUARD_SERVE_PRECISION=args.precision, TOSGUARD_ACCESS_LOG="0")
    proc = _serve([sys.executable, "-m", "tosguard.components.serving", "--model-dir", args.model, "--host",
                   "127.0.0.1", "--http-port", str(port)], f"http://127.0.0.1:{port}/v2/health/ready",
                  logs / "tosguard-bench-server.log", env)
    try:
        results["tosguard"] = _bench(f"http://127.0.0.1:{port}", "tosguard", clauses_file,
                                     f"tosguard {args.precision}", args.smoke)
    finally:
        _stop(proc)

    if not args.skip_peer:
        peer_python = Path(args.peer_dir) / "venv" / "bin" / "python"
        if not peer_python.is_file():
            raise SystemExit(f"no peer at {args.peer_dir}: run {PEER / 'setup.sh'} {args.peer_dir} first")
        port = _free_port()
        dtype = "float32" if args.precision == "fp32" else "bfloat16"
        proc = _serve([str(peer_python), str(PEER / "launch.py"), "--model_dir", f"{args.peer_dir}/minilm",
                       "--model_name", "minilm", "--task", "sequence_classification", "--return_raw_logits",
                       "--http_port", str(port), "--backend", "huggingface", "--dtype", dtype,
                       "--max_model_len", "128", "--disable_log_requests"],
                      f"http://127.0.0.1:{port}/v1/models/minilm", logs / "peer-bench-server.log")
        try:
            results["peer"] = _bench(f"http://127.0.0.1:{port}", "minilm", clauses_file, f"peer {dtype}", args.smoke)
        finally:
            _stop(proc)

    results["bf16_vs_fp32"] = category_agreement(args.model, clauses)
    ours = results["tosguard"]
    print(f"{'':28} {'tosguard':>10} {'peer':>10} {'ratio':>7}")
    rows = [("64-clause batches, clauses/s", ("batched", "clauses_per_s")),
            ("4 clients x 16, clauses/s", ("concurrent", "clauses_per_s")),
            ("single clause p50, ms", ("single", "p50_ms")), ("single clause p99, ms", ("single", "p99_ms"))]
    for title, (group, key) in rows:
        mine = ours[group][key]
        theirs = results.get("peer", {}).get(group, {}).get(key)
        ratio = f"{mine / theirs:.2f}" if theirs else "-"
        print(f"{title:28} {mine:>10.1f} {theirs if theirs is not None else '-':>10} {ratio:>7}")
    agreement = results["bf16_vs_fp32"]
    print(f"bf16 vs fp32: category sets differ on {agreement['category_sets_differ']} of {agreement['clauses']} "
          f"test clauses ({agreement['percent']:.2f}%); largest score difference {agreement['max_score_difference']:.4f}")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
