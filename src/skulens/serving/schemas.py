"""The API's request and response shapes, for ``/openapi.json`` (and so for clients and fuzzers).

The routes validate requests themselves (:mod:`skulens.serving.app`, :class:`SearchRequest`) so
that every problem is a 4xx naming the field and rule; these pydantic models only *describe* the
bodies, and a test keeps the two in step (schemathesis fuzzes the service from this spec and every
response must match the schema declared here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class SearchFilters(_Closed):
    category: str | None = Field(None, description="a category name at any level of the path")
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    attributes: dict[str, str] | None = Field(None, description="exact attribute values, e.g. {\"colour\": \"red\"}")


class SearchBody(_Closed):
    """``POST /search`` as JSON: a text, a photo (base64) or both."""

    text: str | None = Field(None, max_length=512, description="the shopper's query (alias: query)")
    query: str | None = Field(None, max_length=512)
    image_base64: str | None = Field(None, description="a JPEG, PNG or WebP photo, base64-encoded")
    filters: SearchFilters | None = None
    k: int = Field(10, ge=1, le=100)
    page: int = Field(1, ge=1, le=50)
    user_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)
    rerank: bool = True


class SearchForm(_Closed):
    """``POST /search`` as a multipart form: the photo as a file part named ``image``."""

    text: str | None = Field(None, max_length=512)
    image: bytes | None = Field(None, json_schema_extra={"format": "binary"})
    filters: str | None = Field(None, description="the filters object, JSON-encoded")
    k: int = Field(10, ge=1, le=100)
    page: int = Field(1, ge=1, le=50)
    user_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)
    rerank: bool = True


class SimilarBody(_Closed):
    product_id: str = Field(..., min_length=1)
    k: int = Field(10, ge=1, le=100)
    filters: SearchFilters | None = None
    user_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)


class SessionBody(_Closed):
    product_ids: list[str] = Field(default_factory=list, max_length=100, description="oldest first")
    k: int = Field(10, ge=1, le=100)
    category: str | None = Field(None, description="for a session with no known product (cold start)")
    user_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)


class ReloadBody(_Closed):
    variant: str = Field("control", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    index_version: str | None = None
    reranker_version: int | None = None
    ranker_version: int | None = None


class ExperimentBody(_Closed):
    """An A/B experiment every worker runs: arms (one named control) with versions and shares."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arms: dict[str, dict[str, float | int | str | None]] = Field(
        ..., description="arm name -> {share, index_version, reranker_version, ranker_version}; one arm is "
                         "named control; shares add up to 1")
    salt: str | None = Field(None, description="buckets users for this experiment alone (default: its name)")
    start: str | None = Field(None, description="ISO 8601 (default: now)")
    stop: str | None = Field(None, description="ISO 8601 (default: until stopped)")


class StopExperimentBody(_Closed):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")


class ExperimentResponse(_Open):
    name: str
    arms: dict[str, dict[str, Any]]


class TrafficBody(_Closed):
    traffic: dict[str, float] = Field(..., description="shares per loaded variant, adding up to 1")


class ClientEventBody(_Closed):
    """A shopper's action on a shown result (the events contract; see skulens.streaming.records)."""

    event_id: str = Field(..., pattern=r"^[A-Za-z0-9_.:@#/-]{1,128}$", description="unique; a resend is a duplicate")
    type: Literal["click", "add_to_cart", "purchase"]
    search_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@#/-]{1,128}$",
                                  description="the search_id of the response (required for a click)")
    product_id: str = Field(..., pattern=r"^[A-Za-z0-9_.:@#/-]{1,128}$")
    position: int | None = Field(None, ge=1, le=5000)
    ts: str | None = Field(None, description="ISO 8601 time with a zone (default: when received)")
    user_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@#/-]{1,128}$")
    session_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@#/-]{1,128}$")


class EventsBody(_Closed):
    """``POST /events``: up to 100 events (a single event object is accepted too)."""

    events: list[ClientEventBody] = Field(..., min_length=1, max_length=100)


class EventsResponse(_Open):
    accepted: int
    duplicates: list[str]


class ErrorBody(_Open):
    error: str


class Item(_Open):
    product_id: str
    title: str | None = None
    image: str | None = None


class SearchItem(Item):
    scores: dict[str, float]
    category: list[str] | None = None


class Stage(_Open):
    name: str
    ms: float
    status: str
    detail: str | None = None


class SearchResponse(_Open):
    search_id: str
    items: list[SearchItem]
    query: str | None
    rewrites: list[dict[str, Any]]
    stages: list[Stage]
    fallbacks: list[str]
    versions: dict[str, str]
    variant: str
    llm: list[dict[str, Any]]
    cache: dict[str, str]
    total_ms: float


class RecommendItem(Item):
    score: float | None = None


class RecommendResponse(_Open):
    search_id: str
    items: list[RecommendItem]
    source: str


class StatusResponse(_Open):
    catalog: str
    variants: dict[str, dict[str, str]]
    traffic: dict[str, float]


class ReloadResponse(_Open):
    variant: str
    versions: dict[str, str]


class TrafficResponse(_Open):
    traffic: dict[str, float]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route may answer."""
    why = {400: "the request names the field and rule it breaks", 401: "admin key missing or wrong",
           404: "no such product or photo", 409: "a reload failed; the old version keeps serving",
           413: "the body or a part is over its size limit", 415: "not a JSON body or a multipart form",
           503: "loading, or overloaded (Retry-After)"}
    # Content given explicitly: errors are JSON even on routes whose success is a file or text.
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {code: {"description": why[code], "content": error} for code in codes}


def request_body(json_model: type[BaseModel] | None = None,
                 form_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` declaring a route's request body (the route itself reads the raw request)."""
    content: dict[str, Any] = {}
    if json_model is not None:
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}}
    if form_model is not None:
        content["multipart/form-data"] = {"schema": {"$ref": f"#/components/schemas/{form_model.__name__}"}}
    return {"requestBody": {"required": True, "content": content}}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (SearchBody, SearchForm, SimilarBody, SessionBody, ReloadBody,
                                               TrafficBody, SearchFilters, EventsBody, ErrorBody, ExperimentBody,
                                               StopExperimentBody)


def add_request_schemas(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the request models (and the models they use) and the error body under
    ``components/schemas``."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return spec
