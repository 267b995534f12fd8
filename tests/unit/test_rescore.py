"""The rescorer of the fused head: its features, learning behind a held-out gate, storage with the
index version, and the serving pipeline applying the same function."""

from __future__ import annotations

import numpy as np
import pytest

from skulens.evaluation.ranking import learn_rescorer
from skulens.retrieval.ranking import RankingPolicy
from skulens.retrieval.rescore import FEATURES, Idf, Rescorer, candidate_features, words
from skulens.serving.pipeline import SearchPipeline, SearchRequest, ServingConfig
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture


def test_words_keep_fractions_and_decimals_and_drop_plurals():
    assert words("1/2 in. Copper Pipes, 0.5 gal") == ["1/2", "in", "copper", "pipe", "0.5", "gal"]
    assert words("2x4s Glass") == ["2x4s", "glass"]  # a digit before the s: not a plural


def test_candidate_features_read_how_the_title_matches_the_query():
    titles = {"a": "Copper Pipe 1/2 in. Elbow", "b": "PVC Pipe Cement", "c": "Garden Hose"}
    idf = Idf.from_titles(titles.values())
    fused = [("b", 0.9), ("a", 0.8), ("c", 0.1)]
    x = candidate_features("1/2 in copper elbow", fused, lexical=[("b", 7.0), ("a", 5.0)], dense=[("a", 0.7)],
                           titles=titles, idf=idf)
    col = {name: i for i, name in enumerate(FEATURES)}
    a, b, c = x[1], x[0], x[2]
    assert a[col["word_cover"]] == 1.0 and a[col["number_cover"]] == 1.0
    assert a[col["pair_cover"]] == pytest.approx(1 / 3)  # "1/2 in" adjacent; "in copper", "copper elbow" not
    assert a[col["last_word_in_title"]] == 1.0 and b[col["last_word_in_title"]] == 0.0
    assert b[col["word_cover"]] == 0.0 and c[col["idf_cover"]] == 0.0
    assert a[col["rank_fused"]] == 1 and b[col["rank_bm25"]] == 0 and c[col["rank_bm25"]] == 150
    assert np.isnan(b[col["dense"]]) and a[col["dense"]] == pytest.approx(0.7)  # no dense hit: unknown
    assert a[col["bm25_share"]] == pytest.approx(5 / 7) and a[col["missing_max_idf"]] == 0.0
    assert c[col["missing_max_idf"]] > 0


def test_a_rescorer_learned_on_fewer_features_keeps_them(tmp_path):
    texts, qrels, fused, titles = _word_queries()
    older = [f for f in FEATURES if f not in ("pair_cover", "missing_max_idf")]  # as if learned before those existed
    rescorer, _ = learn_rescorer(texts, qrels, fused, fused, fused, titles, depth=20, unjudged_rel=0, features=older)
    assert rescorer.features == tuple(older) and rescorer.booster.feature_name() == older
    # It reads exactly its own columns of the full feature matrix: the left-out ones change nothing.
    q = next(iter(texts))
    x = candidate_features(texts[q], fused[q], fused[q], fused[q], titles, rescorer.idf)
    own = [FEATURES.index(f) for f in older]
    np.testing.assert_array_equal(rescorer.predict(x), rescorer.booster.predict(x[:, own]))
    scrambled = x.copy()
    scrambled[:, [FEATURES.index("pair_cover"), FEATURES.index("missing_max_idf")]] = -7.0
    np.testing.assert_array_equal(rescorer.predict(scrambled), rescorer.predict(x))
    with pytest.raises(ValueError, match="distinct features"):
        learn_rescorer(texts, qrels, fused, fused, fused, titles, depth=20, unjudged_rel=0, features=["bm25", "bm25"])
    RankingPolicy(fusion_weight=0.4, rescorer=rescorer, learned_on="toy").save(tmp_path)
    loaded = RankingPolicy.load(tmp_path)
    assert loaded.rescorer.features == tuple(older)
    assert loaded.rescore(texts[q], fused[q], fused[q], fused[q], titles) == \
        rescorer.rescore(texts[q], fused[q], fused[q], fused[q], titles)


def _word_queries(n: int = 240, seed: int = 0, perfect: bool = False):
    """Each query names two words; its relevant candidates are the titles holding both (4 of 20),
    the others hold one. The fused order is random (or, ``perfect``, the relevant ones first)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(60)]
    titles, texts, qrels, fused = {}, {}, {}, {}
    for qi in range(n):
        a, b = rng.choice(vocab, 2, replace=False)
        q = f"q{seed}_{qi}"
        texts[q] = f"{a} {b}"
        pids = [f"{q}_p{j}" for j in range(20)]
        for j, pid in enumerate(pids):
            filler = [w for w in rng.choice(vocab, 3) if w not in (a, b)]
            titles[pid] = " ".join([a, b, *filler] if j < 4 else [a, *filler])
        qrels[q] = {pid: 4 for pid in pids[:4]}
        score = np.linspace(1, 0, 20) if perfect else rng.uniform(0, 1, 20)
        fused[q] = sorted(zip(pids, score.tolist(), strict=True), key=lambda h: -h[1])
    return texts, qrels, fused, titles


def _ndcg(qrels, runs):
    from skulens.evaluation.ranking import _ndcg as ndcg

    return ndcg(qrels, runs, list(runs))


def test_a_rescorer_is_kept_when_it_beats_the_fused_order_on_queries_it_never_saw():
    texts, qrels, fused, titles = _word_queries()
    rescorer, measured = learn_rescorer(texts, qrels, fused, fused, fused, titles, depth=20, unjudged_rel=0)
    assert rescorer is not None and measured["kept"].startswith("yes")
    assert measured["cross_fitted_rescored_nDCG@10"] > measured["cross_fitted_fused_nDCG@10"] + 0.3
    # On new queries (another seed) it puts the titles with both words first.
    texts2, qrels2, fused2, titles2 = _word_queries(n=50, seed=1)
    rescored = {q: rescorer.rescore(texts2[q], fused2[q], fused2[q], fused2[q], titles2) for q in texts2}
    assert _ndcg(qrels2, rescored) > _ndcg(qrels2, fused2) + 0.3


def test_a_rescorer_that_cannot_beat_the_fused_order_is_not_kept():
    texts, qrels, fused, titles = _word_queries(perfect=True)  # nothing left to gain
    rescorer, measured = learn_rescorer(texts, qrels, fused, fused, fused, titles, depth=20, unjudged_rel=0)
    assert rescorer is None and measured["kept"].startswith("no")
    few, _ = learn_rescorer(*(_word_queries(n=20)[:3]), {}, {}, {}, depth=20)
    assert few is None


def test_the_rescorer_travels_with_the_version(tmp_path):
    texts, qrels, fused, titles = _word_queries()
    rescorer, _ = learn_rescorer(texts, qrels, fused, fused, fused, titles, depth=20, unjudged_rel=0)
    policy = RankingPolicy(fusion_weight=0.4, rescorer=rescorer, learned_on="toy")
    policy.save(tmp_path)
    loaded = RankingPolicy.load(tmp_path)
    assert loaded.rescorer is not None and loaded.rescorer.depth == 20 and "rescore top 20" in loaded.describe()
    q = next(iter(texts))
    assert loaded.rescore(texts[q], fused[q], fused[q], fused[q], titles) == \
        policy.rescore(texts[q], fused[q], fused[q], fused[q], titles)
    assert RankingPolicy(fusion_weight=0.4).rescore(texts[q], fused[q], [], [], titles) == fused[q]  # none: as fused
    raw = (tmp_path / "ranking.json").read_text(encoding="utf-8").replace('"bm25"', '"bm25_old"', 1)
    (tmp_path / "ranking.json").write_text(raw, encoding="utf-8")
    with pytest.raises(ValueError, match="relearn"):
        RankingPolicy.load(tmp_path)


class _ReverseBooster:
    """Scores the head in the reverse of its fused order."""

    def predict(self, x, num_threads=1):
        return x[:, FEATURES.index("rank_fused")]


def test_the_pipeline_serves_the_rescored_order(parts):  # noqa: F811
    config = ServingConfig(total_budget_ms=60_000, stage_timeout_ms={})
    request = SearchRequest.parse({"text": "red shirt", "k": 6, "rerank": False}, config)
    plain = SearchPipeline(**parts, config=config, ranking=RankingPolicy(fusion_weight=0.0, rerank_blend=0.0))
    rescorer = Rescorer(_ReverseBooster(), depth=3, idf=Idf.from_titles(parts["titles"].values()))
    rescored = SearchPipeline(**parts, config=config,
                              ranking=RankingPolicy(fusion_weight=0.0, rerank_blend=0.0, rescorer=rescorer))
    before, after = plain.search(request), rescored.search(request)
    ids = [i["product_id"] for i in before.items]
    assert [i["product_id"] for i in after.items] == ids[:3][::-1] + ids[3:]
    stages = {s.name: s.status for s in after.stages}
    assert stages["rescore"] == "ok" and stages["encode"] == "ok"  # a rescored version always has both sides
    assert "rescore" in after.items[0]["scores"] and "rescore" not in before.items[0]["scores"]
