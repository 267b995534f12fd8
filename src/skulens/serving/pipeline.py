"""The search pipeline under a latency budget:
normalise → understand (LLM cascade, tier 0) → encode → retrieve → (recover) → rerank → rules.

Every stage runs with its own timeout (``ServingConfig.stage_timeout_ms``), and no stage starts
once the request's total budget is spent. A stage that fails or is late falls back and says so:

* spelling correction late or failing → the query as typed;
* query understanding (the cascade's rules tier and cache) late or failing → skipped;
* a search that finds nothing useful (no lexical match, or nothing at all) → zero-result recovery:
  the cascade's higher tiers (local model, hosted models) under ``recovery_budget_ms``, each
  answer tried against the index until one finds something; filters the cascade added are relaxed
  when they alone empty the page;
* encoder late or failing → lexical retrieval only;
* reranker late or failing → the retrieval order.

Business rules (hidden products, pinned products, a per-category cap) apply last.

Each fallback is named in the result (``fallbacks``) and in its stage report, so the service can
count it in its metrics and flag it in the response. A CPU-bound stage cannot be interrupted in
Python; a late stage's thread finishes in the background and its result is dropped.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from skulens.models.ranker import ONLINE
from skulens.retrieval.filters import FilterError, Filters
from skulens.retrieval.fusion import collapse_near_duplicates
from skulens.retrieval.ranking import RankingPolicy

DEFAULT_TIMEOUTS = {"normalise": 15.0, "rewrite": 40.0, "encode": 40.0, "retrieve": 40.0, "rerank": 60.0,
                    "ltr": 20.0}


@dataclass(frozen=True)
class ServingConfig:
    total_budget_ms: float = 150.0
    stage_timeout_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    depth: int = 100
    max_query_chars: int = 512
    max_k: int = 100
    max_page: int = 50
    recovery_budget_ms: float = 3000.0
    variant: str = "control"
    # Text query vectors cached (LRU); 0: none.
    vector_cache_size: int = 4096
    # Results whose vectors are this similar to a better one are dropped from the page (the same
    # product listed twice); None keeps them.
    collapse_threshold: float | None = 0.995
    # With more searches than this in flight the reranker is skipped (flagged "rerank_shed"). None
    # (the default): never; the service's admission control keeps a worker's load servable instead.
    shed_rerank_above: int | None = None
    # Share of first-page searches whose result 1 swaps places with a random result 2-10 (flagged
    # in the response and the search record): the randomisation the ranker's propensity estimate needs.
    exploration_share: float = 0.0

    @classmethod
    def from_settings(cls, serving: Any, **overrides: Any) -> ServingConfig:
        """From the ``serving`` section of the settings."""
        return cls(total_budget_ms=serving.total_budget_ms, stage_timeout_ms=dict(serving.stage_timeout_ms),
                   recovery_budget_ms=serving.recovery_budget_ms,
                   collapse_threshold=serving.collapse_threshold, shed_rerank_above=serving.shed_rerank_above,
                   vector_cache_size=serving.vector_cache_size, exploration_share=serving.exploration_share,
                   **overrides)


class RequestError(ValueError):
    """A request that cannot be served as sent (answered with ``status``, a 4xx, and this message)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def reject_unknown(raw: Mapping[str, Any], allowed: set[str]) -> None:
    """RequestError naming the fields of ``raw`` outside ``allowed``."""
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def bounded_int(raw: Mapping[str, Any], name: str, default: int, top: int) -> int:
    """``raw[name]`` (or ``default``) when it is an integer from 1 to ``top``; else RequestError."""
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise RequestError(f"{name} must be an integer from 1 to {top}, got {value!r}")
    return value


def parse_filters(raw: Any) -> Filters | None:
    """A request's ``filters`` object (None when it filters nothing); RequestError when invalid."""
    try:
        filters = Filters.parse(raw)
    except FilterError as exc:
        raise RequestError(str(exc)) from exc
    return None if filters.empty else filters


@dataclass(frozen=True)
class SearchRequest:
    text: str | None = None
    image: bytes | None = None
    filters: Filters | None = None
    k: int = 10
    page: int = 1
    user_id: str | None = None
    session_id: str | None = None
    rerank: bool = True

    @classmethod
    def parse(cls, raw: Mapping[str, Any], config: ServingConfig, image: bytes | None = None) -> SearchRequest:
        """Validate a request body (a mapping); every problem is a RequestError naming the field."""
        reject_unknown(raw, {"text", "query", "filters", "k", "page", "user_id", "session_id", "image", "rerank"})
        text = raw.get("text", raw.get("query"))
        if text is not None and not isinstance(text, str):
            raise RequestError("text must be a string")
        if text is not None and len(text) > config.max_query_chars:
            raise RequestError(f"text is {len(text):,} characters; at most {config.max_query_chars} are accepted")
        text = re.sub(r"\s+", " ", text).strip() if text else None
        if not text and image is None:
            raise RequestError("send a text, a photo or both")
        k, page = bounded_int(raw, "k", 10, config.max_k), bounded_int(raw, "page", 1, config.max_page)
        filters = parse_filters(raw.get("filters"))
        ids = {n: raw.get(n) for n in ("user_id", "session_id")}
        for name, value in ids.items():
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise RequestError(f"{name} must be a string of at most 128 characters")
        rerank = raw.get("rerank", True)
        if isinstance(rerank, str) and rerank.lower() in ("true", "false"):  # from a form field
            rerank = rerank.lower() == "true"
        if not isinstance(rerank, bool):
            raise RequestError(f"rerank must be true or false, got {rerank!r}")
        return cls(text, image, filters, k, page, ids["user_id"], ids["session_id"], rerank)


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
    variant: str = "control"
    llm: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)
    exploration: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "query": self.query, "rewrites": self.rewrites,
                "stages": [s.__dict__ for s in self.stages], "fallbacks": self.fallbacks,
                "versions": self.versions, "variant": self.variant, "llm": self.llm, "cache": self.cache,
                "exploration": self.exploration, "total_ms": round(self.total_ms, 2)}


class _Late(Exception):
    pass


class SearchPipeline:
    """Components in, :class:`SearchResult` out; every stage timed, bounded and able to fall back.

    ``lexical``: ``search(text, k, filters=, exclude=)``; ``store``: ``search(vectors, k, filters=,
    exclude=)``; ``encoder``: ``encode_texts`` / ``encode_images``; ``reranker``: f(query, titles) ->
    scores; ``spell``: a :class:`~skulens.serving.spelling.SpellCorrector`; ``cascade``: a
    :class:`~skulens.serving.llm.cascade.Cascade`; ``rules``: :class:`~skulens.serving.rules.BusinessRules`;
    ``titles``: product id -> title; ``categories``: product id -> leaf category (for the rules)."""

    def __init__(self, *, lexical: Any, store: Any, encoder: Any, titles: Mapping[str, str],
                 reranker: Callable[[str, list[str]], np.ndarray] | None = None, spell: Any = None,
                 cascade: Any = None, rules: Any = None, categories: Mapping[str, str] | None = None,
                 config: ServingConfig | None = None, versions: Mapping[str, str] | None = None,
                 ranking: RankingPolicy | None = None, ranker: Any = None,
                 paths: Mapping[str, Any] | None = None) -> None:
        self.lexical, self.store, self.encoder, self.titles = lexical, store, encoder, titles
        self.reranker, self.spell, self.cascade, self.rules = reranker, spell, cascade, rules
        self.categories = categories or {}
        # The learned ranker (a LearnedRanker: the last ranking stage) and what its features need:
        # the category paths, and the online feature cache (set by the service, like the cascade).
        self.ranker, self.paths = ranker, paths or {}
        self.features: Any = None
        self.config = config or ServingConfig()
        self.ranking = ranking or RankingPolicy()
        self.versions = dict(versions or {})
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="skulens-stage")
        # Text query vectors, most recent first: popular queries repeat, and encoding is the
        # costliest stage after reranking.
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.vector_cache_size = self.config.vector_cache_size
        self._vectors_lock = threading.Lock()  # request threads share the cache
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._retired = False

    def enter(self) -> None:
        """Count a search in flight (:meth:`search` does; a caller that must take the pipeline and
        count it atomically, as a reload swaps variants, calls this first and passes ``entered``)."""
        with self._inflight_lock:
            self._inflight += 1

    def retire(self) -> None:
        """Close once the searches in flight have finished: a reload swaps in the new pipeline
        first, and the old one drains (no running search loses its stages to a closed pool)."""
        with self._inflight_lock:
            self._retired = True
            idle = self._inflight == 0
        if idle:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for part in (self.encoder, self.reranker):
            close = getattr(type(part), "close", None)  # batchers have one (their thread); plain scorers not
            if close is not None:
                close(part)

    @property
    def inflight(self) -> int:
        return self._inflight

    def warm_up(self) -> dict[str, float]:
        """Run each model once (text and image towers, reranker, both indexes) so that the first
        shopper's request does not pay for lazy initialisation; milliseconds per part."""
        import io

        from PIL import Image

        photo = io.BytesIO()
        Image.new("RGB", (64, 64), (120, 120, 120)).save(photo, format="PNG")
        parts: dict[str, Callable[[], Any]] = {
            "text": lambda: self.encoder.encode_texts(["warm up"]),
            "image": lambda: self.encoder.encode_images([photo.getvalue()]),
            "lexical": lambda: self.lexical.search("warm up", k=10),
        }
        if self.reranker is not None:
            parts["rerank"] = lambda: self.reranker("warm up", ["warm up"] * 4)
        timings = {}
        for name, run in parts.items():
            t = time.perf_counter()
            try:
                vector = run()
                if name == "text":
                    self.store.search(vector, k=10)
            except Exception:  # noqa: BLE001, S112 - a part that fails here fails (and falls back) per request
                continue
            timings[name] = _ms(t)
        return timings

    def _run(self, name: str, fn: Callable[[], Any], started: float, budget_ms: float | None = None) -> Any:
        """``fn()`` within the stage timeout and what is left of the (total or recovery) budget."""
        budget = self.config.total_budget_ms if budget_ms is None else budget_ms
        left = budget - (time.perf_counter() - started) * 1000
        timeout = min(self.config.stage_timeout_ms.get(name, budget), left) if budget_ms is None else left
        if timeout <= 0:
            raise _Late(f"no time left of the {budget:.0f} ms budget")
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout / 1000)
        except FutureTimeout as exc:
            raise _Late(f"late: over {timeout:.0f} ms") from exc

    def search(self, request: SearchRequest, *, entered: bool = False) -> SearchResult:
        if not entered:
            self.enter()
        try:
            return self._search(request, self._inflight)
        finally:
            with self._inflight_lock:
                self._inflight -= 1
                drained = self._retired and self._inflight == 0
            if drained:
                self.close()

    def _search(self, request: SearchRequest, inflight: int) -> SearchResult:
        started = time.perf_counter()
        stages: list[StageReport] = []
        fallbacks: list[str] = []
        rewrites: list[dict[str, Any]] = []
        llm: list[dict[str, Any]] = []

        def stage(name: str, fn: Callable[[], Any], fallback: str | None, default: Any,
                  budget_ms: float | None = None, since: float | None = None) -> Any:
            t = time.perf_counter()
            try:
                value = self._run(name, fn, started if since is None else since, budget_ms)
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
        derived: dict[str, Any] = {}
        if text and self.cascade is not None:
            # Tier 0 only (cache and rules) inside the request budget; the model tiers are for recovery.
            quick = stage("rewrite", lambda: self.cascade.understand(text, tiers=["rules"]), "rewrite_skipped", None)
            if quick is not None:
                llm += [step.__dict__ for step in quick.steps]
                text, derived = self._apply(quick, text, request, rewrites)
        want = request.k * request.page
        depth = max(self.config.depth, want)
        cache: dict[str, str] = {}
        undecodable: list[Exception] = []

        def encode() -> np.ndarray:
            from skulens.retrieval.encoders import ImageQueryError

            try:
                return self._encode(text, request.image, cache)
            except ImageQueryError as exc:
                undecodable.append(exc)
                raise

        exclude = self.rules.hidden if self.rules is not None else ()
        filters = _merge(request.filters, derived)
        decided, known_lexical = self._lexical_decides(text, request, filters, depth, exclude, want, stages)
        if decided is not None:
            vector = None
            stages.append(StageReport("encode", 0.0, "skipped", "the fusion weight learned for this query is 0 "
                                      "and BM25 fills the page: the dense side could not change it"))
        elif text:
            vector = stage("encode", encode, "lexical_only", None)
        else:
            # A photo alone has no lexical fallback: it may use what is left of the whole budget.
            vector = stage("encode", encode, "photo_search_unavailable", None,
                           budget_ms=self.config.total_budget_ms, since=started)
            if vector is None and undecodable:
                raise RequestError(f"the photo could not be encoded and there is no text to search by: "
                                   f"{undecodable[0]}")
            if vector is None:
                return SearchResult([], None, rewrites, stages, fallbacks, self.versions, _ms(started),
                                    self.config.variant, llm, cache)

        def retrieve(query: str | None, filters: Filters | None) -> tuple[list, list]:
            dense = (self.store.search(vector, k=depth, filters=filters, exclude=exclude)[0]
                     if vector is not None else [])
            lexical = self.lexical.search(query, k=depth, filters=filters, exclude=exclude) if query else []
            return dense, lexical

        hits = _Hits(vector, depth, exclude)
        if decided is not None:
            dense, lexical = [], decided[1]
        else:
            dense, lexical = self._retrieve("retrieve", text, filters, hits, started, stages, fallbacks,
                                            known_lexical)
        if derived and not (dense or lexical):
            # The filters read from the query emptied the page (say, a price limit on a catalogue
            # without prices): relax them rather than answer nothing.
            filters = request.filters
            dense, lexical = self._retrieve("retrieve_relaxed", text, filters, hits, started, stages, fallbacks)
            rewrites.append({"kind": "relaxed_filters", "dropped": sorted(derived)})
        retrieved = all(s.status == "ok" for s in stages if s.name.startswith("retrieve"))
        # Recovery only when the search ran and found nothing: a late or failed retrieval (an
        # overloaded machine) must not add model calls on top.
        recovered_from = None
        if text and retrieved and not lexical and self.cascade is not None and self.config.recovery_budget_ms > 0:
            recovered = self._recover(text, request, filters, retrieve, stage, llm, rewrites, fallbacks)
            if recovered is not None:
                recovered_from, (text, (dense, lexical)) = text, recovered
        # Fusion and rerank follow the index version's learned ranking policy: the same code that
        # `skulens eval` and build_index's learning score (skulens.retrieval.ranking).
        if decided is not None and recovered_from is None:
            fused = decided[0]
        else:
            fused = self.ranking.fuse(dense, lexical, text) if vector is not None and text else (dense or lexical)
        scores: dict[str, dict[str, float]] = {}
        for label, hits in (("dense", dense), ("bm25", lexical), ("fused", fused)):
            for pid, score in hits:
                scores.setdefault(pid, {})[label] = round(float(score), 5)
        if self.ranking.rescorer is not None and text and dense and lexical:
            # The learned rescorer reorders the fused head (the same RankingPolicy.rescore that
            # learning and skulens eval score); late or failing, the fused order stands.
            fused_now = fused
            rescored = stage("rescore", lambda: self.ranking.rescore(text, fused_now, dense, lexical, self.titles),
                             "fused_order", None)
            if rescored is not None:
                for pid, score in rescored[:self.ranking.rescorer.depth]:
                    scores[pid]["rescore"] = round(float(score), 5)
                fused = rescored
        elif self.ranking.rescorer is not None:
            stages.append(StageReport("rescore", 0.0, "skipped", "no text" if not text else "one side had no hits"))
        order = [pid for pid, _ in fused]
        shed = self.config.shed_rerank_above is not None and inflight > self.config.shed_rerank_above
        if self.reranker is not None and text and order and request.rerank and shed:
            stages.append(StageReport("rerank", 0.0, "fallback", f"{inflight} searches in flight"))
            fallbacks.append("rerank_shed")
        elif self.reranker is not None and text and order and request.rerank:
            head = fused[:self.ranking.rerank_depth]
            reranked = stage("rerank", lambda: self._rerank(text, [self.titles.get(p, "") for p, _ in head]),
                             "retrieval_order", None)
            if reranked is not None:
                for (pid, _), score in zip(head, reranked, strict=True):
                    scores[pid]["rerank"] = round(float(score), 5)
                order = [pid for pid, _ in self.ranking.rerank(head, reranked)] + order[len(head):]
        else:
            why = (f"no reranker ({self.versions.get('reranker', 'none')})" if self.reranker is None
                   else "not requested" if not request.rerank else "no text")
            stages.append(StageReport("rerank", 0.0, "skipped", why))
        flag = add_features(order[:self.ranker.depth] if self.ranker is not None else [], scores, self.features)
        if flag:
            fallbacks.append(flag)
        if self.ranker is not None and order and text:
            head = order[:self.ranker.depth]
            learned = stage("ltr", lambda: self._learned_order(text, head, scores), "ranker_skipped", None)
            if learned is not None:
                order = learned + order[len(head):]
        else:
            stages.append(StageReport("ltr", 0.0, "skipped", "no ranker" if self.ranker is None else "no text"))
        t = time.perf_counter()
        if self.config.collapse_threshold is not None and hasattr(self.store, "vectors") and order:
            head = order[:2 * want]
            kept = [pid for pid, _ in collapse_near_duplicates([(p, 0.0) for p in head], self.store.vectors,
                                                               self.config.collapse_threshold)]
            if len(kept) < len(head):
                rewrites.append({"kind": "collapsed_duplicates", "dropped": len(head) - len(kept)})
            order = kept + order[len(head):]
        if self.rules is not None:
            order, notes = self.rules.apply(request.text or "", order, self.categories, request.filters)
            rewrites += notes
        stages.append(StageReport("rules", _ms(t), "ok"))
        page = order[want - request.k:want]
        exploration = None
        if request.page == 1 and len(page) > 1 and self.config.exploration_share > 0 \
                and random.random() < self.config.exploration_share:  # noqa: S311 - not security
            other = random.randint(2, min(len(page), 10))  # noqa: S311
            page[0], page[other - 1] = page[other - 1], page[0]
            exploration = f"swap:1:{other}"
        add_features(page, scores, self.features)  # logged with the search record: the ranker learns from them
        items = [{"product_id": pid, "title": self.titles.get(pid), "scores": scores.get(pid, {})} for pid in page]
        return SearchResult(items, text, rewrites, stages, fallbacks, self.versions, _ms(started),
                            self.config.variant, llm, cache, exploration)

    def _learned_order(self, text: str, head: list[str], scores: dict[str, dict[str, float]]) -> list[str]:
        """``head`` in the learned ranker's order (its features from the scores the search has)."""
        ranked = self.ranker.order(text, [scores.get(pid, {}) for pid in head], [self.titles.get(pid) for pid in head],
                                   [self.paths.get(pid) for pid in head])
        return [head[i] for i in ranked]

    def _retrieve(self, name: str, query: str | None, filters: Filters | None, hits: _Hits, started: float,
                  stages: list[StageReport], fallbacks: list[str], known_lexical: list | None = None
                  ) -> tuple[list, list]:
        """Dense and lexical hits. BM25 answers in about a millisecond, so it runs in the request's
        own thread and is never dropped for lateness; the dense side of a text search runs beside it
        in the pool under the stage timeout, and when it is late or fails the page is the lexical
        list (flagged ``lexical_only``). A photo-only search has no other retriever: its dense side
        runs to the end. An empty page then means that no retriever matched."""
        t = time.perf_counter()
        problems: dict[str, str] = {}
        future, timeout = None, 0.0
        dense_search = partial(self._dense, hits, filters)
        if hits.vector is not None and query:
            left = self.config.total_budget_ms - (t - started) * 1000
            timeout = min(self.config.stage_timeout_ms.get("retrieve", left), left)
            if timeout > 0:
                future = self._pool.submit(dense_search)
            else:
                problems["dense"] = f"late: no time left of the {self.config.total_budget_ms:.0f} ms budget"
        lexical: list = []
        if query and known_lexical is not None:
            lexical = known_lexical  # already searched, with these filters, by _lexical_decides
        elif query:
            try:
                lexical = self.lexical.search(query, k=hits.depth, filters=filters, exclude=hits.exclude)
            except Exception as exc:  # noqa: BLE001 - a failing lexical index falls back to the dense side
                problems["lexical"] = f"{type(exc).__name__}: {exc}"
        dense: list = []
        if hits.vector is not None and not query:
            try:
                dense = dense_search()
            except Exception as exc:  # noqa: BLE001
                problems["dense"] = f"{type(exc).__name__}: {exc}"
        elif future is not None:
            remaining = timeout - (time.perf_counter() - t) * 1000
            try:
                dense = future.result(timeout=max(remaining, 0.0) / 1000)
            except FutureTimeout:
                future.cancel()
                problems["dense"] = f"late: over {timeout:.0f} ms"
            except Exception as exc:  # noqa: BLE001
                problems["dense"] = f"{type(exc).__name__}: {exc}"
        if not problems:
            stages.append(StageReport(name, _ms(t), "ok"))
            return dense, lexical
        stages.append(StageReport(name, _ms(t), "fallback", "; ".join(f"{k}: {v}" for k, v in problems.items())))
        ran = {"dense": hits.vector is not None, "lexical": bool(query)}
        failed = {side for side in problems if ran[side]}
        if failed >= {side for side, did in ran.items() if did}:
            fallbacks.append("retrieval_failed")
        elif "dense" in failed:
            fallbacks.append("lexical_only")
        else:
            fallbacks.append("lexical_failed")
        return dense, lexical

    def _lexical_decides(self, text: str | None, request: SearchRequest, filters: Filters | None, depth: int,
                         exclude: Any, want: int, stages: list[StageReport]
                         ) -> tuple[tuple[list, list] | None, list | None]:
        """((fused, lexical), lexical) when BM25 alone decides the page under the learned ranking
        policy (its fusion weight is 0 and enough lexical hits score above every dense-only
        candidate: see :meth:`RankingPolicy.lexical_decides`), with the retrieve stage reported;
        (None, the lexical hits searched or None) otherwise, so the full path need not search again.

        Only for a text search whose page no rule reorders from deeper candidates (no pins for the
        query, no per-category cap): the page is then the one the full fusion gives."""
        if not text or request.image is not None or self.ranking.rescorer is not None or (
                self.ranking.adaptive is None and self.ranking.fusion_weight != 0.0):
            return None, None
        if self.rules is not None and (self.rules.max_per_category > 0 or self.rules.pinned):
            return None, None
        t = time.perf_counter()
        try:
            lexical = self.lexical.search(text, k=depth, filters=filters, exclude=exclude)
        except Exception:  # noqa: BLE001 - the full path runs (and reports) the lexical failure
            return None, None
        # Collapse looks two pages deep for near-duplicates, so twice the page must be decided.
        fused = self.ranking.lexical_decides(lexical, 2 * want, text)
        if fused is None:
            return None, lexical
        stages.append(StageReport("retrieve", _ms(t), "ok", "lexical only: the dense side could not change the page"))
        return (fused, lexical), lexical

    def _dense(self, hits: _Hits, filters: Filters | None) -> list:
        return self.store.search(hits.vector, k=hits.depth, filters=filters, exclude=hits.exclude)[0]

    def _rerank(self, text: str, titles: list[str]) -> np.ndarray:
        """Cross-encoder scores of ``titles``, each distinct title scored once (catalogues list the
        same title under several ids: one product per colour or size)."""
        distinct = list(dict.fromkeys(titles))
        scores = dict(zip(distinct, np.asarray(self.reranker(text, distinct), dtype=np.float32), strict=True))
        return np.array([scores[t] for t in titles], dtype=np.float32)

    def _apply(self, answer: Any, text: str, request: SearchRequest,
               rewrites: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """The query text and the filters a cascade answer implies (the request's own filters win)."""
        understanding = answer.understanding
        if understanding is None:
            return text, {}
        if understanding.query != text:
            rewrites.append({"kind": "llm", "tier": answer.tier, "from": text, "to": understanding.query})
        own = request.filters
        derived = {k: v for k, v in understanding.filters().items()
                   if own is None or getattr(own, k) in (None, {})}
        if derived:
            rewrites.append({"kind": "filters", "tier": answer.tier, "added": derived})
        return understanding.query, derived

    def _recover(self, text: str, request: SearchRequest, filters: Filters | None, retrieve: Callable[..., Any],
                 stage: Callable[..., Any], llm: list[dict[str, Any]], rewrites: list[dict[str, Any]],
                 fallbacks: list[str]) -> tuple[str, tuple[list, list]] | None:
        """Zero-result recovery: the cascade's model tiers, each answer tried against the index."""
        found: dict[str, tuple[list, list]] = {}

        def useful(understanding: Any) -> bool:
            hits = retrieve(understanding.query, _merge(filters, understanding.filters()))
            if hits[1]:
                found[understanding.query] = hits
            return bool(hits[1])

        tiers = [name for name in self.cascade.names if name != "rules"]
        if not tiers:
            return None
        since = time.perf_counter()
        deadline = since + self.config.recovery_budget_ms / 1000
        answer = stage("recover", lambda: self.cascade.understand(text, useful, tiers=tiers, deadline_s=deadline,
                                                                  use_cache=False),
                       "recovery_failed", None, budget_ms=self.config.recovery_budget_ms, since=since)
        if answer is None:
            return None
        llm += [step.__dict__ for step in answer.steps]
        if any(step.outcome in ("error", "timeout", "circuit_open") for step in answer.steps):
            fallbacks.append("llm_provider_skipped")  # a failing or late provider, passed over
        if answer.tier is None or answer.understanding is None:
            fallbacks.append("recovery_failed")
            return None
        query = answer.understanding.query
        hits = found.get(query) or retrieve(query, _merge(filters, answer.understanding.filters()))
        rewrites.append({"kind": "recovery", "tier": answer.tier, "from": text, "to": query})
        return query, hits

    def _encode(self, text: str | None, image: bytes | None, cache: dict[str, str]) -> np.ndarray:
        from skulens.retrieval.encoders import query_vectors

        if image is not None or not text:
            return query_vectors(self.encoder, text, image)
        if self.vector_cache_size <= 0:
            return query_vectors(self.encoder, text, None)
        with self._vectors_lock:
            vector = self._vectors.get(text)
            if vector is not None:
                self._vectors.move_to_end(text)
        cache["query_vector"] = "miss" if vector is None else "hit"
        if vector is None:
            vector = query_vectors(self.encoder, text, None)  # outside the lock: encoding is slow
            with self._vectors_lock:
                self._vectors[text] = vector
                while len(self._vectors) > self.vector_cache_size:
                    self._vectors.popitem(last=False)
        return vector


@dataclass(frozen=True)
class _Hits:
    """What every retrieval of one search shares: the query vector, the depth, the exclusions."""

    vector: np.ndarray | None
    depth: int
    exclude: Any


def _merge(filters: Filters | None, derived: Mapping[str, Any]) -> Filters | None:
    """The request's filters with the derived ones added where the request leaves them unset."""
    if not derived:
        return filters
    base = {"category": filters.category, "price_min": filters.price_min, "price_max": filters.price_max,
            "attributes": dict(filters.attributes)} if filters is not None else {}
    merged = {**{k: v for k, v in derived.items() if base.get(k) in (None, {})},
              **{k: v for k, v in base.items() if v not in (None, {})}}
    try:
        parsed = Filters.parse(merged)
    except FilterError:
        return filters  # derived bounds that contradict the request's own are dropped
    return None if parsed.empty else parsed


def add_features(pids: list[str], scores: dict[str, dict[str, float]], cache: Any) -> str | None:
    """The online features of ``pids`` (from the feature cache) into their ``scores``, the ranking
    input; the fallback to flag when the cache is stale or was never filled, else None. A product
    without events simply has no features."""
    if cache is None:
        return None
    flag = cache.status()
    if flag == "features_unavailable":
        return flag
    for pid in pids:
        found = cache.lookup(f"product:{pid}")
        if found:
            row = scores.setdefault(pid, {})
            for name in ONLINE:  # the online features the ranker reads
                if found.get(name) is not None:
                    row[name] = round(float(found[name]), 6)
    return flag


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
