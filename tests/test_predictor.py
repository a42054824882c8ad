"""The KServe predictor, called directly and through KServe's HTTP app in-process."""
import pytest
from kserve.errors import InvalidInput

from components.labels import CATEGORIES
from components.predictor import UnfairClauseModel, validate_instances


@pytest.fixture(scope="module")
def model(trained_model_dir):
    m = UnfairClauseModel("tosguard", str(trained_model_dir))
    assert m.load() and m.ready
    return m


def test_predict_returns_categories_scores_and_unfair_per_clause(model):
    out = model.predict({"instances": ["we may terminate your account at any time .", "welcome !"]})
    preds = out["predictions"]
    assert len(preds) == 2
    for p in preds:
        assert set(p["scores"]) == set(CATEGORIES)
        assert all(0.0 <= s <= 1.0 for s in p["scores"].values())
        # Multi-label by thresholds: a category is listed exactly when its score passes.
        assert p["categories"] == [c for c in CATEGORIES if p["scores"][c] > 0.5]
        assert p["unfair"] == bool(p["categories"])


def test_scores_do_not_depend_on_batch_company(model):
    alone = model.predict({"instances": ["you agree to binding arbitration ."]})["predictions"][0]
    batched = model.predict({"instances": ["x " * 100, "you agree to binding arbitration .", "ok"]})["predictions"][1]
    for c in CATEGORIES:
        assert alone["scores"][c] == pytest.approx(batched["scores"][c], abs=1e-4)


def test_overlong_clause_is_truncated_and_says_so(model):
    p = model.predict({"instances": ["this clause goes on " * 200]})["predictions"][0]
    assert p["truncated"] is True


@pytest.mark.parametrize(
    "payload, message",
    [
        ({}, 'missing field "instances"'),
        ({"instances": []}, "non-empty list"),
        ({"instances": "a clause"}, "non-empty list"),
        ({"instances": ["ok", 3]}, "instances[1] must be a string"),
        ({"instances": ["  "]}, "instances[0] is empty"),
        ({"instances": ["a"] * 10_000}, "the limit is"),
        (b"raw bytes", "Content-Type: application/json"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_input_is_invalid_input_with_a_clear_message(payload, message):
    with pytest.raises(InvalidInput) as err:
        validate_instances(payload)
    assert message in str(err.value)


def test_http_app_answers_4xx_for_bad_input_and_keeps_serving(model):
    """Through KServe's own FastAPI app (in-process), as a client would see it."""
    from fastapi.testclient import TestClient
    from kserve import ModelRepository
    from kserve.model_server import ModelServer, app

    repo = ModelRepository()
    repo.update(model)
    server = ModelServer(registered_models=repo, enable_grpc=False)
    from kserve.protocol.rest.server import RESTServer

    rest = RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension, 0)
    rest.create_application()
    client = TestClient(app)
    url = "/v1/models/tosguard:predict"
    assert client.post(url, json={"instances": []}).status_code == 400
    assert client.post(url, json={"instances": [1]}).status_code == 400
    assert client.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    ok = client.post(url, json={"instances": ["you waive your right to a class action ."]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    assert client.get("/v1/models/tosguard").json()["ready"] is True
