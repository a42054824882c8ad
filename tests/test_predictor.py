"""The KServe predictor, called directly and through KServe's HTTP app in-process."""
import asyncio
import json
import random
import shutil

import pytest
from fastapi.testclient import TestClient

from tosguard.components.labels import CATEGORIES
from tosguard.components.serving.app import build_app
from tosguard.components.serving.model import UnfairClauseModel
from tosguard.components.serving.split import split_sentences
from tosguard.components.serving.validate import RequestError, validate_v1

V1 = "/v1/models/tosguard:predict"
V2 = "/v2/models/tosguard/infer"


@pytest.fixture(scope="module")
def model(trained_model_dir):
    m = UnfairClauseModel("tosguard", str(trained_model_dir))
    assert m.load() and m.ready
    return m


@pytest.fixture(scope="module")
def client(model):
    return TestClient(build_app(model))


def test_predict_returns_categories_scores_and_unfair_per_clause(model):
    preds = model.classify(["we may terminate your account at any time .", "welcome !"])
    assert len(preds) == 2
    for p in preds:
        assert set(p["scores"]) == set(CATEGORIES)
        assert all(0.0 <= s <= 1.0 for s in p["scores"].values())
        # Multi-label by thresholds: a category is listed exactly when its score passes.
        thresholds = dict(zip(CATEGORIES, model.scorer.thresholds))
        assert p["categories"] == [c for c in CATEGORIES if p["scores"][c] > thresholds[c]]
        assert p["unfair"] == bool(p["categories"])


def test_the_thresholds_shipped_with_the_model_decide(trained_model_dir, tmp_path):
    def with_thresholds(value):
        folder = tmp_path / f"t{value}"
        shutil.copytree(trained_model_dir, folder)
        card = json.loads((folder / "tosguard.json").read_text())
        card["thresholds"] = [value] * len(CATEGORIES)
        (folder / "tosguard.json").write_text(json.dumps(card))
        m = UnfairClauseModel("tosguard", str(folder))
        m.load()
        return m.classify(["any clause at all ."])[0]

    # Below every score (a blended score can underflow to exactly 0.0 in float32, and a
    # category is found only above its threshold): every category at once, multi-label.
    assert with_thresholds(-1.0)["categories"] == list(CATEGORIES)
    assert with_thresholds(0.999999)["unfair"] is False


def test_scores_do_not_depend_on_batch_company(model):
    alone = model.classify(["you agree to binding arbitration ."])[0]
    batched = model.classify(["x " * 100, "you agree to binding arbitration .", "ok"])[1]
    for c in CATEGORIES:
        assert alone["scores"][c] == pytest.approx(batched["scores"][c], abs=2e-3)


def test_overlong_clause_is_truncated_and_says_so(model):
    assert model.classify(["this clause goes on " * 200])[0]["truncated"] is True
    assert model.classify(["short ."])[0]["truncated"] is False


def test_sentence_split_keeps_offsets_and_abbreviations():
    text = "Welcome to Acme Inc. and its services. We may end your account at any time!\n\n1. You agree, e.g. by use; fine."
    spans = split_sentences(text)
    parts = [text[s:e] for s, e in spans]
    assert parts == [
        "Welcome to Acme Inc. and its services.",
        "We may end your account at any time!",
        "1.",  # a lone section number is a clause of its own; a semicolon alone does not cut
        "You agree, e.g. by use; fine.",
    ]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({}, 'missing field "instances"'),
        ({"instances": []}, "non-empty list"),
        ({"instances": "a clause"}, "non-empty list"),
        ({"instances": ["ok", 3]}, "instances[1] must be a string"),
        ({"instances": ["  "]}, "instances[0] is empty"),
        ({"instances": ["a"] * 10_000}, "the limit is"),
        ([1, 2], "JSON object"),
        ({"instances": ["fine", "bad \ud800 surrogate"]}, "instances[1] holds a lone surrogate"),
    ],
)
def test_bad_input_is_invalid_input_with_a_clear_message(payload, message):
    with pytest.raises(RequestError) as err:
        validate_v1(payload)
    assert message in str(err.value)


def test_http_v1_clauses_and_documents(client):
    ok = client.post(V1, json={"instances": ["you waive your right to a class action ."]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    doc = "We may change these terms at any time. Hello there. You agree to arbitration."
    body = client.post(V1, json={"document": doc}).json()["document"]
    assert body["sentences"] == 3
    for flagged in body["flagged"]:
        assert doc[flagged["start"]:flagged["end"]] == flagged["clause"] and flagged["categories"]
    assert client.get("/v1/models/tosguard").json()["ready"] is True


def test_http_v2_infer_and_metadata(client, model):
    meta = client.get("/v2/models/tosguard").json()
    assert meta["inputs"][0]["datatype"] == "BYTES"
    assert {o["name"] for o in meta["outputs"]} == {"scores", "unfair", "categories"}
    clauses = ["we may suspend the service without notice .", "thanks for reading ."]
    resp = client.post(V2, json={"inputs": [{"name": "clauses", "shape": [2], "datatype": "BYTES", "data": clauses}]})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert outputs["scores"]["shape"] == [2, len(CATEGORIES)]
    expected = model.classify(clauses)
    flat = outputs["scores"]["data"]
    for i, e in enumerate(expected):
        got = flat[i * len(CATEGORIES):(i + 1) * len(CATEGORIES)]
        assert got == pytest.approx([e["scores"][c] for c in CATEGORIES], abs=2e-3)
        assert json.loads(outputs["categories"]["data"][i]) == e["categories"]


def test_http_bad_requests_get_4xx_with_a_message(client):
    cases = [
        (V1, {"json": {"instances": []}}, 400),
        (V1, {"json": {"instances": [1]}}, 400),
        (V1, {"json": {"document": ""}}, 400),
        (V1, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        (V1, {"content": b"instances=a", "headers": {"content-type": "text/plain"}}, 415),
        (V1, {"content": b"x" * 3_000_000, "headers": {"content-type": "application/json"}}, 413),
        (V2, {"json": {"inputs": [{"name": "clauses", "shape": [1], "datatype": "INT32", "data": [1]}]}}, 400),
        ("/v1/models/nope:predict", {"json": {"instances": ["a"]}}, 404),
    ]
    for url, kwargs, status in cases:
        resp = client.post(url, **kwargs)
        assert resp.status_code == status, (url, kwargs.get("json"), resp.text)
        assert resp.json().get("error") or resp.json().get("detail")


def test_concurrent_requests_share_scoring_passes(model):
    import httpx

    async def fire():
        transport = httpx.ASGITransport(app=build_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            before = model.batcher.passes
            clauses = [f"we may terminate account number {i} at any time ." for i in range(24)]
            responses = await asyncio.gather(*(http.post(V1, json={"instances": [c]}) for c in clauses))
            return clauses, responses, model.batcher.passes - before

    clauses, responses, passes = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert passes < len(clauses), "concurrent clauses should be scored together"
    for clause, r in zip(clauses, responses):
        alone = model.classify([clause])[0]
        assert r.json()["predictions"][0]["scores"] == pytest.approx(alone["scores"], abs=2e-3)


def _malformed(rng: random.Random):
    """One generated bad request: (url, kwargs for the client)."""
    junk = [None, 0, -1, 1.5, True, "", "   ", [], {}, [[]], [None], [1, 2], {"a": 1}, "x" * 30_000,
            ["ok", None], [""] * 3, ["a"] * 300]
    kind = rng.randrange(12)
    if kind == 0:
        return V1, {"json": {"instances": rng.choice(junk)}}
    if kind == 1:
        return V1, {"json": {rng.choice(["instance", "inputs", "data", "Instances"]): ["clause"]}}
    if kind == 2:
        return V1, {"json": rng.choice(junk)}
    if kind == 3:
        return V1, {"json": {"document": rng.choice(junk)}}
    if kind == 4:
        raw = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
                          b'{"instances": ["\\ud800 lone surrogate"]}'])
        return V1, {"content": raw, "headers": {"content-type": "application/json"}}
    if kind == 5:
        return V1, {"content": b'{"instances": ["a"]', "headers": {"content-type": rng.choice(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", "application/octet-stream"])}}
    if kind == 6:
        return V2, {"json": {"inputs": rng.choice(junk)}}
    if kind == 7:
        inp = {"name": "clauses", "shape": [rng.randrange(-2, 4)], "datatype": rng.choice(["BYTES", "FP32", "INT8", "X"]),
               "data": rng.choice(junk)}
        return V2, {"json": {"inputs": [inp]}}
    if kind == 8:
        return V2, {"content": b"\xff\xfe garbage", "headers": {"content-type": "application/json"}}
    if kind == 9:
        inp = {"name": "clauses", "shape": [2], "datatype": "BYTES", "data": ["ok"]}
        return V2, {"json": {"inputs": [inp, inp]}}
    if kind == 10:
        return V1, {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}}
    return V1, {"json": {"instances": ["ok"], "document": rng.choice(junk)}}


def test_a_thousand_malformed_requests_get_no_5xx_and_the_server_stays_healthy(client):
    rng = random.Random(1234)
    statuses = []
    for _ in range(1000):
        url, kwargs = _malformed(rng)
        statuses.append(client.post(url, **kwargs).status_code)
    assert len(statuses) == 1000
    server_errors = [s for s in statuses if s >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx answers"
    # Some generated requests are valid by chance (e.g. 'ok' with a junk document field is
    # rejected, but a 300-clause list is over the limit): most must be refused with 4xx.
    assert sum(400 <= s < 500 for s in statuses) > 900
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(V1, json={"instances": ["still serving ."]}).status_code == 200


def test_a_bearer_token_guards_all_but_health(model):
    guarded = TestClient(build_app(model, token="s3cret-token"))
    assert guarded.get("/v2/health/ready").status_code == 200  # probes need no token
    missing = guarded.post(V1, json={"instances": ["a clause ."]})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = guarded.post(V1, json={"instances": ["a clause ."]}, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert guarded.get("/metrics").status_code == 401
    ok = guarded.post(V1, json={"instances": ["a clause ."]}, headers={"authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_only_the_contract_is_routed(client):
    for path in ("/docs", "/openapi.json", "/redoc", "/v2/repository/index", "/v1/models/tosguard:explain"):
        assert client.get(path).status_code == 404, path
    for path in ("/v2/repository/models/tosguard/unload", "/v2/repository/models/tosguard/load"):
        assert client.post(path, json={}).status_code == 404, path
    assert client.get(V1).status_code == 405 and client.get(V1).headers["allow"] == "POST"
    assert client.head("/v2/health/ready").status_code == 200 and client.head("/v2/health/ready").content == b""
    assert client.get("/v2/health/live").json()["live"] is True
    assert client.get("/v2/models/tosguard/ready").json()["ready"] is True
    assert client.post(V1, json={"instances": ["a clause ."]}).status_code == 200  # still serving
