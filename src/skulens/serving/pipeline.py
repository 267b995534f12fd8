"""The search pipeline under a latency budget: normalise → (rewrite) → encode → retrieve → rerank.

Every stage runs with its own timeout (``ServingConfig.stage_timeout_ms``), and no stage starts
once the request's total budget is spent. A stage that fails or is late falls back and says so:

* spelling correction late or failing → the query as typed;
* rewrite (the LLM cascade, optional) late or failing → skipped;
* encoder late or failing → lexical retrieval only;
* reranker late or failing → the retrieval order.

Each fallback is named in the result (``fallbacks``) and in its stage report, so the service can
count it in its metrics and flag it in the response. A CPU-bound stage cannot be interrupted in
Python; a late stage's thread finishes in the background and its result is dropped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skulens.retrieval.filters import FilterError, Filters
from skulens.retrieval.fusion import weighted

DEFAULT_TIMEOUTS = {"normalise": 15.0, "rewrite": 40.0, "encode": 40.0, "retrieve": 40.0, "rerank": 60.0}


@dataclass(frozen=True)
class ServingConfig:
    total_budget_ms: float = 150.0
    stage_timeout_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    depth: int = 100
    rerank_top_k: int = 20
    fusion_weight: float = 0.25  # dense share of the weighted fusion (learned by skulens eval)
    max_query_chars: int = 512
    max_k: int = 100
    max_page: int = 50


class RequestError(ValueError):
    """A search request that cannot be served as sent (answered with a 4xx and this message)."""


@dataclass(frozen=True)
class SearchRequest:
    text: str | None = None
    image: bytes | None = None
    filters: Filters | None = None
    k: int = 10
    page: int = 1
    user_id: str | None = None
    session_id: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], config: ServingConfig, image: bytes | None = None) -> SearchRequest:
        """Validate a request body (a mapping); every problem is a RequestError naming the field."""
        unknown = sorted(set(raw) - {"text", "query", "filters", "k", "page", "user_id", "session_id", "image"})
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(unknown)}")
        text = raw.get("text", raw.get("query"))
        if text is not None and not isinstance(text, str):
            raise RequestError("text must be a string")
        if text is not None and len(text) > config.max_query_chars:
            raise RequestError(f"text is {len(text):,} characters; at most {config.max_query_chars} are accepted")
        text = re.sub(r"\s+", " ", text).strip() if text else None
        if not text and image is None:
            raise RequestError("send a text, a photo or both")
        k, page = raw.get("k", 10), raw.get("page", 1)
        for name, value, top in (("k", k, config.max_k), ("page", page, config.max_page)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise RequestError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        try:
            filters = Filters.parse(raw.get("filters"))
        except FilterError as exc:
            raise RequestError(str(exc)) from exc
        ids = {n: raw.get(n) for n in ("user_id", "session_id")}
        for name, value in ids.items():
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise RequestError(f"{name} must be a string of at most 128 characters")
        return cls(text, image, None if filters.empty else filters, k, page, ids["user_id"], ids["session_id"])


@dataclass
class StageReport:
    name: str
    ms: float
    status: str  # ok | skipped | fallback
    detail: str | None = None


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    query: str | None
    rewrites: list[dict[str, str]]
    stages: list[StageReport]
    fallbacks: list[str]
    versions: dict[str, str]
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "query": self.query, "rewrites": self.rewrites,
                "stages": [s.__dict__ for s in self.stages], "fallbacks": self.fallbacks,
                "versions": self.versions, "total_ms": round(self.total_ms, 2)}


class _Late(Exception):
    pass


class SearchPipeline:
    """Components in, :class:`SearchResult` out; every stage timed, bounded and able to fall back.

    ``lexical``: ``search(text, k, filters=)``; ``store``: ``search(vectors, k, filters=)``;
    ``encoder``: ``encode_texts`` / ``encode_images``; ``reranker``: f(query, titles) -> scores;
    ``spell``: a :class:`~skulens.serving.spelling.SpellCorrector`; ``rewriter``: f(query) ->
    (query, [rewrite notes]); ``titles``: product id -> title."""

    def __init__(self, *, lexical: Any, store: Any, encoder: Any, titles: Mapping[str, str],
                 reranker: Callable[[str, list[str]], np.ndarray] | None = None, spell: Any = None,
                 rewriter: Callable[[str], tuple[str, list[dict[str, str]]]] | None = None,
                 config: ServingConfig | None = None, versions: Mapping[str, str] | None = None) -> None:
        self.lexical, self.store, self.encoder, self.titles = lexical, store, encoder, titles
        self.reranker, self.spell, self.rewriter = reranker, spell, rewriter
        self.config = config or ServingConfig()
        self.versions = dict(versions or {})
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="skulens-stage")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, name: str, fn: Callable[[], Any], started: float) -> Any:
        """``fn()`` within the stage timeout and what is left of the total budget."""
        left = self.config.total_budget_ms - (time.perf_counter() - started) * 1000
        timeout = min(self.config.stage_timeout_ms.get(name, self.config.total_budget_ms), left)
        if timeout <= 0:
            raise _Late(f"no time left of the {self.config.total_budget_ms:.0f} ms budget")
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout / 1000)
        except FutureTimeout as exc:
            raise _Late(f"late: over {timeout:.0f} ms") from exc

    def search(self, request: SearchRequest) -> SearchResult:
        started = time.perf_counter()
        stages: list[StageReport] = []
        fallbacks: list[str] = []
        rewrites: list[dict[str, str]] = []

        def stage(name: str, fn: Callable[[], Any], fallback: str | None, default: Any) -> Any:
            t = time.perf_counter()
            try:
                value = self._run(name, fn, started)
                stages.append(StageReport(name, _ms(t), "ok"))
                return value
            except Exception as exc:  # noqa: BLE001 - every failure of a stage becomes its fallback
                detail = str(exc) if isinstance(exc, _Late) else f"{type(exc).__name__}: {exc}"
                stages.append(StageReport(name, _ms(t), "fallback", detail))
                if fallback:
                    fallbacks.append(fallback)
                return default

        text = request.text
        if text and self.spell is not None:
            corrected, changes = stage("normalise", lambda: self.spell.correct(text), "spelling_skipped", (text, []))
            if changes:
                rewrites += [{"kind": "spelling", "from": a, "to": b} for a, b in changes]
            text = corrected
        if text and self.rewriter is not None:
            text, notes = stage("rewrite", lambda: self.rewriter(text), "rewrite_skipped", (text, []))
            rewrites += notes
        want = request.k * request.page
        depth = max(self.config.depth, want)
        vector = stage("encode", lambda: self._encode(text, request.image), "lexical_only", None)
        if vector is None and not text:
            raise RequestError("the photo could not be encoded and there is no text to search by")

        def retrieve() -> tuple[list, list]:
            dense = self.store.search(vector, k=depth, filters=request.filters)[0] if vector is not None else []
            lexical = self.lexical.search(text, k=depth, filters=request.filters) if text else []
            return dense, lexical
        dense, lexical = stage("retrieve", retrieve, "retrieval_failed", ([], []))
        if vector is None or not text:
            fused = dense or lexical
        else:
            fused = weighted(dense, lexical, self.config.fusion_weight)
        scores: dict[str, dict[str, float]] = {}
        for label, hits in (("dense", dense), ("bm25", lexical), ("fused", fused)):
            for pid, score in hits:
                scores.setdefault(pid, {})[label] = round(float(score), 5)
        order = [pid for pid, _ in fused]
        if self.reranker is not None and text and order:
            head = order[:self.config.rerank_top_k]
            reranked = stage("rerank", lambda: self.reranker(text, [self.titles.get(p, "") for p in head]),
                             "retrieval_order", None)
            if reranked is not None:
                for pid, score in zip(head, reranked, strict=True):
                    scores[pid]["rerank"] = round(float(score), 5)
                head = [head[i] for i in np.argsort(-np.asarray(reranked), kind="stable")]
                order = head + order[len(head):]
        else:
            stages.append(StageReport("rerank", 0.0, "skipped", None if self.reranker else "no reranker"))
        page = order[want - request.k:want]
        items = [{"product_id": pid, "title": self.titles.get(pid), "scores": scores.get(pid, {})} for pid in page]
        return SearchResult(items, text, rewrites, stages, fallbacks, self.versions, _ms(started))

    def _encode(self, text: str | None, image: bytes | None) -> np.ndarray:
        from skulens.retrieval.encoders import query_vectors

        return query_vectors(self.encoder, text, image)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
