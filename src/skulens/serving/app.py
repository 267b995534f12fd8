"""The HTTP face of the search service, as a FastAPI (ASGI) app.

BentoML mounts it (``serving/service.py``, started by ``skulens serve``); tests drive it directly
through its ASGI interface. Every problem with a request is a 4xx whose body names it
(``{"error": ...}``); a stage that fails inside the pipeline is a flagged fallback, not a 5xx.

Endpoints: ``POST /search`` (JSON, or multipart with a photo file), ``POST /recommend/similar``,
``POST /recommend/session`` (each answer carries a ``search_id`` and is logged as a search record),
``POST /events`` (clicks, carts and purchases of shown results), ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, the web page at ``GET /``, product photos at ``GET /products/{id}/image``, and
the admin endpoints (``GET /admin/status``, ``POST /admin/reload``, ``POST /admin/traffic``,
``POST /admin/experiments``, ``POST /admin/experiments/stop``; each change is written to the
shared routing that every worker follows), which
need the API key from the environment variable ``serving.admin_key_env`` names, sent as
``X-API-Key`` or a bearer token.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartParser

from skulens.serving import schemas
from skulens.serving.admission import Admission, AdmissionConfig, Overloaded
from skulens.serving.images import MAX_IMAGE_BYTES, check_image, decode_base64
from skulens.serving.pipeline import RequestError, SearchRequest, bounded_int, parse_filters, reject_unknown
from skulens.serving.state import ReloadError, ServingState

_log = logging.getLogger(__name__)

MAX_JSON_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024
MAX_FORM_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # the photo part plus the small fields
MAX_FIELD_BYTES = 16 * 1024  # each non-file multipart part
MAX_JSON_DEPTH = 32

# The page loads its script and style from this service only; no inline script can run, so text
# that reaches the page (a product title, a query, an error) can never become code.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
WEB_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _declared_length(request: Request, limit: int) -> None:
    """A 413 before reading anything when the declared Content-Length is over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise RequestError(f"Content-Length {declared[:20]!r} is not a number of bytes")
    if int(declared) > limit:
        raise RequestError(f"request body is {int(declared):,} bytes; at most {limit:,}", status=413)


async def _limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, stopping with a 413 as soon as more than ``limit`` bytes have arrived
    (a client may send no Content-Length, or a false one)."""
    _declared_length(request, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body is over {limit:,} bytes", status=413)
        yield chunk


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _json_body(request: Request) -> dict[str, Any]:
    body = b"".join([chunk async for chunk in _limited_stream(request, MAX_JSON_BYTES)])
    if not body:
        raise RequestError("empty request body; send a JSON object")
    try:
        raw = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, NaN/Infinity, absurd nesting
        raise RequestError(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise RequestError("request body must be a JSON object")
    if _depth(raw) > MAX_JSON_DEPTH:
        raise RequestError(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return raw


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)


async def _form(request: Request) -> FormData:
    """The multipart (or URL-encoded) form, read from a size-limited stream: the photo part can be
    no larger than the body limit and every other part is capped at ``MAX_FIELD_BYTES``."""
    stream = _limited_stream(request, MAX_FORM_BYTES)
    kind = request.headers.get("content-type", "")
    try:
        if kind.startswith("multipart/form-data"):
            parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16,
                                     max_part_size=MAX_FIELD_BYTES)
        else:
            parser = FormParser(request.headers, stream)
        return await parser.parse()
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several kinds
        raise RequestError(f"multipart form cannot be read: {str(exc)[:200]}") from exc


async def _search_input(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """The search fields and the photo bytes, from a JSON body or a multipart form."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await _form(request)
        try:
            return await _form_fields(form)
        finally:
            await form.close()
    raw = await _json_body(request)
    encoded = raw.pop("image_base64", None)
    return raw, (check_image(decode_base64(encoded)) if encoded is not None else None)


async def _form_fields(form: FormData) -> tuple[dict[str, Any], bytes | None]:
    raw: dict[str, Any] = {}
    image = None
    for name, value in form.multi_items():
        if name in raw or (name == "image" and image is not None):
            raise RequestError(f"form field {name} is sent more than once")
        if name == "image":
            if isinstance(value, str):
                raise RequestError("image must be a file part")
            image = await value.read(MAX_IMAGE_BYTES + 1)
            if not image:
                raise RequestError("image is empty")
            continue
        if not isinstance(value, str):
            raise RequestError(f"form field {name} must be a plain field, not a file part")
        if name in ("k", "page"):
            if not re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
                raise RequestError(f"{name} must be an integer, got {value[:20]!r}")
            raw[name] = int(value)
        elif name == "filters":
            try:
                raw[name] = json.loads(value, parse_constant=_no_constants) if value else None
            except (ValueError, RecursionError) as exc:
                raise RequestError(f"filters must be a JSON object: {str(exc)[:200]}") from exc
        else:
            raw[name] = value
    return raw, (check_image(image) if image is not None else None)


def create_app(get_state: Callable[[], ServingState | None], admin_key_env: str = "SKULENS_ADMIN_KEY",
               admission: AdmissionConfig | None = None) -> FastAPI:
    """The app over the state ``get_state()`` returns (None while loading: 503 on every endpoint).

    Searches and recommendations pass admission control (``admission``): past what a worker may run
    and queue, a 503 with ``Retry-After`` (see :mod:`skulens.serving.admission`)."""
    app = FastAPI(title="skulens search", summary="Text, photo and hybrid product search", docs_url="/docs")
    gate = Admission(admission)
    app.state.admission = gate

    async def admitted(current: ServingState, endpoint: str, run: Callable[..., Any], *args: Any) -> Any:
        """``run(*args)`` in the thread pool once admitted; Overloaded (503) when refused."""
        try:
            waited, number = await gate.enter()
        except Overloaded:
            current.metrics.admission.labels(endpoint=endpoint, outcome="refused").inc()
            raise
        current.metrics.admission.labels(endpoint=endpoint, outcome="waited" if waited else "admitted").inc()
        if waited:
            current.metrics.admission_wait.observe(waited)
        outcome = "ok"
        try:
            body = await run_in_threadpool(run, *args)
            outcome = _outcome(body, current.config)
            return body
        finally:
            gate.leave(number, outcome)
            current.metrics.admission_limit.set(gate.limit)

    def state() -> ServingState:
        current = get_state()
        if current is None:
            raise _NotReady
        return current

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        current = get_state()
        if current is not None:
            current.metrics.requests.labels(endpoint=request.url.path, status=str(exc.status)).inc()
        return _error(exc.status, str(exc))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        current = get_state()
        if current is not None:
            current.metrics.requests.labels(endpoint=request.url.path, status="503").inc()
        return _error(503, f"{exc.reason}; retry after {exc.retry_after_s} s",
                      {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, never a request body's fault (the fuzzer guards that): counted as a 5xx so the
        # availability SLO sees it, answered as JSON, logged with its traceback.
        current = get_state()
        if current is not None:
            current.metrics.requests.labels(endpoint=request.url.path, status="500").inc()
        _log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, "internal error; the service log has the details")

    @app.exception_handler(ReloadError)
    async def reload_failed(_: Request, exc: ReloadError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(_NotReady)
    async def not_ready(_: Request, __: Exception) -> JSONResponse:
        return _error(503, "loading models and index; not ready yet", {"Retry-After": "5"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=schemas.errors(503))
    async def readyz() -> JSONResponse:
        current = get_state()
        if current is None:
            return _error(503, "loading models and index", {"Retry-After": "5"})
        return JSONResponse({"status": "ready", "variants": {n: v.pipeline.versions
                                                              for n, v in current.variants.items()}})

    @app.get("/metrics", response_class=PlainTextResponse, responses=schemas.errors(503))
    async def metrics() -> Response:
        return Response(state().metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.post("/search", response_model=schemas.SearchResponse, responses=schemas.errors(400, 413, 503),
              openapi_extra=schemas.request_body(schemas.SearchBody, schemas.SearchForm))
    async def search(request: Request) -> JSONResponse:
        started = time.perf_counter()
        current = state()
        raw, image = await _search_input(request)
        parsed = SearchRequest.parse(raw, current.config, image=image)
        body = await admitted(current, "/search", current.search, parsed)
        current.events.record_search("/search", body, query_raw=parsed.text, user_id=parsed.user_id,
                                     session_id=parsed.session_id, latency_ms=_ms(started))
        current.metrics.requests.labels(endpoint="/search", status="200").inc()
        # Answered searches: the series of the p95 latency SLO (deploy/prometheus/slo-rules.yml).
        current.metrics.request_seconds.labels(endpoint="/search").observe(time.perf_counter() - started)
        return JSONResponse(body)

    @app.post("/events", response_model=schemas.EventsResponse, responses=schemas.errors(400, 413, 503),
              openapi_extra=schemas.request_body(schemas.EventsBody))
    async def events(request: Request) -> JSONResponse:
        current = state()
        raw = await _json_body(request)
        return JSONResponse(current.events.accept(raw))

    @app.post("/recommend/similar", response_model=schemas.RecommendResponse,
              responses=schemas.errors(400, 404, 413, 503), openapi_extra=schemas.request_body(schemas.SimilarBody))
    async def similar(request: Request) -> JSONResponse:
        started = time.perf_counter()
        current = state()
        raw = await _json_body(request)
        reject_unknown(raw, {"product_id", "k", "filters", "user_id", "session_id"})
        product_id = raw.get("product_id")
        if not isinstance(product_id, str) or not product_id:
            raise RequestError("product_id must be a non-empty string")
        filters = parse_filters(raw.get("filters"))
        k = bounded_int(raw, "k", 10, current.config.max_k)
        recommender = current.recommender(_key(raw))
        body = await admitted(current, "/recommend/similar", recommender.similar, product_id, k, filters)
        current.events.record_search("/recommend/similar", body, query_raw=None, user_id=raw.get("user_id"),
                                     session_id=raw.get("session_id"), latency_ms=_ms(started))
        return JSONResponse(current.with_photos(body))

    @app.post("/recommend/session", response_model=schemas.RecommendResponse,
              responses=schemas.errors(400, 413, 503), openapi_extra=schemas.request_body(schemas.SessionBody))
    async def session(request: Request) -> JSONResponse:
        started = time.perf_counter()
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
        recommender = current.recommender(_key(raw))
        body = await admitted(current, "/recommend/session", recommender.session, ids, k, category)
        if not body["items"]:
            current.metrics.zero_results.labels(endpoint="recommend_session").inc()
        current.events.record_search("/recommend/session", body, query_raw=None, user_id=raw.get("user_id"),
                                     session_id=raw.get("session_id"), latency_ms=_ms(started))
        return JSONResponse(current.with_photos(body))

    @app.get("/products/{product_id}/image", response_class=FileResponse, responses=schemas.errors(404, 503))
    async def image(product_id: str) -> Response:
        current = state()
        path = current.variants["control"].photo(product_id)  # None outside the photo folder
        if path is None:
            return _error(404, f"no photo for product {product_id[:128]!r}")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400",
                                           "X-Content-Type-Options": "nosniff"})

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_web("index.html"), headers=PAGE_HEADERS)

    @app.get("/web/{name}", response_class=PlainTextResponse, responses=schemas.errors(404))
    async def asset(name: str) -> Response:
        if name not in WEB_ASSETS:
            return _error(404, f"no asset {name[:64]!r}")
        return Response(_web(name), media_type=WEB_ASSETS[name], headers=PAGE_HEADERS)

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

    admin_errors = schemas.errors(400, 401, 413, 503)

    @app.get("/admin/status", response_model=schemas.StatusResponse, responses=schemas.errors(401, 503))
    async def admin_status(request: Request) -> JSONResponse:
        return JSONResponse(admin(request).status())

    @app.post("/admin/reload", response_model=schemas.ReloadResponse,
              responses={**admin_errors, **schemas.errors(409)}, openapi_extra=schemas.request_body(schemas.ReloadBody))
    async def admin_reload(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        reject_unknown(raw, {"variant", "index_version", "reranker_version", "ranker_version"})
        variant = raw.get("variant", "control")
        if not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", variant):
            raise RequestError(f"variant must be 1-64 letters, digits, '-' or '_', got {str(variant)[:70]!r}")
        index_version, reranker_version = raw.get("index_version"), raw.get("reranker_version")
        if index_version is not None and (not isinstance(index_version, str)
                                          or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", index_version)):
            raise RequestError("index_version must be a version name (letters, digits, '.', '_', ':', '-')")
        ranker_version = raw.get("ranker_version")
        for name, number in (("reranker_version", reranker_version), ("ranker_version", ranker_version)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
                raise RequestError(f"{name} must be a positive integer")
        versions = await run_in_threadpool(current.reload, variant, index_version, reranker_version, ranker_version)
        return JSONResponse({"variant": variant, "versions": versions})

    @app.post("/admin/traffic", response_model=schemas.TrafficResponse, responses=admin_errors,
              openapi_extra=schemas.request_body(schemas.TrafficBody))
    async def admin_traffic(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        return JSONResponse({"traffic": current.set_traffic(raw.get("traffic", raw))})

    @app.post("/admin/experiments", response_model=schemas.ExperimentResponse, responses=admin_errors,
              openapi_extra=schemas.request_body(schemas.ExperimentBody))
    async def admin_experiment(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        return JSONResponse(await run_in_threadpool(current.start_experiment, raw))

    @app.post("/admin/experiments/stop", responses={**admin_errors, **schemas.errors(404)},
              openapi_extra=schemas.request_body(schemas.StopExperimentBody))
    async def admin_stop_experiment(request: Request) -> JSONResponse:
        current = admin(request)
        raw = await _json_body(request)
        reject_unknown(raw, {"name"})
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise RequestError("name must be 1-64 letters, digits, '-' or '_'")
        if not await run_in_threadpool(current.stop_experiment, name):
            return _error(404, f"no experiment {name!r}")
        return JSONResponse({"stopped": name})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = schemas.add_request_schemas(get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _outcome(body: Any, config: Any) -> str:
    """The admission limit's signal from a search: ``late`` when a stage ran past its timeout or the
    budget, ``tight`` when one used more than half its timeout, else ``ok``."""
    stages = body.get("stages", ()) if isinstance(body, dict) else ()
    if any(s.get("status") == "fallback" and str(s.get("detail") or "").startswith(("late", "no time left"))
           for s in stages):
        return "late"
    timeouts = getattr(config, "stage_timeout_ms", {}) or {}
    if any(s.get("name") in timeouts and float(s.get("ms") or 0) > timeouts[s["name"]] / 2 for s in stages):
        return "tight"
    return "ok"


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _key(raw: dict[str, Any]) -> str | None:
    """The user (or session) id that picks the variant; a non-string is a 400, not a crash."""
    for name in ("user_id", "session_id"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 128):
            raise RequestError(f"{name} must be a string of at most 128 characters")
    return raw.get("user_id") or raw.get("session_id")


def _web(name: str) -> str:
    return files("skulens.serving").joinpath(f"web/{name}").read_text(encoding="utf-8")


class _NotReady(Exception):
    pass


class _Unauthorised(Exception):
    pass
