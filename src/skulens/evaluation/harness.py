"""``skulens eval``: every retriever on real judgments and on the fashion catalogue, one report.

Two kinds of evaluation, each per retriever (BM25, dense, hybrid RRF, hybrid weighted, the best
hybrid + cross-encoder rerank), on clean and **noisy** queries (a seeded typo or a dropped word),
as typed and through the speller the service builds (``serving.spelling``), with nDCG@10 over
the typo'd and the shortened queries apart (a speller can restore a typo, not a dropped word):

* **judged text catalogue** (Home Depot by default, or any catalogue plus judgments file):
  *full corpus* — every product title indexed (tantivy BM25 + a dense index built with the
  configured encoder, FAISS HNSW as served), held-out queries retrieve from all of it; *rerank* —
  each held-out query's judged candidates only, ordered by each retriever's scores. Queries are
  split into train/test by the training pairs when they exist (so the reranker's training queries
  are never test queries), else by a seeded hash; the weighted fusion's weight is learned on the
  training queries. These are **real shopper queries with human grades**.
* **fashion** (the champion two-tower embedder, test split): **attribute-derived** queries
  (``"<gender> <colour> <article type>"``, see :mod:`skulens.evaluation.embedder`) text→image over an
  *image-only* index, BM25 over the titles and hybrid of the two; image→image (same article type
  and colour relevant). Not real queries: read them as a relative comparison only.

Metrics by ir-measures (pytrec_eval): nDCG@10, recall@100, MRR and the zero-useful-result rate
(share of queries without a relevant item in the top 10); "relevant" = grade >= ``relevant``.
Writes ``SKULENS_HOME/reports/eval/latest.json`` and ``latest.md``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skulens.evaluation.metrics import (
    Qrels,
    Run,
    bootstrap_mean,
    bootstrap_ratio,
    evaluate,
    paired_bootstrap,
    per_query_array,
    zero_useful_rate,
)
from skulens.settings import Settings


@dataclass(frozen=True)
class EvalConfig:
    max_test_queries: int | None = 1000
    max_train_queries: int | None = 4000
    depth: int = 100
    rerank_depth: int = 30
    # auto: what an index of a catalogue without photos serves (the text-encoder champion when
    # retrieval.text_encoder is champion and one passed its gate, else the packaged MiniLM).
    encoder: str = "auto"
    reranker: str | None = "champion"  # "champion", a model folder, or None
    noisy: bool = True
    test_fraction: float = 0.2
    # Index only the products judged for the sampled queries plus a seeded sample of the rest, up to
    # this many (None: the whole catalogue). For quick runs; published figures use the whole corpus.
    max_corpus: int | None = None
    seed: int = 0


# -- inputs ------------------------------------------------------------------------------------
def load_judgments(path: Path) -> pa.Table:
    """A judgments file: canonical (query, product_id, grade[, source]) as Parquet or CSV, or a Home
    Depot CSV (product_uid, product_title, search_term, relevance)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from skulens.data.contracts import CONTRACTS
    from skulens.data.homedepot import COLUMNS as HD_COLUMNS
    from skulens.data.homedepot import load_homedepot

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judgments file {path} does not exist")
    table = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    names = set(table.column_names)
    if set(HD_COLUMNS) <= names:
        return load_homedepot(path)[0]["judgments"]
    missing = {"query", "product_id", "grade"} - names
    if missing:
        raise ValueError(f"{path}: not a judgments file: columns {', '.join(sorted(missing))} missing (canonical: "
                         f"query, product_id, grade; Home Depot: {', '.join(HD_COLUMNS)})")
    table = table.select(["query", "product_id", "grade"]).cast(pa.schema(
        [("query", pa.string()), ("product_id", pa.string()), ("grade", pa.float64())]))
    if table.column("grade").null_count or table.column("query").null_count or table.column("product_id").null_count:
        raise ValueError(f"{path}: query, product_id and grade must all be set on every row")
    return CONTRACTS["judgments"].conform(table.append_column("source", pa.array([f"file:{path.name}"] *
                                                                                 table.num_rows)))


def to_rel(grade: float, source: str) -> int:
    """Integer relevance for ir-measures: Home Depot's 1-3 averaged grades to 0-6, others rounded."""
    if source.startswith("homedepot"):
        return max(0, round((grade - 1.0) * 3))
    return max(0, round(grade))


def query_splits(settings: Settings, queries: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """``train``/``test`` per query: the training pairs' split when a query has one, else a hash."""
    known: dict[str, str] = {}
    try:
        import pyarrow.dataset as ds

        from skulens.storage.layout import pairs_dir

        source = pairs_dir(settings) / "query_product"
        if source.is_dir():
            table = ds.dataset(source, partitioning="hive").to_table(columns=["query", "split"])
            known = dict(zip(table.column("query").to_pylist(), table.column("split").to_pylist(), strict=True))
    except FileNotFoundError:
        pass
    out = {}
    for q in queries:
        split = known.get(q)
        if split is None:
            bucket = int(hashlib.sha1(f"{seed}:{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            split = "test" if bucket < test_fraction else "train"
        out[q] = "test" if split == "test" else "train"  # validation queries train the fusion weight
    return out


_WORD = re.compile(r"\S+")


def noisy_query(text: str, rng: random.Random) -> str:
    """A seeded corruption, one per query: a typo (swap, drop or repeat a letter) in a word of 4+
    letters, or, for queries of 3+ words, one word dropped."""
    words = _WORD.findall(text)
    long = [i for i, w in enumerate(words) if len(w) >= 4]
    if len(words) >= 3 and (not long or rng.random() < 0.5):
        words.pop(rng.randrange(len(words)))
    elif long:
        i = rng.choice(long)
        w, j = words[i], rng.randrange(1, len(words[i]) - 1)
        kind = rng.choice(("swap", "drop", "repeat"))
        if kind == "swap" and w[j] == w[j + 1]:
            kind = "drop"  # swapping two equal letters changes nothing
        words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if kind == "swap" else
                    w[:j] + w[j + 1:] if kind == "drop" else w[:j] + w[j] + w[j:])
    return " ".join(words) or text


def noise_kind(clean: str, noisy: str) -> str:
    """``typo``, ``dropped`` (a word left out) or ``same`` (a query too short to corrupt)."""
    if len(_WORD.findall(noisy)) < len(_WORD.findall(clean)):
        return "dropped"
    return "typo" if noisy != clean else "same"


def query_variants(settings: Settings, queries: Sequence[str], titles: Iterable[str],
                   cfg: EvalConfig) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The texts each query is searched with: ``clean``; with ``cfg.noisy``, ``noisy`` (the seeded
    corruption as typed) and, when ``serving.spelling`` is on, both again through the speller the
    service builds from the same titles (``..., spelling as served``). Also each query's noise kind."""
    from skulens.serving.spelling import make_speller

    variants = {"clean": {q: q for q in queries}}
    if not cfg.noisy:
        return variants, {}
    noise = random.Random(cfg.seed + 1)
    variants["noisy"] = {q: noisy_query(q, noise) for q in queries}
    kinds = {q: noise_kind(q, variants["noisy"][q]) for q in queries}
    speller = make_speller(settings.serving.spelling, titles)
    if speller is not None:
        for name in ("clean", "noisy"):
            variants[f"{name}, spelling as served"] = {q: speller.correct(t)[0] for q, t in variants[name].items()}
    return variants, kinds


def noise_kind_scores(qrels: Qrels, run: Run, kinds: Mapping[str, str], relevant: int) -> dict[str, float]:
    """nDCG@10 over the queries whose noisy copy has a typo and over those with a dropped word
    (on clean variants too, so each kind's noisy / clean ratio compares the same queries)."""
    out = {}
    for kind in ("typo", "dropped"):
        subset = [q for q in run if kinds.get(q) == kind]
        if subset:
            out[f"nDCG@10 {kind}"] = score_run({q: qrels[q] for q in subset}, {q: run[q] for q in subset},
                                               relevant)["nDCG@10"]
    return out


# -- metrics -----------------------------------------------------------------------------------
def ndcg_intervals(ndcg: Mapping[str, np.ndarray], bases: Mapping[str, str], baseline: str = "bm25"
                   ) -> dict[str, dict[str, list[float]]]:
    """95% bootstrap intervals over the held-out queries for each retriever's nDCG@10: its mean,
    its ratio to ``baseline`` (the "x BM25" figure) and its gain over the stage it builds on
    (``bases[name]``: the reranker over the fused order it reranks, the rescorer over its fusion),
    all paired: every resample draws the same queries for both sides. Each value is
    ``[estimate, low, high]``."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, values in ndcg.items():
        row = {"nDCG@10": _rounded(bootstrap_mean(values))}
        if name != baseline and baseline in ndcg and ndcg[baseline].mean() > 0:
            row[f"x {baseline}"] = _rounded(bootstrap_ratio(values, ndcg[baseline]))
        base = bases.get(name)
        if base in ndcg:
            row["gain"] = _rounded(paired_bootstrap(values, ndcg[base]))
            row["gain_over"] = base  # type: ignore[assignment]
        out[name] = row
    return out


def _rounded(triple: tuple[float, float, float]) -> list[float]:
    return [round(v, 4) for v in triple]


def score_run(qrels: Qrels, run: Run, relevant: int) -> dict[str, float]:
    """nDCG@10, recall@100, MRR and the zero-useful rate, with judged@10 beside them: the share of
    the top 10 that the judgments grade at all (an unjudged result counts as irrelevant, so a low
    judged@10 means the figure understates the ranking)."""
    metrics = evaluate(qrels, run, ["nDCG@10", f"R(rel={relevant})@100", f"RR(rel={relevant})", "Judged@10"])
    return {"nDCG@10": metrics["nDCG@10"], "recall@100": metrics[f"R(rel={relevant})@100"],
            "MRR": metrics[f"RR(rel={relevant})"], "zero_useful@10": zero_useful_rate(qrels, run, 10, relevant),
            "judged@10": metrics["Judged@10"]}


def _as_run(query_ids: Sequence[str], results: Sequence[Sequence[tuple[str, float]]]) -> Run:
    """Rank-order runs (a reranked list mixes score scales, so the order is what counts)."""
    return {q: {pid: float(len(hits) - i) for i, (pid, _) in enumerate(hits)}
            for q, hits in zip(query_ids, results, strict=True)}


def _progress(message: str) -> None:
    print(f"[eval] {message}", flush=True)


# -- judged text catalogue -----------------------------------------------------------------------
Scorer = Callable[[str, list[str]], np.ndarray]


def reranker_scorer(settings: Settings, choice: str | None) -> tuple[Scorer | None, str]:
    """(scorer, description) of the configured cross-encoder, or (None, why not)."""
    if choice is None:
        return None, "no reranker configured"
    from skulens.models.reranker import CrossEncoderReranker

    if choice == "champion":  # what the service runs: the exported file that passed parity
        from skulens.serving.loader import champion_reranker

        scorer, label = champion_reranker(settings)
        return scorer, (f"{label} (champion)" if scorer is not None else label)
    return CrossEncoderReranker(choice).score, choice


def evaluate_judged(settings: Settings, products: pa.Table, judgments: pa.Table, cfg: EvalConfig,
                    rerank: Callable[[str, list[str]], np.ndarray] | None = None) -> dict[str, Any]:
    """Full-corpus and rerank-setting metrics of every retriever on a judged text catalogue."""
    from skulens.evaluation.ranking import UNJUDGED_REL, learn_adaptive, learn_rescorer, learn_weight
    from skulens.retrieval.filters import FilterColumns
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.retrieval.retrievers import (
        DenseRetriever,
        HybridRetriever,
        LexicalRetriever,
        PolicyRetriever,
        RerankedRetriever,
        SearchQuery,
    )
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig

    started = time.perf_counter()
    ids = products.column("product_id").to_pylist()
    titles = dict(zip(ids, products.column("title").to_pylist(), strict=True))
    known = set(ids)
    rows = [r for r in judgments.to_pylist() if r["product_id"] in known]
    if not rows:
        raise ValueError("no judgment names a product of the catalogue")
    qrels: Qrels = {}
    for r in rows:
        qrels.setdefault(r["query"], {})[r["product_id"]] = to_rel(r["grade"], r["source"])
    relevant = 4 if rows[0]["source"].startswith("homedepot") else 1
    splits = query_splits(settings, sorted(qrels), cfg.test_fraction, cfg.seed)
    rng = random.Random(cfg.seed)

    def sample(split: str, limit: int | None) -> list[str]:
        chosen = sorted(q for q, s in splits.items() if s == split and any(g >= relevant for g in qrels[q].values()))
        return sorted(rng.sample(chosen, limit)) if limit is not None and len(chosen) > limit else chosen

    test, train = sample("test", cfg.max_test_queries), sample("train", cfg.max_train_queries)
    if not test:
        raise ValueError("no held-out query with a relevant product: too few judgments to evaluate")
    if cfg.max_corpus is not None and len(ids) > cfg.max_corpus:
        judged = sorted({p for q in test + train for p in qrels[q]})
        others = sorted(set(ids) - set(judged))
        fill = rng.sample(others, max(0, min(len(others), cfg.max_corpus - len(judged))))
        products = products.filter(pc.is_in(products.column("product_id"), pa.array(judged + fill)))
        ids = products.column("product_id").to_pylist()

    _progress(f"lexical index over {len(ids):,} titles")
    lexical = BM25Index.build(products, LexicalConfig.from_settings(settings.retrieval))
    encoder, encoder_label = _dense_encoder(settings, cfg.encoder)
    _progress(f"encoding {len(ids):,} titles with {encoder_label}")
    vectors = encoder.encode_texts([titles[i] for i in ids])
    paths = products.column("category_path").to_pylist()
    vc = VectorIndexConfig(**settings.retrieval.vector.model_dump())
    store = ShardedVectorIndex.build(ids, vectors, [p[0] if p else None for p in paths], vc,
                                     model_version=encoder_label, columns=FilterColumns.from_products(products))
    dense, bm25 = DenseRetriever(store, encoder), LexicalRetriever(lexical)

    _progress(f"learning the fusion weight on {len(train):,} training queries")
    train_q = [SearchQuery(text=q) for q in train]
    train_dense = dict(zip(train, dense.search_batch(train_q, cfg.depth), strict=True))
    train_lexical = dict(zip(train, bm25.search_batch(train_q, cfg.depth), strict=True))
    weight, tried = learn_weight(train_dense, train_lexical, {q: qrels[q] for q in train})
    adaptive, adaptive_measured = learn_adaptive({q: q for q in train}, train_dense, train_lexical,
                                                 {q: qrels[q] for q in train})
    retrievers: dict[str, Any] = {
        "bm25": bm25, "dense": dense,
        "hybrid_rrf": HybridRetriever(dense, bm25, "rrf", depth=cfg.depth),
        "hybrid_weighted": HybridRetriever(dense, bm25, "weighted", weight=weight, depth=cfg.depth),
    }
    if adaptive is not None:
        retrievers["hybrid_adaptive"] = PolicyRetriever(
            dense, bm25, RankingPolicy(fusion_weight=weight, adaptive=adaptive), cfg.depth, "hybrid_adaptive")
    fused_name = "hybrid_adaptive" if adaptive is not None else "hybrid_weighted"
    # The rescorer of the fused head, learned and gated as build_index learns it (unjudged
    # candidates of these sparse human judgments at UNJUDGED_REL; attribute-style exhaustive
    # grades at 0).
    fused_policy = RankingPolicy(fusion_weight=weight, adaptive=adaptive)
    train_fused = {q: fused_policy.fuse(train_dense[q], train_lexical[q], q) for q in train}
    _progress(f"learning the rescorer on {len(train):,} training queries")
    rescorer, rescore_measured = learn_rescorer({q: q for q in train}, {q: qrels[q] for q in train}, train_fused,
                                                train_dense, train_lexical, titles, depth=cfg.depth,
                                                unjudged_rel=UNJUDGED_REL if relevant > 1 else 0)
    bases = {"dense": "bm25", "hybrid_rrf": "bm25", "hybrid_weighted": "bm25", "hybrid_adaptive": "hybrid_weighted"}
    if rescorer is not None:
        bases["hybrid_rescored"] = fused_name
        retrievers["hybrid_rescored"] = PolicyRetriever(
            dense, bm25, RankingPolicy(fusion_weight=weight, adaptive=adaptive, rescorer=rescorer), cfg.depth,
            "hybrid_rescored", titles=titles)
        fused_name = "hybrid_rescored"
    blend, blend_scores, blend_queries = None, {}, None
    if rerank is not None:
        # The reranker's share is learned like the fusion weight, on a few hundred training queries,
        # preferably ones the rescorer was not fitted on (there the rescored order looks better
        # than it is, and the blend would lean towards it).
        fitted = set(train)
        # (Not with max_corpus: the corpus then holds only the sampled queries' judged products.)
        spare = [q for q in sample("train", None) if q not in fitted] if cfg.max_corpus is None else []
        tune = (spare if len(spare) >= 300 else train)[:300]
        blend_queries = (f"{len(tune)} training queries " +
                         ("the rescorer was not fitted on" if len(spare) >= 300 else "of the fusion and rescorer"))
        tune_q = [SearchQuery(text=q) for q in tune]
        _progress(f"learning the reranker blend on {len(tune)} training queries")
        base = retrievers[fused_name].search_batch(tune_q, cfg.rerank_depth)
        scored = RerankedRetriever(retrievers[fused_name], rerank, titles, depth=cfg.rerank_depth)
        reranked = [scored._rerank(q, hits, cfg.rerank_depth) for q, hits in zip(tune_q, base, strict=True)]
        blend, blend_scores = learn_weight(dict(zip(tune, reranked, strict=True)), dict(zip(tune, base, strict=True)),
                                           {q: qrels[q] for q in tune})
        bases[f"{fused_name}+rerank"] = fused_name
        retrievers[f"{fused_name}+rerank"] = RerankedRetriever(retrievers[fused_name], rerank, titles,
                                                               depth=cfg.rerank_depth, blend=blend)
    variants, kinds = query_variants(settings, test, titles.values(), cfg)
    test_qrels = {q: qrels[q] for q in test}
    full: dict[str, dict[str, Any]] = {}
    ndcg_by_query: dict[str, dict[str, np.ndarray]] = {}
    for variant, texts in variants.items():
        queries = [SearchQuery(text=texts[q]) for q in test]
        for name, retriever in retrievers.items():
            _progress(f"full corpus, {variant} queries: {name}")
            t = time.perf_counter()
            run = _as_run(test, retriever.search_batch(queries, cfg.depth))
            seconds = time.perf_counter() - t
            full.setdefault(variant, {})[name] = {**score_run(test_qrels, run, relevant),
                                                  **noise_kind_scores(test_qrels, run, kinds, relevant),
                                                  "ms_per_query": round(1000 * seconds / len(test), 2)}
            ndcg_by_query.setdefault(variant, {})[name] = per_query_array(test_qrels, run, "nDCG@10", test)

    _progress("rerank setting (each query's judged candidates)")
    rerank_setting = _rerank_setting(test, qrels, titles, lexical, encoder, store, weight, rerank, relevant)
    return {
        "queries": {"test": len(test), "train_for_fusion": len(train), "kind": "real queries with graded judgments"
                    if rows[0]["source"].startswith("homedepot") else f"judgments from {rows[0]['source']}",
                    "examples_noisy": dict(list(variants.get("noisy", {}).items())[:5])},
        "corpus": {"products": len(ids), "encoder": encoder_label, "vector_index": store.manifest.get("config", {})
                   .get("kind"), "index_recall@10": store.manifest.get("recall@10")},
        "relevant_grade": relevant, "fusion_weight": weight, "fusion_weight_scores": tried,
        "adaptive_fusion": adaptive_measured, "rescore": rescore_measured,
        "rerank_depth": cfg.rerank_depth, "rerank_blend": blend, "rerank_blend_scores": blend_scores,
        "rerank_blend_learned_on": blend_queries,
        "full_corpus": full, "rerank_setting": rerank_setting,
        "intervals": {variant: ndcg_intervals(per_q, bases) for variant, per_q in ndcg_by_query.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _dense_encoder(settings: Settings, name: str) -> tuple[Any, str]:
    """(encoder, label): ``text_encoder`` is the registry's text-encoder champion (what an index of a
    catalogue without photos serves), ``auto`` that champion when one exists and
    ``retrieval.text_encoder`` is ``champion``, else ``minilm``; any other name a registered encoder."""
    from skulens.retrieval.encoders import make_encoder
    from skulens.tracking.registry import served_text_encoder, text_encoder_champion, version_artifacts

    if name == "auto":
        champion = text_encoder_champion(settings)
        return served_text_encoder(champion) if champion is not None else (make_encoder("minilm"), "minilm")
    if name == "text_encoder":
        return served_text_encoder(version_artifacts(settings, "text_encoder"))
    return make_encoder(name), name


def _rerank_setting(test: list[str], qrels: Qrels, titles: Mapping[str, str], lexical: Any, encoder: Any,
                    store: Any, weight: float, rerank: Callable[[str, list[str]], np.ndarray] | None,
                    relevant: int) -> dict[str, dict[str, float]]:
    """Each retriever orders each query's judged candidates (BM25 statistics of the whole corpus;
    the candidates' title vectors as the dense index holds them)."""
    from skulens.retrieval.fusion import rrf, weighted

    runs: dict[str, Run] = {name: {} for name in ("bm25", "dense", "hybrid_rrf", "hybrid_weighted")}
    if rerank is not None:
        runs["cross_encoder"] = {}
    qvecs = encoder.encode_texts(test)
    for q, qv in zip(test, qvecs, strict=True):
        cands = sorted(qrels[q])
        lex = lexical.search(q, k=len(cands), only=cands)
        dv = store.vectors(cands) @ qv
        dense = sorted(zip(cands, dv.tolist(), strict=True), key=lambda kv: -kv[1])
        lex_scores = dict(lex)
        runs["bm25"][q] = {c: lex_scores.get(c, 0.0) for c in cands}
        runs["dense"][q] = dict(dense)
        runs["hybrid_rrf"][q] = dict(rrf([dense, lex]))
        runs["hybrid_weighted"][q] = dict(weighted(dense, lex, weight))
        if rerank is not None:
            runs["cross_encoder"][q] = dict(zip(cands, map(float, rerank(q, [titles[c] for c in cands])), strict=True))
    test_qrels = {q: qrels[q] for q in test}
    return {name: score_run(test_qrels, run, relevant) for name, run in runs.items()}


# -- fashion -----------------------------------------------------------------------------------
def evaluate_fashion(settings: Settings, cfg: EvalConfig, catalog: str = "fashion") -> dict[str, Any]:
    """Attribute-derived text→image and image→image on the test split with the champion embedder."""
    from skulens.data.catalog import read_table
    from skulens.data.pairs import load_split
    from skulens.evaluation.embedder import attribute_queries
    from skulens.evaluation.ranking import learn_weight
    from skulens.models.two_tower import TwoTower
    from skulens.retrieval.encoders import TwoTowerEncoder
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.retrievers import DenseRetriever, HybridRetriever, LexicalRetriever, SearchQuery
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig
    from skulens.storage.layout import pairs_dir
    from skulens.tracking.registry import embedder_files, version_artifacts

    started = time.perf_counter()
    champion = version_artifacts(settings, "embedder")
    bundle, image_onnx = embedder_files(champion)
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    encoder = TwoTowerEncoder(tower=tower, image_onnx=image_onnx)
    products = read_table(settings, catalog, "products")
    out: dict[str, Any] = {"model_version": f"{champion['name']}/{champion['version']}",
                           "queries": "attribute-derived (<gender> <colour> <article type>), not real queries"}
    splits, loaded = {}, {}
    for split in ("val", "test"):
        data = loaded[split] = load_split(pairs_dir(settings), products, split)
        ids = list(data.product_ids)
        _progress(f"fashion {split}: encoding {len(ids):,} photos")
        vecs, ok = encoder.mapper.images(list(data.images))
        ids, vecs = [p for p, good in zip(ids, ok, strict=True) if good], vecs[ok]
        table = products.filter(pc.is_in(products.column("product_id"), pa.array(ids)))
        store = ShardedVectorIndex.build(ids, vecs, [None] * len(ids), VectorIndexConfig(
            **{**settings.retrieval.vector.model_dump(), "min_shard_size": 1}), model_version=out["model_version"])
        lexical = BM25Index.build(table, LexicalConfig(boosts={"title": 1.0}))
        texts, qrels = attribute_queries(data, max_queries=cfg.max_test_queries, seed=cfg.seed)
        subset = set(ids)
        qrels = {q: {p: g for p, g in judged.items() if p in subset} for q, judged in qrels.items()}
        splits[split] = (ids, vecs, store, lexical, texts, qrels)
    _, _, v_store, v_lex, v_texts, v_qrels = splits["val"]
    v_queries = [SearchQuery(text=t) for t in v_texts]
    qids = [str(i) for i in range(len(v_texts))]
    weight, _ = learn_weight(dict(zip(qids, DenseRetriever(v_store, encoder).search_batch(v_queries, cfg.depth),
                                      strict=True)),
                             dict(zip(qids, LexicalRetriever(v_lex).search_batch(v_queries, cfg.depth), strict=True)),
                             v_qrels)
    ids, vecs, store, lexical, texts, qrels = splits["test"]
    dense, bm25 = DenseRetriever(store, encoder), LexicalRetriever(lexical)
    retrievers = {"bm25 (titles)": bm25, "dense (image-only index)": dense,
                  "hybrid_rrf": HybridRetriever(dense, bm25, "rrf", depth=cfg.depth),
                  "hybrid_weighted": HybridRetriever(dense, bm25, "weighted", weight=weight, depth=cfg.depth)}
    qids = [str(i) for i in range(len(texts))]
    variants = {"clean": texts}
    if cfg.noisy:
        noise = random.Random(cfg.seed + 1)
        variants["noisy"] = [noisy_query(t, noise) for t in texts]
    t2i: dict[str, dict[str, Any]] = {}
    for variant, qtexts in variants.items():
        queries = [SearchQuery(text=t) for t in qtexts]
        for name, retriever in retrievers.items():
            t2i.setdefault(variant, {})[name] = score_run(qrels, _as_run(qids, retriever.search_batch(
                queries, cfg.depth)), 3)
    attrs = dict(zip(loaded["test"].product_ids, loaded["test"].attributes, strict=True))
    t2i.update(_unseen_query_forms(loaded["test"], ids, texts, qrels, retrievers, cfg))
    # image -> image: every test photo queries the others; relevant = same article type and colour.
    key = {p: (attrs[p].get("article_type", "").lower(), attrs[p].get("colour", "").lower()) for p in ids}
    by_key: dict[tuple[str, str], list[str]] = {}
    for p in ids:
        by_key.setdefault(key[p], []).append(p)
    i2i_qrels = {p: {o: 1 for o in by_key[key[p]] if o != p} for p in ids}
    results = store.search(vecs, k=cfg.depth + 1)
    i2i_run = _as_run(ids, [[h for h in hits if h[0] != p][:cfg.depth] for p, hits in zip(ids, results, strict=True)])
    out.update(test_products_with_photo=len(ids), test_queries=len(texts), fusion_weight=weight,
               text_to_image=t2i, image_to_image={"dense (image tower)": {
                   **score_run(i2i_qrels, i2i_run, 1), "P@10": evaluate(i2i_qrels, i2i_run, ["P@10"])["P@10"]}},
               seconds=round(time.perf_counter() - started, 1))
    return out


# -- the served pipeline -----------------------------------------------------------------------
def served_rankings(pipeline: Any, texts: Sequence[str], k: int = 10) -> list[list[str]]:
    """The product ids the served pipeline returns for each query, in order (no time budget, so
    this is what the service answers when it is on time)."""
    from skulens.serving.pipeline import SearchRequest

    return [[item["product_id"] for item in pipeline.search(SearchRequest.parse({"text": t, "k": k},
                                                                                 pipeline.config)).items]
            for t in texts]


def load_served_for_eval(settings: Settings, catalog: str) -> Any:
    """The published index of ``catalog`` as the service loads it (learned ranking, champion
    reranker's served file, rules, spelling, the cascade's rules tier), without time limits."""
    from skulens.serving.llm.cascade import build_cascade
    from skulens.serving.loader import load_served
    from skulens.serving.pipeline import ServingConfig

    config = ServingConfig.from_settings(settings.serving).__dict__ | {
        "total_budget_ms": 3_600_000.0, "stage_timeout_ms": {}, "recovery_budget_ms": 0.0, "shed_rerank_above": None}
    served = load_served(settings, catalog, ServingConfig(**config))
    served.pipeline.cascade = build_cascade(settings, served.vocabulary, start_local=False)
    return served.pipeline


def evaluate_served(settings: Settings, catalog: str, cfg: EvalConfig) -> dict[str, Any]:
    """Held-out queries (the test side of the split the ranking was learned on) through the served
    pipeline of ``catalog``: what shoppers get, scored."""
    from skulens.data.catalog import read_table
    from skulens.evaluation.ranking import ranking_queries

    started = time.perf_counter()
    pipeline = load_served_for_eval(settings, catalog)
    found = ranking_queries(settings, catalog, read_table(settings, catalog, "products"), split="test",
                            limit=cfg.max_test_queries or 1000, seed=cfg.seed)
    if found is None:
        return {"skipped": f"{catalog} has no judgments and no attribute queries to evaluate with"}
    texts, qrels, source = found
    qids = list(texts)
    _progress(f"served pipeline of {catalog}: {len(qids)} held-out queries")
    relevant = max(max(g.values(), default=1) for g in qrels.values())
    held_out = {q: qrels[q] for q in qids}
    # The service spells and rewrites each query itself: the noisy copies go in as typed.
    variants = {"clean": texts}
    if cfg.noisy:
        noise = random.Random(cfg.seed + 1)
        variants["noisy"] = {q: noisy_query(texts[q], noise) for q in qids}
    kinds = {q: noise_kind(texts[q], variants["noisy"][q]) for q in qids} if cfg.noisy else {}
    metrics, intervals = {}, {}
    for variant, typed in variants.items():
        rankings = served_rankings(pipeline, [typed[q] for q in qids], k=10)
        run = {q: {pid: float(10 - i) for i, pid in enumerate(ids)} for q, ids in zip(qids, rankings, strict=True)}
        metrics[variant] = {**score_run(held_out, run, relevant), **noise_kind_scores(held_out, run, kinds, relevant)}
        # The baseline on the very same queries, from the served index's own BM25, reading each query
        # as the service spells it (so the ratio measures the ranking, not the speller): paired.
        spelled = {q: pipeline.spell.correct(typed[q])[0] if pipeline.spell is not None else typed[q] for q in qids}
        bm25 = _as_run(qids, [pipeline.lexical.search(spelled[q], k=10) for q in qids])
        ndcg = {name: per_query_array(held_out, one_run, "nDCG@10", qids) for name, one_run in
                (("served", run), ("bm25", bm25))}
        intervals[variant] = ndcg_intervals(ndcg, {"served": "bm25"})
    return {"catalog": catalog, "queries": source.replace("training", "held-out"), "versions": pipeline.versions,
            "metrics": metrics["clean"], "metrics_noisy": metrics.get("noisy"), "intervals": intervals,
            "seconds": round(time.perf_counter() - started, 1)}


def _unseen_query_forms(test: Any, ids: list[str], texts: list[str], qrels: Qrels, retrievers: Mapping[str, Any],
                        cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Text→image with queries in forms training never used: each held-out product's own display
    name (graded 3 for its own photo, 1 for photos of the same type and colour), and the attribute
    queries rephrased by a template disjoint from training's (``<colour> <type> for <gender>``)."""
    from skulens.retrieval.retrievers import SearchQuery

    indexed = set(ids)
    titles = dict(zip(test.product_ids, test.titles, strict=True))
    attrs = {p: a for p, a in zip(test.product_ids, test.attributes, strict=True) if p in indexed}

    def kind(pid: str) -> tuple[str, str]:
        return (attrs[pid].get("article_type", "").lower(), attrs[pid].get("colour", "").lower())

    by_kind: dict[tuple[str, str], list[str]] = {}
    for pid in attrs:
        by_kind.setdefault(kind(pid), []).append(pid)
    owners = sorted(attrs)[: cfg.max_test_queries or None]
    name_qrels = {pid: {**{o: 1 for o in by_kind[kind(pid)]}, pid: 3} for pid in owners}
    rephrased = []
    for text in texts:  # "<gender> <colour> <article type>" -> "<colour> <article type> for <gender>"
        gender, _, rest = text.partition(" ")
        rephrased.append(f"{rest} for {gender}")
    out: dict[str, dict[str, Any]] = {"display_names": {}, "other_template": {}}
    for name, retriever in retrievers.items():
        names = retriever.search_batch([SearchQuery(text=titles[p]) for p in owners], cfg.depth)
        out["display_names"][name] = score_run(name_qrels, _as_run(owners, names), 3)
        other = retriever.search_batch([SearchQuery(text=t) for t in rephrased], cfg.depth)
        out["other_template"][name] = score_run(qrels, _as_run([str(i) for i in range(len(texts))], other), 3)
    return out


# -- report ------------------------------------------------------------------------------------
def run_eval(settings: Settings, cfg: EvalConfig | None = None, *, catalog: str = "homedepot",
             judgments_path: Path | None = None, fashion: str | None = "fashion") -> dict[str, Any]:
    """Evaluate and write ``reports/eval/latest.json`` and ``latest.md``; return the report."""
    from skulens.data.catalog import read_table

    cfg = cfg or EvalConfig()
    products = read_table(settings, catalog, "products")
    judgments = load_judgments(judgments_path) if judgments_path else read_table(settings, catalog, "judgments")
    scorer, reranker = reranker_scorer(settings, cfg.reranker)
    report: dict[str, Any] = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "config": asdict(cfg),
                              "reranker": reranker, "judged": {"catalog": catalog,
                                                               "judgments": str(judgments_path or "catalogue")}}
    report["judged"].update(evaluate_judged(settings, products, judgments, cfg, scorer))
    if fashion:
        try:
            report["fashion"] = evaluate_fashion(settings, cfg, fashion)
        except (LookupError, FileNotFoundError) as exc:
            report["fashion"] = {"skipped": str(exc)}
    report["served"] = {}
    for name in dict.fromkeys([settings.retrieval.catalog, catalog]):
        try:
            report["served"][name] = evaluate_served(settings, name, cfg)
        except (LookupError, FileNotFoundError) as exc:
            report["served"][name] = {"skipped": f"no served index: {exc}"}
    report["written_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    folder = settings.home / "reports" / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (folder / "latest.md").write_text(markdown(report), encoding="utf-8")
    return report


def _table(title: str, rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    cols = ["nDCG@10", "recall@100", "MRR", "zero_useful@10"]
    extra = [c for c in ("judged@10", "P@10", "nDCG@10 typo", "nDCG@10 dropped", "ms_per_query")
             if any(c in r for r in rows.values())]
    lines = [f"**{title}**", "", "| retriever | " + " | ".join(cols + extra) + " |",
             "|---|" + "---|" * len(cols + extra)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" if c in r and c != "ms_per_query" else
                                                 f"{r.get(c, float('nan')):.2f}" for c in cols + extra) + " |")
    return [*lines, ""]


def _interval_table(title: str, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    def cell(triple: Sequence[float] | None, signed: bool = False) -> str:
        if not triple:
            return ""
        fmt = "{:+.4f}" if signed else "{:.4f}"
        return f"{fmt.format(triple[0])} [{fmt.format(triple[1])}, {fmt.format(triple[2])}]"

    lines = [f"**{title}**", "", "| retriever | nDCG@10 | x BM25 | gain over the stage below |", "|---|---|---|---|"]
    for name, r in rows.items():
        gain = f"{cell(r.get('gain'), signed=True)} over {r['gain_over']}" if r.get("gain") else ""
        lines.append(f"| {name} | {cell(r['nDCG@10'])} | {cell(r.get('x bm25'))} | {gain} |")
    return [*lines, ""]


def markdown(report: Mapping[str, Any]) -> str:
    """The Markdown form of an eval report."""
    judged = report["judged"]
    lines = ["# skulens eval", "", f"Written {report['written_at']}. Reranker: {report['reranker']}.", "",
             f"## {judged['catalog']}: {judged['queries']['kind']}", "",
             f"{judged['queries']['test']:,} held-out queries over {judged['corpus']['products']:,} products; dense "
             f"encoder {judged['corpus']['encoder']} ({judged['corpus']['vector_index']}, index recall@10 "
             f"{judged['corpus']['index_recall@10']}); weighted fusion weight (dense share) "
             f"{judged['fusion_weight']} learned on {judged['queries']['train_for_fusion']:,} training queries; "
             f"rescorer (LambdaMART over the fused top {judged.get('rescore', {}).get('depth')}, "
             f"`hybrid_rescored`) kept: {judged.get('rescore', {}).get('kept', 'not learned')}; "
             f"reranker over the top {judged['rerank_depth']} with blend (reranker share) {judged['rerank_blend']}"
             f"{' learned on ' + judged['rerank_blend_learned_on'] if judged.get('rerank_blend_learned_on') else ''}; "
             f"relevant = grade >= {judged['relevant_grade']}.", ""]
    for variant, rows in judged["full_corpus"].items():
        lines += _table(f"Full corpus, {variant} queries", rows)
        if judged.get("intervals", {}).get(variant):
            lines += _interval_table(f"Full corpus, {variant} queries: 95% bootstrap intervals over the queries",
                                     judged["intervals"][variant])
    lines += _table("Rerank setting (each query's judged candidates)", judged["rerank_setting"])
    fashion = report.get("fashion")
    if fashion and "skipped" not in fashion:
        lines += ["## fashion: attribute-derived queries (not real queries)", "",
                  f"Embedder {fashion['model_version']}; {fashion['test_queries']} queries over "
                  f"{fashion['test_products_with_photo']:,} test photos; fusion weight {fashion['fusion_weight']} "
                  "learned on the validation split. BM25 reads titles, which name colour and article type, so "
                  "it is strong here by construction.", ""]
        for variant, rows in fashion["text_to_image"].items():
            lines += _table(f"Text → image, {variant} queries", rows)
        lines += _table("Image → image (same article type and colour)", fashion["image_to_image"])
    elif fashion:
        lines += ["## fashion", "", f"Skipped: {fashion['skipped']}", ""]
    for catalog, served in (report.get("served") or {}).items():
        if "skipped" in served:
            lines += [f"## served: {catalog}", "", f"Skipped: {served['skipped']}", ""]
            continue
        lines += [f"## served: {catalog} (the published index through the service's own pipeline)", "",
                  f"{served['queries']}; index {served['versions'].get('index')}, ranking "
                  f"{served['versions'].get('ranking')}; reranker {served['versions'].get('reranker')}.", ""]
        rows = {"served, clean queries": served["metrics"]}
        if served.get("metrics_noisy"):
            rows["served, noisy queries (as typed)"] = served["metrics_noisy"]
        lines += _table("Served pipeline, held-out queries", rows)
        for variant, intervals in (served.get("intervals") or {}).items():
            lines += _interval_table(f"Served pipeline, {variant} queries, against the served index's BM25 on the "
                                     "same queries as the service spells them: 95% bootstrap intervals", intervals)
    return "\n".join(lines)
