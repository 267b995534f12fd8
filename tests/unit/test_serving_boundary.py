"""The service boundary: no request body gets a 5xx (hand-picked hostile bodies, then schemathesis
over every endpoint of /openapi.json), limits before buffering, photos by their bytes, photos
served only from the catalogue's photo folder, reloads that drain, late stages that keep a page."""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from skulens.serving.app import MAX_FORM_BYTES, MAX_JSON_BYTES
from tests.unit.test_serving_app import KEY, _png, client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

ADMIN = {"X-API-Key": KEY}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/search", {"text": "shirt", "filters": 5}, "filters must be an object"),
    ("/search", {"text": "shirt", "filters": "ab"}, "filters must be an object"),
    ("/search", {"text": "shirt", "filters": [1, 2]}, "filters must be an object"),
    ("/search", {"text": "shirt", "filters": {"attributes": {"colour": 5}}}, "attributes must map"),
    ("/search", {"text": 5}, "text must be a string"),
    ("/search", {"text": "shirt", "rerank": "maybe"}, "rerank must be true or false"),
    ("/search", {"text": "shirt", "user_id": {"a": 1}}, "user_id must be a string"),
    ("/recommend/similar", {"product_id": "p0", "filters": 5}, "filters must be an object"),
    ("/recommend/similar", {"product_id": "p0", "user_id": 5}, "user_id must be a string"),
    ("/recommend/session", {"product_ids": ["p0"], "session_id": []}, "session_id must be a string"),
    ("/admin/reload", {"variant": 5}, "variant must be"),
    ("/admin/reload", {"variant": "b", "index_version": ["x"]}, "index_version must be"),
    ("/admin/reload", {"variant": "b", "reranker_version": 0}, "reranker_version must be"),
    ("/admin/traffic", {"traffic": 5}, "traffic must map"),
    ("/admin/traffic", {"traffic": {"control": "all"}}, "must be a non-negative number"),
])
def test_hostile_json_bodies_get_a_named_400(client, path, body, message):  # noqa: F811
    response = client.post(path, json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"text": "shirt", "k": NaN}', "not a JSON number"),
    (b'{"text": "shirt", "price": Infinity}', "not a JSON number"),
    (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
    (b'{"text": "shirt", "filters": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", "nested more than"),
    (b'{"text": "shirt", "k": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_broken_json_gets_a_named_400(client, raw, message):  # noqa: F811
    response = client.post("/search", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.parametrize(("files", "data", "message"), [
    ({"k": ("k.txt", b"3", "text/plain")}, {"text": "red"}, "k must be a plain field"),
    ({"page": ("p.txt", b"1", "text/plain")}, {"text": "red"}, "page must be a plain field"),
    ({"filters": ("f.json", b"{}", "application/json")}, {"text": "red"}, "filters must be a plain field"),
    ({"text": ("t.txt", b"red", "text/plain")}, {}, "text must be a plain field"),
    (None, {"text": "red", "k": "9" * 5000}, "k must be an integer"),
    (None, {"text": "red", "filters": "[1]"}, "filters must be an object"),
    ({"image": ("x.gif", b"GIF89a" + b"\x00" * 64, "image/png")}, {}, "only JPEG, PNG and WebP"),
    ({"image": ("x.png", b"", "image/png")}, {}, "image is empty"),
])
def test_hostile_multipart_parts_get_a_named_400(client, files, data, message):  # noqa: F811
    response = client.post("/search", data=data, files=files)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_a_photo_is_judged_by_its_bytes_not_its_name(client):  # noqa: F811
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(buffer, format="WEBP")
    webp = client.post("/search", files={"image": ("photo.bin", buffer.getvalue(), "application/octet-stream")})
    assert webp.status_code == 200
    gif = io.BytesIO()
    Image.new("RGB", (16, 16)).save(gif, format="GIF")
    named_png = client.post("/search", json={"image_base64": base64.b64encode(gif.getvalue()).decode()})
    assert named_png.status_code == 400 and "only JPEG, PNG and WebP" in named_png.json()["error"]


def test_an_oversized_body_is_refused_by_its_declared_length_before_reading(client):  # noqa: F811
    response = client.post("/search", content=b"{}", headers={"content-type": "application/json",
                                                              "content-length": str(MAX_JSON_BYTES + 1)})
    assert response.status_code == 413 and "at most" in response.json()["error"]
    bad = client.post("/search", content=b"{}", headers={"content-type": "application/json", "content-length": "x"})
    assert bad.status_code == 400


@pytest.mark.parametrize("kind", ["application/json", "multipart/form-data; boundary=xyz"])
def test_an_oversized_stream_is_cut_off_while_it_arrives(client, kind):  # noqa: F811
    """Straight through ASGI (a test client buffers the body first): no Content-Length, 64 chunks of
    1 MB offered; the app must answer 413 after reading little more than its limit."""
    import asyncio

    read, sent = [], []

    head = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n") if kind.startswith("multipart") else b""

    async def receive():
        read.append(1)
        chunk = (head if len(read) == 1 else b"") + b"a" * (1 << 20)
        return {"type": "http.request", "body": chunk, "more_body": len(read) < 64}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", kind.encode())], "client": ("t", 1), "server": ("t", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    limit = MAX_JSON_BYTES if kind == "application/json" else MAX_FORM_BYTES
    assert len(read) <= limit // (1 << 20) + 2  # it stopped at its limit instead of buffering 64 MB


def test_an_oversized_photo_part_is_refused(client):  # noqa: F811
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_FORM_BYTES + 10)
    response = client.post("/search", files={"image": ("big.png", big, "image/png")})
    assert response.status_code == 413


def test_photos_are_served_only_from_the_photo_folder(client, tmp_path):  # noqa: F811
    served = client.state_obj.variants["control"]
    secret = tmp_path.parent / "secret.png"
    secret.write_bytes(_png())
    served.images.update({"p1": str(secret), "p2": str(tmp_path / ".." / "secret.png"), "p3": "/etc/passwd"})
    link = tmp_path / "link.png"
    link.symlink_to(secret)
    served.images["p4"] = str(link)
    assert client.get("/products/p0/image").status_code == 200
    for pid in ("p1", "p2", "p3", "p4"):
        assert client.get(f"/products/{pid}/image").status_code == 404, pid


def test_the_page_sends_a_content_security_policy_and_no_inline_script(client):  # noqa: F811
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and '<script src="/web/app.js">' in page.text
    script = client.get("/web/app.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert client.get("/web/nope.js").status_code == 404


def test_openapi_declares_every_request_body(client):  # noqa: F811
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/recommend/similar", "/recommend/session", "/admin/reload", "/admin/traffic"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        assert "application/json" in body
    assert "multipart/form-data" in spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"SearchBody", "SearchForm", "SearchResponse", "ErrorBody"} <= set(spec["components"]["schemas"])


FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_server_error_and_match_the_schema(client, mode):  # noqa: F811
    """schemathesis over every operation of /openapi.json, bodies that follow the declared schema
    and bodies that break it (bounded, deterministic examples). The admin key is sent so that the
    fuzzer reaches the admin routes' validation, not just the 401. (With the 150 negative examples
    it finds the wave-1 defect of a ``filters`` form field holding a number.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /search", "POST /recommend/similar", "POST /recommend/session", "GET /admin/status",
        "POST /admin/reload", "POST /admin/traffic", "GET /products/{product_id}/image", "GET /readyz"}
    if mode is GenerationMode.NEGATIVE:  # only what takes input can be sent input that breaks its schema
        operations = [op for op in operations if op.method.upper() == "POST"]  # the routes with a body
    calls = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=150 if mode is GenerationMode.NEGATIVE else 60, deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.headers = {**(case.headers or {}), **ADMIN}
            calls.append(case.call_and_validate(checks=FUZZ_CHECKS).status_code)
        fuzz()
    assert len(calls) >= 3 * len(operations) and max(calls) < 500


def test_reloads_under_load_drain_the_old_variant_and_degrade_nothing(client):  # noqa: F811
    # Generous stage timeouts: this test is about draining, and a garbage-collection pause of the
    # test process (after the fuzzer) must not read as a late stage.
    state = client.state_obj
    state.config = replace(state.config, total_budget_ms=5000.0,
                           stage_timeout_ms=dict.fromkeys(state.config.stage_timeout_ms, 2000.0))
    state.variants["control"] = state._build("control")
    results: list[tuple[int, list[str], int]] = []
    stop = threading.Event()

    def shopper(n: int) -> None:
        while not stop.is_set():
            response = client.post("/search", json={"text": "red shirt", "k": 3, "user_id": f"u{n}"})
            body = response.json()
            results.append((response.status_code, body.get("fallbacks", ["?"]), len(body.get("items", []))))

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(10):
            time.sleep(0.05)
            reloaded = client.post("/admin/reload", json={"variant": "control"}, headers=ADMIN)
            assert reloaded.status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(results) > 20
    assert all(status == 200 for status, _, _ in results)
    assert [r for r in results if r[1] or r[2] != 3] == []  # no fallback, no short page
    old = client.state_obj.variants["control"].pipeline
    assert old.inflight == 0


def test_a_slow_encoder_and_a_slow_store_under_concurrent_searches_still_fill_every_page(client):  # noqa: F811
    """Four searches at once, an encoder that takes 10 ms (on time) and a vector store that takes
    200 ms, against 40 ms stage timeouts: every page comes back full, from BM25, flagged
    lexical_only (the retrieval stage, not the encoder, was late)."""
    from concurrent.futures import ThreadPoolExecutor

    pipeline = client.state_obj.variants["control"].pipeline
    encoder, store = pipeline.encoder, pipeline.store

    class SlowEncoder:
        def encode_texts(self, texts):
            time.sleep(0.01)
            return encoder.encode_texts(texts)

        def encode_images(self, images):
            return encoder.encode_images(images)

    class SlowStore:
        vectors = store.vectors

        def search(self, *args, **kwargs):
            time.sleep(0.2)
            return store.search(*args, **kwargs)

    pipeline.encoder, pipeline.store = SlowEncoder(), SlowStore()
    pipeline._vectors.clear()
    queries = [f"{c} {k}" for c in ("red", "blue", "green", "black") for k in ("shirt", "dress", "handbag")]
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda q: client.post("/search", json={"text": q, "k": 3}).json(), queries))
    assert all(len(b["items"]) == 3 for b in bodies), [b["fallbacks"] for b in bodies]
    assert all("lexical_only" in b["fallbacks"] and "retrieval_failed" not in b["fallbacks"] for b in bodies)
    late = [s for b in bodies for s in b["stages"] if s["name"] == "retrieve" and s["status"] == "fallback"]
    assert late and all("dense: late" in s["detail"] for s in late)  # the store, not the encoder, was late
