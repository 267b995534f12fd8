"""The HTTP app through its ASGI interface: every endpoint, every bad input a clear 4xx, admin
behind its key, traffic split, reload failures keeping the old variant, metrics."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skulens.control.routing import VariantSpec
from skulens.serving.app import create_app
from skulens.serving.llm.cascade import Cascade, TierPolicy
from skulens.serving.llm.tiers import RuleTier
from skulens.serving.llm.understanding import Vocabulary
from skulens.serving.loader import Served
from skulens.serving.metrics import ServingMetrics
from skulens.serving.pipeline import SearchPipeline
from skulens.serving.rules import BusinessRules
from skulens.serving.state import ServingState
from tests.unit.test_llm_cascade import Scripted
from tests.unit.test_serving_pipeline import _catalogue, parts  # noqa: F401 - the fixture

KEY = "s3cret-admin-key"


def _png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(parts, settings, monkeypatch, tmp_path):  # noqa: F811 - pytest fixture injection
    monkeypatch.setenv("SKULENS_ADMIN_KEY", KEY)
    products, titles = _catalogue()
    categories = {row["product_id"]: list(row["category_path"]) for row in products.to_pylist()}
    photo = tmp_path / "p0.png"
    photo.write_bytes(_png())
    recovery = Scripted("model", '{"query": "black handbag"}')
    published = {"version": "v1"}  # what the catalogue's CURRENT names

    def loader(settings, catalog, config, *, index_version=None, reranker_version=None, cascade=None,
               on_batch=None, ranker_version=None):
        if index_version == "broken":
            raise FileNotFoundError("no index version 'broken'")
        pipeline = SearchPipeline(**parts, cascade=cascade, config=config,
                                  rules=BusinessRules(hidden=frozenset({"p15"})),
                                  categories={p: c[-1] for p, c in categories.items()},
                                  versions={"index": index_version or published["version"], "embedder": "e/1"})
        return Served(pipeline, parts["store"], titles, categories, {"p0": str(photo)},
                      Vocabulary.from_products(categories.values(), []), photo_root=tmp_path)

    metrics = ServingMetrics.standalone()
    state = ServingState(settings, metrics, loader=loader)
    state.published_index = lambda: published["version"]
    state.cascade = Cascade([(RuleTier(), TierPolicy()), (recovery, TierPolicy())],
                            on_step=metrics.observe_llm_step)
    state.connect()  # the shared routing (a SQLite file under this test's SKULENS_HOME)
    state._install("control", state._build("control"), VariantSpec())
    app = create_app(lambda: state)
    with TestClient(app) as test_client:
        test_client.state_obj = state
        test_client.published = published
        yield test_client


def test_search_answers_with_scores_stages_versions_and_variant(client):
    body = client.post("/search", json={"text": "red shrit", "k": 3, "user_id": "u1"}).json()
    assert body["query"] == "red shirt" and len(body["items"]) == 3
    assert body["variant"] == "control" and body["versions"]["index"] == "v1"
    assert {"normalise", "rewrite", "encode", "retrieve", "rerank", "rules"} <= {s["name"] for s in body["stages"]}
    assert all("fused" in item["scores"] for item in body["items"])
    assert body["rewrites"][0] == {"kind": "spelling", "from": "shrit", "to": "shirt"}


def test_price_limits_become_filters_and_hidden_products_never_show(client):
    body = client.post("/search", json={"text": "black handbag under $20", "k": 10}).json()
    assert {"kind": "filters", "tier": "rules", "added": {"price_max": 20.0}} in body["rewrites"]
    assert body["query"] == "black handbag"
    assert "p15" not in [i["product_id"] for i in body["items"]]  # p15 (the black handbag) is hidden
    assert all(float(i["product_id"][1:]) + 10 <= 20 for i in body["items"])


def test_zero_results_are_recovered_by_the_next_tier(client):
    body = client.post("/search", json={"text": "zzzqx wwwvv", "k": 3}).json()
    assert {"kind": "recovery", "tier": "model", "from": "zzzqx wwwvv", "to": "black handbag"} in body["rewrites"]
    assert body["items"] and body["query"] == "black handbag"
    assert any(step["tier"] == "model" and step["outcome"] == "accepted" for step in body["llm"])


def test_photo_search_by_base64_and_by_multipart_upload(client):
    png = _png()
    by_json = client.post("/search", json={"image_base64": base64.b64encode(png).decode(), "k": 2})
    assert by_json.status_code == 200 and len(by_json.json()["items"]) == 2
    upload = client.post("/search", data={"text": "red", "k": "2", "filters": json.dumps({"category": "shirt"})},
                         files={"image": ("photo.png", png, "image/png")})
    assert upload.status_code == 200
    assert all(item["category"] == ["shirt"] for item in upload.json()["items"])


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")  # 144 Mpixel, a few KB compressed
    return buffer.getvalue()


@pytest.mark.parametrize(("body", "message"), [
    ({"text": ""}, "send a text, a photo or both"),
    ({"text": "x" * 100_000}, "at most 512"),
    ({"image_base64": base64.b64encode(b"definitely not a photo").decode()}, "cannot be read as a photo"),
    ({"image_base64": "%%% not base64"}, "not valid base64"),
    ({"text": "shirt", "filters": {"colour": "red"}}, "unknown filter colour"),
    ({"text": "shirt", "k": -1}, "k must be an integer"),
    ({"text": "shirt", "k": 10_000}, "k must be an integer"),
    ({"text": "shirt", "page": 0}, "page must be an integer"),
    ({"text": "shirt", "colour": "red"}, "unknown field"),
])
def test_bad_search_input_gets_a_named_400(client, body, message):
    response = client.post("/search", json=body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_decompression_bomb_and_broken_bodies_get_400(client):
    bomb = client.post("/search", files={"image": ("bomb.png", _bomb(), "image/png")})
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["error"]
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/search", content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 400
    form = client.post("/search", data={"text": "red", "k": "many"})
    assert form.status_code == 400 and "k must be an integer" in form.json()["error"]


def test_similar_and_session_recommendations(client):
    similar = client.post("/recommend/similar", json={"product_id": "p0", "k": 3}).json()
    assert len(similar["items"]) == 3 and "p0" not in [i["product_id"] for i in similar["items"]]
    session = client.post("/recommend/session", json={"product_ids": ["p0", "p1"], "k": 4}).json()
    assert session["source"] == "session_vector" and not {"p0", "p1"} & {i["product_id"] for i in session["items"]}
    cold = client.post("/recommend/session", json={"product_ids": [], "category": "dress", "k": 3}).json()
    assert cold["source"].startswith("typical_in_category") and len(cold["items"]) == 3
    assert client.post("/recommend/similar", json={"product_id": "nope"}).status_code == 400
    assert client.post("/recommend/session", json={"product_ids": []}).status_code == 400
    assert client.post("/recommend/session", json={"product_ids": "p0"}).status_code == 400


def test_admin_needs_the_key(client):
    assert client.get("/admin/status").status_code == 401
    assert client.post("/admin/traffic", json={"control": 1.0}, headers={"X-API-Key": "wrong"}).status_code == 401
    status = client.get("/admin/status", headers={"X-API-Key": KEY})
    assert status.status_code == 200 and status.json()["variants"]["control"]["index"] == "v1"


def test_reload_traffic_split_and_a_failed_reload_keeps_serving(client):
    auth = {"Authorization": f"Bearer {KEY}"}
    loaded = client.post("/admin/reload", json={"variant": "b", "index_version": "v2"}, headers=auth)
    assert loaded.status_code == 200 and loaded.json()["versions"]["index"] == "v2"
    assert client.post("/admin/traffic", json={"control": 0.5, "b": 0.6}, headers=auth).status_code == 400
    assert client.post("/admin/traffic", json={"control": 0.5, "zz": 0.5}, headers=auth).status_code == 400
    assert client.post("/admin/traffic", json={"control": 0.5, "b": 0.5}, headers=auth).status_code == 200
    seen = {client.post("/search", json={"text": "red shirt", "user_id": f"user{i}"}).json()["variant"]
            for i in range(40)}
    assert seen == {"control", "b"}
    same = {client.post("/search", json={"text": "red shirt", "user_id": "user7"}).json()["variant"] for _ in range(5)}
    assert len(same) == 1  # a user keeps their arm
    failed = client.post("/admin/reload", json={"variant": "control", "index_version": "broken"}, headers=auth)
    assert failed.status_code == 409 and "still serving" in failed.json()["error"]
    assert client.post("/search", json={"text": "red shirt"}).json()["versions"]["index"] == "v1"


def test_health_readiness_metrics_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/search", json={"text": "zzzqx wwwvv"})
    client.post("/search", json={"text": "red shirt"})
    client.post("/search", json={"text": "red shirt"})
    metrics = client.get("/metrics").text
    for name in ("skulens_stage_seconds_bucket", "skulens_llm_calls_total", "skulens_cache_total",
                 'result="hit"', "skulens_llm_tokens_total"):
        assert name in metrics
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"form\">" in page.text
    assert client.get("/products/p0/image").headers["content-type"] == "image/png"
    assert client.get("/products/p3/image").status_code == 404


def test_not_ready_answers_503(parts):  # noqa: F811
    with TestClient(create_app(lambda: None)) as loading:
        assert loading.get("/readyz").status_code == 503
        assert loading.post("/search", json={"text": "x"}).status_code == 503
        assert loading.get("/healthz").status_code == 200


def test_failing_stages_mid_traffic_are_fallbacks_not_errors(client):
    pipeline = client.state_obj.variants["control"].pipeline

    def broken(*_):
        raise RuntimeError("model crashed")
    pipeline.reranker = broken
    pipeline.encoder = type("Broken", (), {"encode_texts": broken, "encode_images": broken})()
    pipeline._vectors.clear()
    response = client.post("/search", json={"text": "red shirt", "k": 3})
    assert response.status_code == 200
    assert set(response.json()["fallbacks"]) == {"lexical_only", "retrieval_order"}
    assert np.all([item["scores"].get("bm25") for item in response.json()["items"]])
    assert 'skulens_fallbacks_total{fallback="lexical_only"}' in client.get("/metrics").text


def test_a_failing_encoder_on_a_photo_alone_is_a_flagged_empty_page(client):
    pipeline = client.state_obj.variants["control"].pipeline

    def broken(*_):
        raise RuntimeError("image tower crashed")
    pipeline.encoder = type("Broken", (), {"encode_texts": broken, "encode_images": broken})()
    response = client.post("/search", json={"image_base64": base64.b64encode(_png()).decode()})
    assert response.status_code == 200
    assert response.json()["items"] == [] and response.json()["fallbacks"] == ["photo_search_unavailable"]
    assert 'skulens_zero_results_total{endpoint="search"}' in client.get("/metrics").text


def test_a_failing_llm_provider_mid_traffic_is_skipped_and_flagged(client):
    state = client.state_obj
    down = Scripted("hosted", RuntimeError("provider down"))
    state.cascade.tiers = [state.cascade.tiers[0], (down, TierPolicy())]
    state.cascade.breakers["hosted"] = type(state.cascade.breakers["model"])(failures=3)
    response = client.post("/search", json={"text": "qqqzx vvvwy", "k": 3})
    assert response.status_code == 200
    assert set(response.json()["fallbacks"]) >= {"llm_provider_skipped", "recovery_failed"}
    assert 'skulens_llm_calls_total{outcome="error",tier="hosted"}' in client.get("/metrics").text


def test_a_late_dense_side_gives_the_lexical_page_and_no_zero_result_recovery(client):
    pipeline = client.state_obj.variants["control"].pipeline
    real = pipeline.store

    class Slow:
        vectors = real.vectors

        def search(self, *args, **kwargs):
            import time

            time.sleep(0.3)
            return real.search(*args, **kwargs)
    pipeline.store = Slow()
    pipeline.config = type(pipeline.config)(stage_timeout_ms={"retrieve": 50.0}, total_budget_ms=1000)
    model = client.state_obj.cascade.tiers[1][0]
    before = model.calls
    body = client.post("/search", json={"text": "red shirt", "k": 3}).json()
    assert body["fallbacks"] == ["lexical_only"] and len(body["items"]) == 3
    assert all("bm25" in item["scores"] and "dense" not in item["scores"] for item in body["items"])
    nothing = client.post("/search", json={"text": "zzzqx wwwvv", "k": 3}).json()
    assert "lexical_only" in nothing["fallbacks"] and model.calls == before  # no model calls on a late search
