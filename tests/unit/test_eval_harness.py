"""The eval harness' inputs: judgments files in both formats, query splits, noisy queries, report."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.evaluation.harness import (
    EvalConfig,
    load_judgments,
    markdown,
    ndcg_intervals,
    noise_kind,
    noisy_query,
    query_splits,
    query_variants,
    score_run,
    to_rel,
)
from skulens.evaluation.metrics import paired_bootstrap


def test_judgments_load_from_canonical_parquet_csv_and_home_depot_csv(tmp_path):
    pq.write_table(pa.table({"query": ["red shirt"], "product_id": ["p1"], "grade": [2]}), tmp_path / "j.parquet")
    canonical = load_judgments(tmp_path / "j.parquet")
    assert canonical.to_pylist() == [{"query": "red shirt", "product_id": "p1", "grade": 2.0,
                                      "source": "file:j.parquet"}]
    (tmp_path / "j.csv").write_text("query,product_id,grade\nblue hat,7,1\n")
    assert load_judgments(tmp_path / "j.csv").column("product_id").to_pylist() == ["7"]
    (tmp_path / "hd.csv").write_text("id,product_uid,product_title,search_term,relevance\n"
                                     "1,100001,Angle bracket,angle bracket,3\n")
    hd = load_judgments(tmp_path / "hd.csv")
    assert hd.column("source").to_pylist() == ["homedepot:human"] and to_rel(3.0, "homedepot:human") == 6
    (tmp_path / "bad.csv").write_text("q,p\na,b\n")
    with pytest.raises(ValueError, match="columns grade, product_id, query missing"):
        load_judgments(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        load_judgments(tmp_path / "nope.csv")


def test_query_splits_are_stable_without_training_pairs(settings):
    queries = [f"query {i}" for i in range(400)]
    first = query_splits(settings, queries, 0.2, seed=0)
    assert first == query_splits(settings, list(reversed(queries)), 0.2, seed=0)
    assert 0.1 < sum(s == "test" for s in first.values()) / len(queries) < 0.3


def test_noisy_queries_change_one_thing_and_are_seeded():
    rng = random.Random(1)
    noisy = [noisy_query("cordless hammer drill", rng) for _ in range(50)]
    assert all(n != "cordless hammer drill" for n in noisy)
    assert len({n for n in noisy if len(n.split()) == 2}) > 0  # some dropped a word
    assert noisy == [noisy_query("cordless hammer drill", r) for r in [random.Random(1)] for _ in range(50)]
    assert noisy_query("tv", random.Random(0)) == "tv"  # nothing to corrupt


def test_noisy_variants_go_through_the_served_speller(settings):
    titles = ["Cordless Hammer Drill Kit", "Sliding Screen Door Kit", "Ceramic Floor Tile", "Garden Hose Reel",
              "Outdoor Wall Lantern", "Cordless Hammer Drill"]
    queries = ["cordless hammer drill", "sliding screen door", "ceramic floor tile", "garden hose reel",
               "outdoor wall lantern", "hammer drill", "screen door", "floor tile", "wall lantern"]
    variants, kinds = query_variants(settings, queries, titles, EvalConfig(seed=3))
    assert set(variants) == {"clean", "noisy", "clean, spelling as served", "noisy, spelling as served"}
    assert variants["clean, spelling as served"] == variants["clean"]  # nothing to correct
    typos = [q for q in queries if kinds[q] == "typo"]
    assert typos and set(kinds.values()) <= {"typo", "dropped", "same"}
    assert all(variants["noisy"][q] != q for q in typos)
    # Every typo here is one edit in a catalogue word: the served speller restores each of them.
    assert all(variants["noisy, spelling as served"][q] == q for q in typos)
    assert noise_kind("hammer drill", "drill") == "dropped" and noise_kind("tv", "tv") == "same"
    off = settings.model_copy(update={"serving": settings.serving.model_copy(update={"spelling": "off"})})
    assert set(query_variants(off, queries, titles, EvalConfig())[0]) == {"clean", "noisy"}


def test_scores_and_markdown_of_a_report():
    qrels = {"q1": {"a": 6, "b": 0}, "q2": {"c": 5}}
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"x": 1.0}}
    scores = score_run(qrels, run, relevant=4)
    assert scores["MRR"] == pytest.approx(0.5) and scores["zero_useful@10"] == pytest.approx(0.5)
    row = {**scores, "ms_per_query": 1.0}
    report = {"written_at": "now", "reranker": "none", "judged": {
        "catalog": "shop", "queries": {"kind": "real", "test": 2, "train_for_fusion": 3},
        "corpus": {"products": 3, "encoder": "minilm", "vector_index": "hnsw", "index_recall@10": 1.0},
        "fusion_weight": 0.3, "rerank_depth": 10, "rerank_blend": None, "relevant_grade": 4,
        "full_corpus": {"clean": {"bm25": row}}, "rerank_setting": {"bm25": scores}}}
    text = markdown(report)
    assert "**Full corpus, clean queries**" in text and f"| bm25 | {scores['nDCG@10']:.4f} |" in text
    assert "## fashion" not in text  # no fashion section without a fashion report


def test_intervals_are_paired_and_say_whether_a_ratio_clears_its_goal():
    rng = np.random.default_rng(0)
    bm25 = rng.uniform(0.1, 0.9, 400)  # hard and easy queries: the spread a paired interval cancels
    better = np.clip(bm25 * 1.3, 0, 1)
    same = bm25 + rng.normal(0, 0.01, 400)
    rows = ndcg_intervals({"bm25": bm25, "better": better, "same": same, "better+rerank": better + 0.01},
                          {"better+rerank": "better"})
    ratio, low, high = rows["better"]["x bm25"]
    assert low > 1.15 and low <= ratio <= high  # clears a 1.15x goal on its lower bound
    assert rows["same"]["x bm25"][1] < 1.0 < rows["same"]["x bm25"][2]  # no difference: 1 inside
    assert rows["better+rerank"]["gain"] == pytest.approx([0.01, 0.01, 0.01], abs=1e-4)
    assert rows["better+rerank"]["gain_over"] == "better" and "gain" not in rows["better"]
    assert "x bm25" not in rows["bm25"]
    # Paired: the queries' own spread cancels, so equal rankers give a narrow ratio interval (each
    # side resampled on its own, the interval would be about 0.09 wide).
    same_low, same_high = rows["same"]["x bm25"][1:]
    assert same_high - same_low < 0.01
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(np.ones(3), np.ones(4))


def test_markdown_shows_the_intervals():
    row = {"nDCG@10": 0.5, "recall@100": 0.7, "MRR": 0.5, "zero_useful@10": 0.2}
    report = {"written_at": "now", "reranker": "none", "judged": {
        "catalog": "shop", "queries": {"kind": "real", "test": 2, "train_for_fusion": 3},
        "corpus": {"products": 3, "encoder": "minilm", "vector_index": "hnsw", "index_recall@10": 1.0},
        "fusion_weight": 0.3, "rerank_depth": 10, "rerank_blend": None, "relevant_grade": 4,
        "full_corpus": {"clean": {"bm25": row, "hybrid": row}}, "rerank_setting": {"bm25": row},
        "intervals": {"clean": {"bm25": {"nDCG@10": [0.4, 0.38, 0.42]},
                                "hybrid": {"nDCG@10": [0.5, 0.47, 0.53], "x bm25": [1.25, 1.2, 1.3],
                                           "gain": [0.1, 0.08, 0.12], "gain_over": "bm25"}}}}}
    text = markdown(report)
    assert "| hybrid | 0.5000 [0.4700, 0.5300] | 1.2500 [1.2000, 1.3000] | +0.1000 [+0.0800, +0.1200] over bm25 |" \
        in text
