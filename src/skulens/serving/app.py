"""The HTTP face of the search service, as a FastAPI (ASGI) app.

BentoML mounts it (``serving/service.py``, started by ``skulens serve``); tests drive it directly
through its ASGI interface. Every problem with a request is a 4xx whose body names it
(``{"error": ...}``); a stage that fails inside the pipeline is a flagged fallback, not a 5xx.

Endpoints: ``POST /search`` (JSON, or multipart with a photo file), ``POST /recommend/similar``,
``POST /recommend/session``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, the web page at
``GET /``, product photos at ``GET /products/{id}/image``, and the admin endpoints (``GET
/admin/status``, ``POST /admin/reload``, ``POST /admin/traffic``), which need the API key from
the environment variable ``serving.admin_key_env`` names, sent as ``X-API-Key`` or a bearer token.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from skulens.serving.images import MAX_IMAGE_BYTES, check_image, decode_base64
from skulens.serving.pipeline import RequestError, SearchRequest, bounded_int, parse_filters, reject_unknown
from skulens.serving.state import ReloadError, ServingState

MAX_JSON_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise RequestError(f"request body is {len(body):,} bytes; at most {MAX_JSON_BYTES:,}")
    if not body:
        raise RequestError("empty request body; send a JSON object")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise RequestError("request body must be a JSON object")
    return raw


async def _search_input(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """The search fields and the photo bytes, from a JSON body or a multipart form."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=MAX_IMAGE_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several kinds
            raise RequestError(f"multipart form cannot be read: {exc}") from exc
        raw: dict[str, Any] = {}
        image = None
        for name, value in form.multi_items():
            if name == "image":
                if isinstance(value, str):
                    raise RequestError("image must be a file part")
                image = await value.read(MAX_IMAGE_BYTES + 1)
            elif name in ("k", "page"):
                try:
                    raw[name] = int(value)
                except ValueError as exc:
                    raise RequestError(f"{name} must be an integer, got {value!r}") from exc
            elif name == "filters":
                try:
                    raw[name] = json.loads(value) if value else None
                except json.JSONDecodeError as exc:
                    raise RequestError(f"filters must be a JSON object: {exc}") from exc
            else:
                raw[name] = value
        return raw, (check_image(image) if image is not None else None)
    raw = await _json_body(request)
    encoded = raw.pop("image_base64", None)
    return raw, (check_image(decode_base64(encoded)) if encoded is not None else None)


def create_app(get_state: Callable[[], ServingState | None], admin_key_env: str = "SKULENS_ADMIN_KEY") -> FastAPI:
    """The app over the state ``get_state()`` returns (None while loading: 503 on every endpoint)."""
    app = FastAPI(title="skulens search", summary="Text, photo and hybrid product search", docs_url="/docs")

    def state() -> ServingState:
        current = get_state()
        if current is None:
            raise _NotReady
        return current

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        current = get_state()
        if current is not None:
            current.metrics.requests.labels(endpoint=request.url.path, status="400").inc()
        return _error(400, str(exc))

    @app.exception_handler(ReloadError)
    async def reload_failed(_: Request, exc: ReloadError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(_NotReady)
    async def not_ready(_: Request, __: Exception) -> JSONResponse:
        return _error(503, "loading models and index; not ready yet")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        current = get_state()
        if current is None:
            return _error(503, "loading models and index")
        return JSONResponse({"status": "ready", "variants": {n: v.pipeline.versions
                                                              for n, v in current.variants.items()}})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state().metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        current = state()
        raw, image = await _search_input(request)
        parsed = SearchRequest.parse(raw, current.config, image=image)
        body = await run_in_threadpool(current.search, parsed)
        current.metrics.requests.labels(endpoint="/search", status="200").inc()
        return JSONResponse(body)

    @app.post("/recommend/similar")
    async def similar(request: Request) -> JSONResponse:
        current = state()
        raw = await _json_body(request)
        reject_unknown(raw, {"product_id", "k", "filters", "user_id", "session_id"})
        product_id = raw.get("product_id")
        if not isinstance(product_id, str) or not product_id:
            raise RequestError("product_id must be a non-empty string")
        filters = parse_filters(raw.get("filters"))
        k = bounded_int(raw, "k", 10, current.config.max_k)
        recommender = current.recommender(raw.get("user_id") or raw.get("session_id"))
        body = await run_in_threadpool(recommender.similar, product_id, k, filters)
        return JSONResponse(current.with_photos(body))

    @app.post("/recommend/session")
    async def session(request: Request) -> JSONResponse:
        current = state()
        raw = await _json_body(request)
        reject_unknown(raw, {"product_ids", "k", "category", "user_id", "session_id"})
        ids = raw.get("product_ids", [])
        if not isinstance(ids, list) or len(ids) > 100 or not all(isinstance(p, str) and p for p in ids):
            raise RequestError("product_ids must be a list of at most 100 product ids (oldest first)")
        category = raw.get("category")
        if category is not None and not isinstance(category, str):
            raise RequestError("category must be a string")
        k = bounded_int(raw, "k", 10, current.config.max_k)
        recommender = current.recommender(raw.get("user_id") or raw.get("session_id"))
        body = await run_in_threadpool(recommender.session, ids, k, category)
        if not body["items"]:
            current.metrics.zero_results.labels(endpoint="recommend_session").inc()
        return JSONResponse(current.with_photos(body))

    @app.get("/products/{product_id}/image")
    async def image(product_id: str) -> Response:
        current = state()
        path = current.variants["control"].images.get(product_id)
        if not path or not Path(path).is_file():
            return _error(404, f"no photo for product {product_id!r}")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(files("skulens.serving").joinpath("web/index.html").read_text(encoding="utf-8"))

    # -- admin -------------------------------------------------------------------------------------
    def admin(request: Request) -> ServingState:
        expected = os.environ.get(admin_key_env, "")
        sent = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise _Unauthorised
        return state()

    @app.exception_handler(_Unauthorised)
    async def unauthorised(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse({"error": "admin endpoints need the API key (X-API-Key header); "
                                      f"the service reads it from ${admin_key_env}"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.get("/admin/status")
    async def admin_status(request: Request) -> JSONResponse:
        return JSONResponse(admin(request).status())

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        reject_unknown(raw, {"variant", "index_version", "reranker_version"})
        variant = raw.get("variant", "control")
        index_version, reranker_version = raw.get("index_version"), raw.get("reranker_version")
        if index_version is not None and not isinstance(index_version, str):
            raise RequestError("index_version must be a string")
        if reranker_version is not None and (isinstance(reranker_version, bool)
                                             or not isinstance(reranker_version, int)):
            raise RequestError("reranker_version must be an integer")
        versions = await run_in_threadpool(current.reload, variant, index_version, reranker_version)
        return JSONResponse({"variant": variant, "versions": versions})

    @app.post("/admin/traffic")
    async def admin_traffic(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        return JSONResponse({"traffic": current.set_traffic(raw.get("traffic", raw))})

    return app


class _NotReady(Exception):
    pass


class _Unauthorised(Exception):
    pass
