"""Drift watch against a real server: its /metrics after a familiar and a drifted stream,
compared with the model's test reference, through `tosguard monitor --url`."""
import contextlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from tosguard.components import monitor
from tosguard.components.labels import CATEGORIES
from tosguard.pipelines.cli import main
from tests.conftest import free_port


@pytest.fixture(scope="module")
def spread_model(trained_model_dir, tokenized_dir, tmp_path_factory):
    """The session's briefly trained model with its head weights scaled up, so its scores
    spread over the histogram's buckets (a 12-step model scores everything near the prior),
    and its reference from the test slice, as the evaluate step writes it."""
    import torch
    from safetensors.torch import load_file, save_file

    from tosguard.components.evaluate import evaluate

    folder = tmp_path_factory.mktemp("spread") / "model"
    shutil.copytree(trained_model_dir, folder)
    head = load_file(str(folder / "classifier.safetensors"))
    head = {k: (v * 40 if k.endswith("weight") else v).contiguous() for k, v in head.items()}
    save_file(head, str(folder / "classifier.safetensors"))
    card = json.loads((folder / "tosguard.json").read_text())
    card.pop("calibration", None)  # fit for the unscaled head; the raw scores are what is served
    card["thresholds"] = [0.5] * len(CATEGORIES)
    (folder / "tosguard.json").write_text(json.dumps(card))
    scores = evaluate(str(folder), str(tokenized_dir), "test")
    (folder / monitor.REFERENCE_FILE).write_text(json.dumps(scores["reference"]))
    assert torch.is_tensor(next(iter(head.values())))
    return folder


@pytest.fixture
def server(spread_model, tosguard_home, monkeypatch):
    from tosguard.components.deploy import start_local_server, stop_local_server

    monkeypatch.setenv("TOSGUARD_SERVE_PRECISION", "fp32")  # the reference was scored in fp32
    state = start_local_server(str(spread_model), port=free_port())
    yield state
    stop_local_server()


@contextlib.contextmanager
def _stub(answer):
    """A plain HTTP server on 127.0.0.1 whose POSTs are answered by answer(path, headers,
    body) -> (status, body bytes, extra headers); yields its base URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            status, data, headers = answer(self.path, self.headers, self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(status)
            for key, value in {"Content-Length": str(len(data)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _test_clauses(data_slice_dir) -> list[str]:
    return [json.loads(line)["text"] for line in (data_slice_dir / "test.jsonl").read_text().splitlines()]


def _send(url: str, clauses: list[str]) -> None:
    for start in range(0, len(clauses), 64):
        response = requests.post(f"{url}/v1/models/tosguard:predict", json={"instances": clauses[start:start + 64]},
                                 timeout=60)
        assert response.status_code == 200, response.text


def _word_salad(n: int, seed: int = 0) -> list[str]:
    words = ("recipe garden sunshine bicycle melody harbor violin pancake meadow lantern puzzle orbit "
             "cinnamon glacier tulip kettle").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def test_the_familiar_stream_is_stable_and_a_drifted_one_says_retrain(server, spread_model, data_slice_dir, capsys):
    url = server["url"]
    familiar = _test_clauses(data_slice_dir)
    # Too little traffic: no verdict either way.
    assert main(["monitor", "--url", url, "--min-clauses", "100"]) == 0
    assert "no verdict: only 0 clauses scored" in capsys.readouterr().out

    _send(url, familiar)  # the very clauses the reference was scored on
    assert main(["monitor", "--url", url, "--min-clauses", "100", "--json"]) == 0
    stable = json.loads(capsys.readouterr().out)
    assert stable["clauses"] == len(familiar) and not stable["retrain"]
    assert max(row["psi"] for row in stable["categories"]) < 0.01
    reference = json.loads((spread_model / monitor.REFERENCE_FILE).read_text())
    for row in stable["categories"]:  # positive rates: the served decisions match the reference's
        assert row["live_positive_rate"] == pytest.approx(reference["categories"][row["category"]]["positive_rate"],
                                                           abs=0.02)

    # Three times as many clauses of word salad: the score distributions move.
    _send(url, _word_salad(3 * len(familiar)))
    code = main(["monitor", "--url", url, "--min-clauses", "100", "--json"])
    drifted = json.loads(capsys.readouterr().out)
    assert code == 3 and drifted["retrain"], drifted["reason"]
    moved = [row for row in drifted["categories"] if row["drifted"]]
    assert moved and all(row["psi"] >= 0.25 or row["ks"] >= 0.2 for row in moved)
    assert drifted["reason"].startswith("drift in ")


def test_a_window_judges_only_what_arrived_during_it(server, data_slice_dir, monkeypatch):
    url = server["url"]
    _send(url, _word_salad(400, seed=1))  # drifted traffic before the window opens
    familiar = _test_clauses(data_slice_dir)
    waited = []

    def traffic_during_the_window(seconds):  # the window's wait, filled with familiar traffic
        waited.append(seconds)
        _send(url, familiar)

    monkeypatch.setattr(monitor, "_wait", traffic_during_the_window)
    result = monitor.check(url, str(server["model_dir"]), window=30.0, min_clauses=100)
    assert waited == [30.0]
    assert result["clauses"] == len(familiar)
    assert not result["retrain"], result["reason"]
    # The same server judged on everything since it started still sees the word salad.
    assert monitor.check(url, str(server["model_dir"]), min_clauses=100)["retrain"]


@contextlib.contextmanager
def _second_server(model_dir):
    """Another server process over the same model (a second replica), on 127.0.0.1."""
    import subprocess
    import sys
    import time

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tosguard.components.serving", "--model-dir", str(model_dir),
                                "--host", "127.0.0.1", "--http-port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None and time.time() < deadline, "the second server did not start"
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_scheduled_checks_with_a_mark_judge_only_the_traffic_since_the_last_verdict(
        server, spread_model, data_slice_dir, s3_env, tmp_path, capsys):
    """What a cron'd `monitor` (or the drift-watch pipeline) needs: once acted on, a drifted
    stream must not keep saying retrain on the next run when nothing new arrived. Without a
    mark, every check judges everything since the server started, and does."""
    from tosguard.components import storage

    url, model = server["url"], str(spread_model)
    mark = "s3://tosguard/monitor/endpoint.json"  # the store is S3 on a cluster (a moto server here)
    familiar = _test_clauses(data_slice_dir)
    _send(url, _word_salad(3 * len(familiar), seed=2))
    first = monitor.check(url, model, since=mark, min_clauses=100)
    assert first["retrain"] and first["clauses"] == 3 * len(familiar)
    assert any("no earlier check recorded" in note for note in first["notes"])
    written = json.loads(storage.read_text(mark))
    (entry,) = written["reads"].values()
    assert written["url"] == url and entry["read"]["clauses"] == 3 * len(familiar)

    # Next run, nothing new: the plain check still says retrain; the marked one has no verdict
    # and keeps its mark where it was.
    assert monitor.check(url, model, min_clauses=100)["retrain"]
    idle = monitor.check(url, model, since=mark, min_clauses=100)
    assert idle["clauses"] == 0 and not idle["retrain"] and not idle["enough_traffic"]
    assert json.loads(storage.read_text(mark)) == written

    # Familiar traffic arrives in two halves: the first half alone is too little, then both together are judged.
    half = len(familiar) // 2
    _send(url, familiar[:half])
    assert not monitor.check(url, model, since=mark, min_clauses=len(familiar))["enough_traffic"]
    _send(url, familiar[half:])
    calm = monitor.check(url, model, since=mark, min_clauses=len(familiar))
    assert calm["clauses"] == len(familiar) and calm["enough_traffic"] and not calm["retrain"], calm["reason"]
    assert max(row["psi"] for row in calm["categories"]) < 0.01
    assert monitor.check(url, model, min_clauses=100)["retrain"]  # everything since start: the salad still weighs

    # Two replicas behind one URL are read one at a time: each keeps its own read in the mark,
    # so reading the other one in between does not send the first back to its start.
    with _second_server(model) as other:
        _send(other, familiar)
        seen = monitor.check(other, model, since=mark, min_clauses=100)
        assert seen["clauses"] == len(familiar) and not seen["retrain"]
        assert any("no read of this server process" in note for note in seen["notes"])
        assert len(json.loads(storage.read_text(mark))["reads"]) == 2
        _send(url, familiar)
        back = monitor.check(url, model, since=mark, min_clauses=100)
        assert back["clauses"] == len(familiar) and not back["retrain"], back["reason"]

    # The CLI, with a local mark file; --window and --since-last exclude each other.
    local_mark = tmp_path / "marks" / "watch.json"
    assert main(["monitor", "--url", url, "--model", model, "--since-last", str(local_mark), "--min-clauses", "100",
                 "--json"]) == 3  # no mark yet: everything since start
    capsys.readouterr()
    assert main(["monitor", "--url", url, "--model", model, "--since-last", str(local_mark), "--min-clauses", "100",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clauses"] == 0
    with pytest.raises(SystemExit):
        main(["monitor", "--url", url, "--model", model, "--since-last", str(local_mark), "--window", "5"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        monitor.check(url, model, window=5.0, since=str(local_mark))

    # A mark that is not one is rewritten, not fatal.
    local_mark.write_text("{not json")
    broken = monitor.check(url, model, since=str(local_mark), min_clauses=100)
    assert broken["retrain"] and any("could not be read" in note for note in broken["notes"])
    assert monitor.check(url, model, since=str(local_mark), min_clauses=100)["clauses"] == 0
    # A mark that cannot be written leaves a retrain verdict standing and says so; after a
    # calm verdict it fails the check (nothing is lost, and a bad store is seen at once).
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    unwritten = monitor.check(url, model, since=str(blocked / "mark.json"), min_clauses=100)
    assert unwritten["retrain"] and any("could not be written" in note for note in unwritten["notes"])
    with _second_server(model) as other:
        _send(other, familiar)
        with pytest.raises(OSError, match="could not be written.*the verdict was: no category"):
            monitor.check(other, model, since=str(blocked / "mark.json"), min_clauses=100)
    # A mark the store cannot read (here a folder) fails the check instead of judging old traffic as new.
    with pytest.raises(OSError):
        monitor.check(url, model, since=str(tmp_path), min_clauses=100)
    # A mistyped location is refused before anything is read.
    for bad in ("gs://bucket/mark.json", "s3:///mark.json", "s3://bucket", "  "):
        with pytest.raises(ValueError, match="mark"):
            monitor.check(url, model, since=bad, min_clauses=100)
    assert main(["monitor", "--url", url, "--model", model, "--since-last", "s3://bucket/"]) == 2
    assert "s3://BUCKET/KEY" in capsys.readouterr().err


@contextlib.contextmanager
def _round_robin(*backends):
    """A Service balancing over replicas, on 127.0.0.1: each GET goes to the next backend in turn."""
    import http.server
    import itertools
    import threading

    turn, lock = itertools.cycle(backends), threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                backend = next(turn)
            answer = requests.get(backend + self.path, timeout=30)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_several_reads_judge_the_replicas_behind_one_url_together(server, spread_model, data_slice_dir, tmp_path,
                                                                   capsys):
    """Behind a Service each read of /metrics reaches one replica. With reads > 1 the check
    pools every process it reaches: a drifted hour spread over two replicas is one verdict
    and, acknowledged, one retrain (with one read per run it was one retrain per replica); a
    window counts the processes read at both ends, and one read per end that reaches two
    different processes is still refused."""
    url, model = server["url"], str(spread_model)
    familiar = _test_clauses(data_slice_dir)
    mark = str(tmp_path / "mark.json")
    with _second_server(model) as other, _round_robin(url, other) as service:
        _send(url, familiar)
        _send(other, familiar)
        one = monitor.check(service, model, min_clauses=1)
        assert one["clauses"] == len(familiar) and len(one["server_instances"]) == 1
        both = monitor.check(service, model, reads=4, min_clauses=1)
        assert both["clauses"] == 2 * len(familiar) and len(both["server_instances"]) == 2
        assert not both["retrain"] and "2 server process(es) reached in 4 reads of /metrics, 2 judged together" in \
            both["notes"]
        assert both["server_instance"] is None and both["server_model"] == one["server_model"]
        assert main(["monitor", "--url", service, "--model", model, "--reads", "4", "--min-clauses", "1",
                     "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["server_instances"]) == 2
        with pytest.raises(SystemExit):
            main(["monitor", "--url", service, "--model", model, "--reads", "65"])
        assert "outside [1, 64]" in capsys.readouterr().err

        first = monitor.check(service, model, since=mark, reads=4, min_clauses=100)
        assert first["clauses"] == 2 * len(familiar) and not first["retrain"]
        assert len(json.loads(Path(mark).read_text())["reads"]) == 2

        # A drifted hour split over the two replicas: one verdict over both shares, held for run r1.
        salad = _word_salad(3 * len(familiar), seed=5)
        _send(url, salad[::2])
        _send(other, salad[1::2])
        drifted = monitor.check(service, model, since=mark, reads=4, min_clauses=100, hold_retrain=True, run="r1")
        assert drifted["retrain"] and drifted["clauses"] == len(salad), drifted["reason"]
        held = json.loads(Path(monitor.pending_mark(mark)).read_text())
        assert held["run"] == "r1" and len(held["reads"]) == 2
        assert monitor.acknowledge(mark, "r1")[0] == "moved"
        after = monitor.check(service, model, since=mark, reads=4, min_clauses=100)
        assert after["clauses"] == 0 and not after["retrain"] and not after["enough_traffic"]
        # A replica no read reaches keeps its read in the mark and is judged, from there, when
        # one does (here read directly; the mark is keyed by process, not by URL).
        _send(other, familiar)
        assert monitor.check(url, model, since=mark, min_clauses=1)["clauses"] == 0
        assert monitor.check(other, model, since=mark, min_clauses=1)["clauses"] == len(familiar)

        # A window: reads at both ends pool both processes; one read per end reaches two
        # different processes (the proxy alternates) and is refused.
        def traffic(seconds):
            _send(url, familiar[:40])
            _send(other, familiar[:40])

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(monitor, "_wait", traffic)
            window = monitor.check(service, model, window=1.0, reads=4, min_clauses=1)
            assert window["clauses"] == 80 and len(window["server_instances"]) == 2
            with pytest.raises(ValueError, match="different server processes"):
                monitor.check(service, model, window=1.0, min_clauses=1)
    with pytest.raises(ValueError, match="reads of /metrics"):
        monitor.check(url, model, reads=0)


def test_pooling_adds_replicas_of_one_model_and_refuses_a_rollout_in_between():
    a, b = _metrics("aaa", "m1", "default", 100.0, 90.0), _metrics("bbb", "m1", "default", 50.0, 20.0)
    pooled = monitor.pool([a, b])
    assert pooled["clauses"] == 150 and pooled["categories"]["A"]["counts"] == [110.0, 40.0]
    assert pooled["categories"]["A"]["positives"] == 10 + 30 and pooled["server"] == {"model": "m1",
                                                                                       "profile": "default"}
    assert monitor.pool([a])["server"]["instance"] == "aaa"
    with pytest.raises(ValueError, match="differ in model"):
        monitor.pool([a, _metrics("ccc", "m2", "default", 10.0, 5.0)])
    with pytest.raises(ValueError, match="differ in profile"):
        monitor.pool([a, _metrics("ccc", "m1", "triage", 10.0, 5.0)])
    with pytest.raises(ValueError, match="different categories"):
        monitor.pool([a, {**b, "categories": {**b["categories"], "B": b["categories"]["A"]}}])
    assert monitor._held_reads({"reads": {"aaa": {"clauses": 1}}}) == {} == monitor._held_reads([a])


def test_a_retrain_held_by_the_first_version_of_the_watch_is_still_acknowledged(tmp_path):
    """A pending file from before several reads (one "read") moves into the mark; a new one
    with one process also carries "read", for an acknowledge step of the older version."""
    from tosguard.components.storage import write_text

    a = _metrics("aaa", "m1", "default", 100.0, 90.0)
    mark = str(tmp_path / "mark.json")
    write_text(monitor.pending_mark(mark), json.dumps({"run": "r0", "url": "u", "time": "t", "read": a}))
    assert monitor.acknowledge(mark, "r1")[0] == "other_run"
    assert monitor.acknowledge(mark, "r0")[0] == "moved"
    assert json.loads(Path(mark).read_text())["reads"]["aaa"]["read"] == a
    result = {"enough_traffic": True, "retrain": True, "notes": [], "reason": "drift"}
    monitor._move_mark(mark, "u", {"aaa": a}, "r2", result, held=True)
    held = json.loads(Path(monitor.pending_mark(mark)).read_text())
    assert held["read"] == a and held["reads"] == {"aaa": a}


def test_the_watch_holds_a_retrain_verdict_until_its_retrain_is_done(server, spread_model, data_slice_dir,
                                                                     tmp_path):
    """The pipeline's check holds a retrain verdict for its run: if the retrain fails, the
    next check judges the same drifted traffic (and more) and asks again; once that run's
    retrain is done, the mark moves past it. Another run cannot move it; a verdict that is
    not held drops the hold."""
    url, model = server["url"], str(spread_model)
    mark = str(tmp_path / "mark.json")
    familiar = _test_clauses(data_slice_dir)
    _send(url, familiar)
    assert not monitor.check(url, model, since=mark, hold_retrain=True, run="r0", min_clauses=100)["retrain"]
    calm = json.loads((tmp_path / "mark.json").read_text())
    salad = _word_salad(600, seed=3)
    _send(url, salad)
    asked = monitor.check(url, model, since=mark, hold_retrain=True, run="r1", min_clauses=100)
    assert asked["retrain"] and asked["clauses"] == len(salad)
    assert json.loads((tmp_path / "mark.json").read_text()) == calm  # held, not moved
    # Run r1's retrain failed (no acknowledge): run r2 asks again, over the same traffic.
    again = monitor.check(url, model, since=mark, hold_retrain=True, run="r2", min_clauses=100)
    assert again["retrain"] and again["clauses"] == len(salad)
    assert monitor.acknowledge(mark, "r1")[0] == "other_run"  # r2's hold is not r1's to move
    assert json.loads((tmp_path / "mark.json").read_text()) == calm
    assert monitor.acknowledge(mark, "r2")[0] == "moved"
    assert monitor.acknowledge(mark, "r2")[0] == "none"
    assert not Path(monitor.pending_mark(mark)).exists()
    after = monitor.check(url, model, since=mark, hold_retrain=True, run="r3", min_clauses=100)
    assert after["clauses"] == 0 and not after["retrain"]
    # A hold never acknowledged is dropped by the next verdict that is not held (here, calm
    # traffic ten times the salad: the wider window no longer asks).
    _send(url, salad)
    assert monitor.check(url, model, since=mark, hold_retrain=True, run="r4", min_clauses=100)["retrain"]
    assert Path(monitor.pending_mark(mark)).exists()
    _send(url, familiar * 10)
    diluted = monitor.check(url, model, since=mark, hold_retrain=True, run="r5", min_clauses=100)
    assert not diluted["retrain"] and diluted["clauses"] == len(salad) + 10 * len(familiar), diluted["reason"]
    assert not Path(monitor.pending_mark(mark)).exists()


def test_a_mark_keeps_the_latest_read_per_process_never_goes_back_and_refuses_bad_shapes(tmp_path):
    mark = str(tmp_path / "mark.json")

    def read(instance: str, clauses: float) -> dict:
        return {"clauses": clauses, "server": {"instance": instance, "model": "m", "profile": "default"},
                "categories": {"A": {"bounds": [0.5, 1.0], "counts": [clauses, 0.0], "positives": 0.0}}}

    for i in range(monitor.MARK_READS_KEPT + 3):
        monitor._record(mark, "http://127.0.0.1:1", {f"p{i:02d}": read(f"p{i:02d}", 10.0)})
        data = json.loads(Path(mark).read_text())
        for entry in data["reads"].values():  # distinct times, so "most recent" is well defined
            entry["time"] = f"2026-01-01T00:{int(entry['read']['server']['instance'][1:]):02d}:00Z"
        Path(mark).write_text(json.dumps(data))
    reads, _ = monitor._read_mark(mark)
    assert len(reads) == monitor.MARK_READS_KEPT and "p00" not in reads and "p34" in reads
    monitor._record(mark, "http://127.0.0.1:1", {"p34": read("p34", 50.0)})
    monitor._record(mark, "http://127.0.0.1:1", {"p34": read("p34", 20.0)})  # an older read, written late: ignored
    assert monitor._read_mark(mark)[0]["p34"]["read"]["clauses"] == 50.0
    # Shapes subtract() would trip on are a bad mark (rewritten), not a crash.
    good = json.loads(Path(mark).read_text())
    for broken in ({"counts": [1.0]}, {"counts": "x", "bounds": [0.5], "positives": 0},
                   {"counts": [1.0, 2.0], "bounds": [0.5], "positives": 0.0}):
        bad = json.loads(json.dumps(good))
        bad["reads"]["p34"]["read"]["categories"]["A"] = broken
        Path(mark).write_text(json.dumps(bad))
        reads, why = monitor._read_mark(mark)
        assert reads is None and "could not be read" in why, broken
    bad = json.loads(json.dumps(good))
    bad["reads"]["p34"]["time"] = 5
    Path(mark).write_text(json.dumps(bad))
    assert monitor._read_mark(mark)[0] is None
    # Rewritten whole, no password kept.
    monitor._record(mark, "http://user:secret@127.0.0.1:1", {"p99": read("p99", 1.0)})
    assert set(monitor._read_mark(mark)[0]) == {"p99"} and "secret" not in Path(mark).read_text()


def test_reading_metrics_and_the_statistics():
    reference = {"buckets": [0.5, 1.0], "categories": {"A": {"counts": [90, 10], "positive_rate": 0.1}}}
    text = "\n".join([
        "# TYPE tosguard_category_score histogram",
        'tosguard_category_score_bucket{category="A",le="0.5"} 50.0',
        'tosguard_category_score_bucket{category="A",le="1.0"} 100.0',
        'tosguard_category_score_bucket{category="A",le="+Inf"} 100.0',
        'tosguard_category_score_count{category="A"} 100.0',
        'tosguard_category_score_sum{category="A"} 40.0',
        "# TYPE tosguard_clauses_scored counter",
        "tosguard_clauses_scored_total 100.0",
        "# TYPE tosguard_category_positive counter",
        'tosguard_category_positive_total{category="A"} 50.0',
    ]) + "\n"
    live = monitor.read_live(text)
    assert live["categories"]["A"]["counts"] == [50.0, 50.0] and live["clauses"] == 100
    result = monitor.compare(reference, live, min_clauses=10)
    row = result["categories"][0]
    # PSI of (0.9, 0.1) -> (0.5, 0.5): (0.5-0.9) ln(0.5/0.9) + (0.5-0.1) ln(0.5/0.1) = 0.879
    assert row["psi"] == pytest.approx(0.879, abs=0.005)
    assert row["ks"] == pytest.approx(0.4)
    assert row["live_positive_rate"] == 0.5 and result["retrain"]
    with pytest.raises(ValueError, match="no tosguard_category_score"):
        monitor.read_live("# TYPE other counter\nother_total 1.0\n")
    with pytest.raises(ValueError, match="buckets differ"):
        monitor.compare({**reference, "buckets": [0.3, 1.0]}, live)
    assert monitor.psi(np.array([5, 5]), np.array([5, 5])) == pytest.approx(0.0)
    # A restart (or another replica) between the two reads of a window: counters fell.
    restarted = monitor.read_live(text.replace("100.0", "10.0").replace("50.0", "5.0"))
    with pytest.raises(ValueError, match="counters went down"):
        monitor.subtract(restarted, live)
    assert monitor.subtract(live, restarted)["clauses"] == 90
    with pytest.raises(ValueError, match="not a tosguard server"):
        monitor.read_live('tosguard_category_score_bucket{le="0.5"} 1.0\n')  # no category label
    # Too little traffic: the PSI is still shown, but nothing is marked drifted.
    quiet = monitor.compare(reference, live, min_clauses=101)
    assert quiet["categories"][0]["psi"] == pytest.approx(0.879, abs=0.005)
    assert not quiet["categories"][0]["drifted"] and not quiet["retrain"] and "only 100 clauses" in quiet["reason"]
    for bad in ({"min_clauses": 0}, {"psi_threshold": -1.0}, {"psi_threshold": float("nan")},
                {"ks_threshold": 1.5}, {"ks_threshold": 0.0}):
        with pytest.raises(ValueError, match="drift settings out of range"):
            monitor.compare(reference, live, **bad)


def test_monitor_without_a_known_model_or_server_fails_clearly(tosguard_home, capsys, tmp_path):
    assert main(["monitor", "--url", "http://127.0.0.1:9"]) == 2
    assert "tosguard monitor: error: pass --model" in capsys.readouterr().err
    # An empty or mistyped mark is refused before anything is read (a cron line with an unset
    # variable must not judge everything since the server started, unnoticed, every run).
    for mark in ("", "s3:/bucket/mark.json"):
        assert main(["monitor", "--url", "http://127.0.0.1:9", "--model", "/nonexistent", "--since-last", mark]) == 2
        assert "mark" in capsys.readouterr().err
    assert not Path("s3:").exists()
    (tmp_path / "m").mkdir()
    assert main(["monitor", "--url", "http://127.0.0.1:9", "--model", str(tmp_path / "m")]) == 2
    assert "reference.json not found" in capsys.readouterr().err
    (tmp_path / "m" / monitor.REFERENCE_FILE).write_text("{}")
    assert main(["monitor", "--url", f"http://127.0.0.1:{free_port()}", "--model", str(tmp_path / "m")]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--window", "-5"), ("--window", "nan"), ("--window", "inf"),
                                        ("--psi", "-1"), ("--psi", "nan"), ("--ks", "2"), ("--min-clauses", "0")])
def test_monitor_refuses_nonsense_settings_before_reading_anything(tosguard_home, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "--url", "http://127.0.0.1:9", "--model", "/nonexistent", flag, value])
    assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_cli_url_clients_split_long_lists_and_spot_a_server_that_is_not_tosguard(server, spread_model, tmp_path,
                                                                               capsys):
    """predict --url with more clauses than one request may hold (256) goes in several
    requests and agrees with the same model in process; a server that answers 200 without
    tosguard's fields gets a clear error, not a KeyError."""
    clauses = [f"we may terminate your account number {i} at any time ." for i in range(300)]
    (tmp_path / "many.txt").write_text("\n".join(clauses))
    assert main(["predict", "--url", server["url"], "--file", str(tmp_path / "many.txt"), "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)["predictions"]
    assert main(["predict", "--model", str(spread_model), "--file", str(tmp_path / "many.txt"), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)["predictions"]
    assert len(remote) == 300 and [r["categories"] for r in remote] == [r["categories"] for r in local]
    for reply in (b'{"ok": true}', b"<html>hello</html>"):
        with _stub(lambda path, headers, body: (200, reply, {})) as url:
            assert main(["predict", "--url", url, "one clause ."]) == 2
            assert "without a 'predictions' field: not a tosguard server" in capsys.readouterr().err


def test_cli_url_client_adapts_to_a_stricter_server_sends_the_token_and_keeps_bodies_small(
        spread_model, tosguard_home, monkeypatch, tmp_path, capsys):
    """A server started with a lower clause limit (TOSGUARD_MAX_INSTANCES=50) and a bearer
    token: predict --url reads the token as monitor does, learns the limit from the first
    400 and sends the rest at that size; 300 long non-ASCII clauses (2.7 MB as UTF-8 JSON, 5.4 MB
    with \\u escapes) go in bodies under the server's 2 MB limit."""
    from tosguard.components.deploy import start_local_server, stop_local_server

    monkeypatch.setenv("TOSGUARD_MAX_INSTANCES", "50")
    monkeypatch.setenv("TOSGUARD_AUTH_TOKEN", "s3cret-token")
    state = start_local_server(str(spread_model), port=free_port())
    try:
        clauses = [f"\u5229\u7528\u898f\u7d04 {i} " + "\u7d42\u4e86" * 1500 for i in range(300)]
        (tmp_path / "cjk.txt").write_text("\n".join(clauses), encoding="utf-8")
        assert main(["predict", "--url", state["url"], "--file", str(tmp_path / "cjk.txt"), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["predictions"]) == 300
        monkeypatch.delenv("TOSGUARD_AUTH_TOKEN")
        assert main(["predict", "--url", state["url"], "one clause ."]) == 2
        assert "HTTP 401" in capsys.readouterr().err
    finally:
        stop_local_server()


def test_cli_url_client_against_a_strict_flaky_stub(monkeypatch):
    """The --url client against a stub that sheds load once (Retry-After as an HTTP-date),
    limits bodies to 200,000 bytes (413) and requests to 30 clauses (400): every clause
    comes back, in order; a token with a trailing newline is stripped, one with inner
    control characters is refused without being printed; a URL with a query is refused."""
    import email.utils
    import time

    from tosguard.pipelines import cli

    seen = {"requests": 0, "shed": False, "auth": set(), "sizes": []}

    def answer(path, headers, body):
        seen["requests"] += 1
        seen["auth"].add(headers.get("Authorization"))
        if not seen["shed"]:
            seen["shed"] = True
            return 503, b'{"error": "busy"}', {"Retry-After": email.utils.formatdate(time.time() + 1)}
        if len(body) > 200_000:
            return 413, json.dumps({"error": f"request body of {len(body)} bytes; the limit is 200000"}).encode(), {}
        clauses = json.loads(body)["instances"]
        if len(clauses) > 30:
            message = f'"instances" holds {len(clauses)} clauses; the limit is 30 per request'
            return 400, json.dumps({"error": message}).encode(), {}
        seen["sizes"].append(len(clauses))
        predictions = [{"unfair": False, "categories": [], "scores": {"n": float(c.split()[0])}} for c in clauses]
        return 200, json.dumps({"predictions": predictions}).encode(), {}

    with _stub(answer) as url:
        monkeypatch.setenv("TOSGUARD_AUTH_TOKEN", "tok-123\n")
        clauses = [f"{i} " + "\u00e9" * 1000 for i in range(600)]
        scores = [r["scores"]["n"] for r in cli._RemoteScorer(url).score(clauses)]
        assert scores == [float(i) for i in range(600)] and seen["auth"] == {"Bearer tok-123"}
        assert set(seen["sizes"]) == {30} and seen["requests"] == 3 + 20  # 503, 413, 400, then 20 of 30
        monkeypatch.setenv("TOSGUARD_AUTH_TOKEN", "tok\n123")
        with pytest.raises(ValueError, match="spaces or control characters") as refused:
            cli._RemoteScorer(url)
        assert "tok" not in str(refused.value).replace("token", "")
        with pytest.raises(ValueError, match="without a query"):
            cli._RemoteScorer(url + "/?token=abc")
    assert cli._retry_after("-5") == 0.0 and cli._retry_after("abc") == 1.0 and cli._retry_after("1e9") == 30.0


def test_analyze_url_splits_a_document_past_the_servers_limits_as_the_server_would(
        spread_model, tosguard_home, monkeypatch, tmp_path, capsys):
    """A server that takes documents of at most 3,000 characters and 12 clauses: analyze --url
    on a longer document (and on a short one of many clauses) splits it here and sends the
    clauses in parts; the report is the one the same model gives in process."""
    from tosguard.components.deploy import start_local_server, stop_local_server

    monkeypatch.setenv("TOSGUARD_SERVE_PRECISION", "fp32")
    monkeypatch.setenv("TOSGUARD_MAX_DOCUMENT_CHARS", "3000")
    monkeypatch.setenv("TOSGUARD_MAX_DOCUMENT_CLAUSES", "12")
    sentences = ["We may terminate your account at any time without notice.",
                 "You agree that any dispute will be resolved by binding arbitration in Delaware.",
                 "We are not liable for any damages arising from your use of the service.",
                 "These terms are governed by the laws of the State of California.",
                 "You can contact us at any time by e-mail."]
    long_doc = tmp_path / "long.txt"
    long_doc.write_text("\n\n".join(f"{i}. {sentences[i % 5]}" for i in range(80)))  # ~6,000 characters
    many = tmp_path / "many.txt"
    many.write_text(" ".join(sentences * 4))  # 20 clauses in 1,300 characters
    short = tmp_path / "short.txt"
    short.write_text(" ".join(sentences))
    state = start_local_server(str(spread_model), port=free_port())
    try:
        for doc, split_here in ((long_doc, True), (many, True), (short, False)):
            reports = []
            for where in (["--url", state["url"]], ["--model", str(spread_model)]):
                out = tmp_path / f"{doc.stem}-{where[0][2:]}.json"
                assert main(["analyze", str(doc), *where, "--no-explain", "--json", str(out)]) == 0
                reports.append(json.loads(out.read_text()))
            err = capsys.readouterr().err
            assert ("refused the whole document (the document " in err and "splitting it here" in err) == split_here
            remote, local = reports
            assert remote["sentences"] == local["sentences"] and remote["sentences"] > 0
            assert [(f["start"], f["end"], f["categories"]) for f in remote["flagged"]] == \
                   [(f["start"], f["end"], f["categories"]) for f in local["flagged"]]
        assert json.loads((tmp_path / "long-url.json").read_text())["sentences"] > 80
    finally:
        stop_local_server()


def test_analyze_url_falls_back_on_a_proxys_413_but_not_on_other_refusals(capsys):
    """A proxy's 413 (HTML, no limit named) sends the document as clauses, whose flagged
    offsets point into the document; a 400 for another reason is reported, not worked around."""
    from tosguard.pipelines import cli

    refusal = {"status": 413, "body": b"<html><h1>413 Request Entity Too Large</h1></html>"}

    def answer(path, headers, body):
        data = json.loads(body)
        if "document" in data:
            return refusal["status"], refusal["body"], {}
        predictions = [{"unfair": "terminate" in c, "categories": ["Unilateral termination"] if "terminate" in c else [],
                        "scores": {"Unilateral termination": 0.9 if "terminate" in c else 0.1}} for c in data["instances"]]
        return 200, json.dumps({"predictions": predictions}).encode(), {}

    document = "Welcome to the service. We may terminate your account at any time. Thanks for reading."
    with _stub(answer) as url:
        report = cli._RemoteScorer(url).analyze(document)
        assert "HTTP 413: the body was too large" in capsys.readouterr().err
        assert report["sentences"] == 3 and [document[f["start"]:f["end"]] for f in report["flagged"]] == \
               ["We may terminate your account at any time."]
        refusal.update(status=400, body=b'{"error": "\\"document\\" must be a non-empty string"}')
        with pytest.raises(ValueError, match="HTTP 400.*non-empty string"):
            cli._RemoteScorer(url).analyze(document)


# Bucket counts of the default model's scores on the 1,607 test clauses (seed 42, the main
# job of 2026-11-29, its reference.json): nearly all mass in the first bucket, a thin tail.
_REAL_REFERENCE = {
    "Limitation of liability": [1533, 16, 9, 8, 8, 3, 3, 2, 0, 7, 6, 12],
    "Unilateral termination": [1546, 4, 5, 7, 4, 4, 6, 1, 4, 1, 7, 18],
    "Unilateral change": [1540, 18, 15, 3, 4, 0, 3, 5, 4, 5, 2, 8],
    "Content removal": [1572, 9, 4, 2, 0, 2, 3, 1, 1, 3, 0, 10],
    "Contract by using": [1584, 4, 1, 1, 0, 2, 0, 1, 1, 2, 4, 7],
    "Choice of law": [1585, 5, 3, 1, 1, 0, 0, 1, 0, 3, 1, 7],
    "Jurisdiction": [1586, 1, 3, 0, 0, 2, 1, 0, 3, 2, 2, 7],
    "Arbitration": [1588, 6, 5, 0, 1, 0, 0, 3, 0, 2, 1, 1],
}


def _windows(rng, n: int, shift: float = 0.0) -> dict:
    """A live window of n clauses drawn from the real reference's shares; with shift, that
    share of Unilateral termination's clauses moved from the first bucket to the top one."""
    categories = {}
    for name, counts in _REAL_REFERENCE.items():
        share = np.asarray(counts, dtype=np.float64) / sum(counts)
        if shift and name == "Unilateral termination":
            share[0] -= shift
            share[-1] += shift
        categories[name] = {"bounds": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0],
                            "counts": rng.multinomial(n, share).tolist(), "positives": 0.0}
    return {"clauses": n, "categories": categories}


def test_the_drift_rule_on_windows_drawn_from_a_real_reference():
    """Windows of 500 clauses (the default min_clauses) drawn from the same distribution as
    the reference almost never say retrain; a window where 15% more of one category's
    clauses score at the top nearly always does (measured: 5% reads PSI about 0.11, shown
    as a moderate shift but no retrain; 10% says retrain in about two windows of three). PSI depends on the shares alone, so the same
    shares read the same in a window of 500 and of 500,000 (smoothing counts instead of
    shares made a larger window read as more drifted)."""
    rng = np.random.default_rng(0)
    reference = {"buckets": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0],
                 "categories": {name: {"counts": counts, "positive_rate": 0.0}
                                for name, counts in _REAL_REFERENCE.items()}}
    calm = [monitor.compare(reference, _windows(rng, 500))["retrain"] for _ in range(200)]
    drifted = [monitor.compare(reference, _windows(rng, 500, shift=0.15))["retrain"] for _ in range(200)]
    assert sum(calm) <= 10 and sum(drifted) >= 190, (sum(calm), sum(drifted))
    moderate = monitor.compare(reference, _windows(rng, 500, shift=0.05))
    assert not moderate["retrain"] and "moderate shift" in monitor.table({**moderate, "url": "u"})
    live = np.array([480, 10, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0])
    ref = np.array(_REAL_REFERENCE["Arbitration"])
    assert monitor.psi(ref, live * 1000) == pytest.approx(monitor.psi(ref, live), rel=1e-9)
    assert monitor.psi(ref, np.zeros(12)) == monitor.psi(ref, np.ones(12))  # no traffic: uniform, no crash


def _metrics(instance: str, model: str, profile: str, clauses: float, low: float) -> dict:
    text = "\n".join([
        "# TYPE tosguard_server_info gauge",
        f'tosguard_server_info{{instance="{instance}",model="{model}",profile="{profile}"}} 1.0',
        "# TYPE tosguard_category_score histogram",
        f'tosguard_category_score_bucket{{category="A",le="0.5"}} {low}',
        f'tosguard_category_score_bucket{{category="A",le="1.0"}} {clauses}',
        f'tosguard_category_score_bucket{{category="A",le="+Inf"}} {clauses}',
        "# TYPE tosguard_clauses_scored counter",
        f"tosguard_clauses_scored_total {clauses}",
        "# TYPE tosguard_category_positive counter",
        f'tosguard_category_positive_total{{category="A"}} {clauses - low}',
    ]) + "\n"
    return monitor.read_live(text)


def test_reads_name_the_server_process_its_model_and_profile():
    """Two reads from different processes are refused even when every counter grew (a busier
    replica behind a Service); a server running another model is refused, not compared; the
    positive rate compared is the one of the profile the server runs."""
    first = _metrics("aaa", "m1", "default", 100.0, 90.0)
    assert first["server"] == {"instance": "aaa", "model": "m1", "profile": "default"}
    with pytest.raises(ValueError, match="different server processes"):
        monitor.subtract(_metrics("bbb", "m1", "default", 900.0, 800.0), first)
    window = monitor.subtract(_metrics("aaa", "m1", "default", 700.0, 630.0), first)
    assert window["clauses"] == 600 and window["categories"]["A"]["counts"] == [540.0, 60.0]

    reference = {"model": "m1", "buckets": [0.5, 1.0], "categories": {"A": {
        "counts": [90, 10], "positive_rate": 0.1, "positive_rates": {"default": 0.1, "triage": 0.3}}}}
    assert monitor.compare(reference, window, min_clauses=10)["categories"][0]["reference_positive_rate"] == 0.1
    triage = monitor.compare(reference, monitor.subtract(_metrics("aaa", "m1", "triage", 700.0, 630.0), first),
                             min_clauses=10)
    assert triage["profile"] == "triage" and triage["categories"][0]["reference_positive_rate"] == 0.3
    with pytest.raises(ValueError, match="runs model m2, not the reference's model m1"):
        monitor.compare(reference, _metrics("aaa", "m2", "default", 100.0, 90.0))
    # A reference evaluated before per-profile rates were kept (the store keeps a version's
    # first): compared, with the default profile's rate and a note saying so.
    old = {**reference, "categories": {"A": {"counts": [90, 10], "positive_rate": 0.1}}}
    noted = monitor.compare(old, _metrics("aaa", "m1", "triage", 100.0, 90.0), min_clauses=10)
    assert noted["categories"][0]["reference_positive_rate"] == 0.1
    assert noted["notes"] and "no positive rates for the 'triage' profile" in monitor.table(noted)
    del old["model"]  # a reference from before fingerprints: compared as before
    assert monitor.compare(old, window, min_clauses=10)["categories"][0]["reference_positive_rate"] == 0.1
    # One read from a server that names itself, one from one that does not (a rolling upgrade).
    anonymous = {**first, "server": {}}
    with pytest.raises(ValueError, match="different server processes"):
        monitor.subtract(_metrics("aaa", "m1", "default", 700.0, 630.0), anonymous)
    assert monitor.subtract({**window, "server": {}}, anonymous)["clauses"] == 600 - 100
    unnamed = monitor.compare(reference, {**window, "server": {}}, min_clauses=10)
    assert unnamed["server_model"] is None and unnamed["reference_model"] == "m1"
    assert "does not name its profile" in monitor.table(unnamed)


def test_the_server_publishes_the_fingerprint_its_reference_names(server, spread_model, tmp_path, monkeypatch):
    """The real server's tosguard_server_info names the model folder's fingerprint, which the
    evaluate step wrote into reference.json; a reference of a changed copy of the model (other
    thresholds) is refused against this server; a window across a restart is refused even
    though the restarted server scored more clauses than the first had."""
    from tosguard.components.deploy import start_local_server, stop_local_server

    live = monitor.read_live(monitor.fetch_metrics(server["url"]))
    reference = json.loads((spread_model / monitor.REFERENCE_FILE).read_text())
    assert live["server"]["model"] == reference["model"] == monitor.model_fingerprint(spread_model)
    card = json.loads((spread_model / "tosguard.json").read_text())
    assert "triage" in card["profiles"]  # evaluate kept each profile's rates; triage only lowers thresholds
    for entry in reference["categories"].values():
        assert set(entry["positive_rates"]) == {"default", "triage"}
        assert entry["positive_rates"]["triage"] >= entry["positive_rates"]["default"] == entry["positive_rate"]
    assert live["server"]["profile"] == "default" and len(live["server"]["instance"]) == 12
    meta = requests.get(f"{server['url']}/v2/models/tosguard", timeout=10).json()
    assert meta["parameters"]["fingerprint"] == reference["model"]

    other = tmp_path / "other"
    shutil.copytree(spread_model, other)
    card = json.loads((other / "tosguard.json").read_text())
    card["thresholds"] = [0.4] * len(card["thresholds"])
    (other / "tosguard.json").write_text(json.dumps(card))
    changed = {**reference, "model": monitor.model_fingerprint(other)}
    assert changed["model"] != reference["model"]
    (other / monitor.REFERENCE_FILE).write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="not the reference's model"):
        monitor.check(server["url"], str(other), min_clauses=1)

    _send(server["url"], _word_salad(20, seed=3))

    def restart_with_more_traffic(seconds):
        stop_local_server()
        state = start_local_server(str(spread_model), port=int(server["url"].rsplit(":", 1)[1]))
        _send(state["url"], _word_salad(60, seed=4))

    monkeypatch.setattr(monitor, "_wait", restart_with_more_traffic)
    with pytest.raises(ValueError, match="different server processes"):
        monitor.check(server["url"], str(spread_model), window=5.0, min_clauses=1)
