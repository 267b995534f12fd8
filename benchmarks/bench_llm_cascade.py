"""Benchmark: what each tier of the LLM cascade adds on the evaluation harness's noisy queries.

The 856 held-out **real** Home Depot queries of `skulens eval` (same split, sample and seeded
corruption: a typo or a dropped word per query), searched with BM25 over the full catalogue of
45,782 titles, so the cascade's effect is not mixed with the dense retriever's. Configurations:

* raw            the noisy query as typed;
* tier 0         SymSpell spelling from the catalogue + the rules tier (price limits, intent), as
                 the service runs it inside every request;
* + tier 1       the local model (packaged SmolLM2-135M GGUF, transformers, CPU) on the queries the
                 service escalates: trigger A (the service's: no lexical match at all) and, as an
                 exploration, trigger B (a query word the catalogue does not contain); its answer is
                 kept only when it validates and finds something, as in the service;
* tier 1 always  the local model's rewrite on a seeded sample, against tier 0 on the same queries.

The hosted tiers (Claude, an OpenAI-compatible vLLM) cannot be reached from this machine; their
cost is **projected** from the measured escalation rate, the prompt's measured token count and the
configured prices, and labelled as such. Zero-useful@10 = share of queries with no product of grade
>= the harness's relevant grade in the top 10.

    .venv/bin/python benchmarks/bench_llm_cascade.py [--max-escalations 60] [--always-sample 40]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from datetime import UTC, datetime

import numpy as np
from _report import machine_description, write_report


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-escalations", type=int, default=60)
    parser.add_argument("--always-sample", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from skulens.data.catalog import read_table
    from skulens.evaluation import evaluate, zero_useful_rate
    from skulens.evaluation.harness import EvalConfig, noisy_query, query_splits, to_rel
    from skulens.retrieval.lexical import BM25Index
    from skulens.serving.llm.cascade import TierPolicy
    from skulens.serving.llm.tiers import LocalGGUFTier, RuleTier
    from skulens.serving.llm.understanding import InvalidAnswer, validate
    from skulens.serving.spelling import SpellCorrector
    from skulens.settings import load_settings

    settings = load_settings("local")
    cfg = EvalConfig()
    products = read_table(settings, "homedepot", "products")
    judgments = read_table(settings, "homedepot", "judgments").to_pylist()
    ids = products.column("product_id").to_pylist()
    titles = dict(zip(ids, products.column("title").to_pylist(), strict=True))
    qrels: dict[str, dict[str, int]] = {}
    for r in judgments:
        if r["product_id"] in titles:
            qrels.setdefault(r["query"], {})[r["product_id"]] = to_rel(r["grade"], r["source"])
    relevant = 4
    splits = query_splits(settings, sorted(qrels), cfg.test_fraction, cfg.seed)
    rng = random.Random(cfg.seed)
    chosen = sorted(q for q, s in splits.items() if s == "test" and any(g >= relevant for g in qrels[q].values()))
    test = sorted(rng.sample(chosen, cfg.max_test_queries)) if len(chosen) > cfg.max_test_queries else chosen
    noise = random.Random(cfg.seed + 1)
    noisy = {q: noisy_query(q, noise) for q in test}  # the harness's noisy queries, exactly
    test_qrels = {q: qrels[q] for q in test}

    print(f"BM25 over {len(ids):,} titles; {len(test)} held-out queries")
    lexical = BM25Index.build(products)
    spell = SpellCorrector.from_texts(titles.values())
    vocabulary = {w for t in titles.values() for w in re.findall(r"[a-z0-9]+", t.casefold())}
    rules = RuleTier()

    def search(text: str, understanding=None) -> list[tuple[str, float]]:  # noqa: ANN001
        from skulens.retrieval.filters import Filters

        filters = Filters.parse(understanding.filters()) if understanding is not None else None
        hits = lexical.search(text, k=10, filters=None if filters is None or filters.empty else filters)
        return hits or (lexical.search(text, k=10) if filters is not None else hits)

    def score(run: dict[str, list[tuple[str, float]]], queries: list[str]) -> dict[str, float]:
        r = {q: {pid: float(s) for pid, s in run[q]} for q in queries}
        sub = {q: test_qrels[q] for q in queries}
        return {"nDCG@10": round(evaluate(sub, r, ["nDCG@10"])["nDCG@10"], 4),
                "zero_useful@10": round(zero_useful_rate(sub, r, 10, relevant), 4),
                "zero_results": round(sum(not run[q] for q in queries) / len(queries), 4)}

    runs: dict[str, dict[str, list]] = {"raw": {}, "tier0": {}}
    tier0_text, tier0_ms = {}, []
    for q in test:
        runs["raw"][q] = search(noisy[q])
        started = time.perf_counter()
        text = spell.correct(noisy[q])[0]
        understanding = validate(rules.answer(text).payload)
        tier0_ms.append((time.perf_counter() - started) * 1000)
        tier0_text[q] = understanding
        runs["tier0"][q] = search(understanding.query, understanding)
    trigger_a = [q for q in test if not runs["tier0"][q]]
    trigger_b = [q for q in test if not runs["tier0"][q] or
                 any(w not in vocabulary for w in re.findall(r"[a-z0-9]+", tier0_text[q].query.casefold()))]
    print(f"trigger A (no lexical match): {len(trigger_a)}; trigger B (+ unknown word): {len(trigger_b)}")

    print("loading the local GGUF model")
    local = LocalGGUFTier(max_new_tokens=args.max_new_tokens).start()
    started = time.perf_counter()
    assert local.wait(600), local._error
    load_s = time.perf_counter() - started
    calls: list[dict] = []

    def ask(q: str) -> dict:
        started = time.perf_counter()
        answer = local.answer(tier0_text[q].query, timeout_s=30)
        ms = (time.perf_counter() - started) * 1000
        try:
            understanding, valid = validate(answer.payload, typed=noisy[q]), True
        except InvalidAnswer:
            understanding, valid = None, False
        hits = search(understanding.query, understanding) if understanding else []
        call = {"query": q, "ms": ms, "tokens_in": answer.tokens_in, "tokens_out": answer.tokens_out,
                "valid": valid, "useful": bool(hits), "rewrite": understanding.query if understanding else None}
        calls.append(call)
        return {**call, "hits": hits}

    escalated = sorted(random.Random(7).sample(trigger_b, min(len(trigger_b), args.max_escalations)))
    print(f"asking the local model about {len(escalated)} escalated queries")
    answers = {q: ask(q) for q in escalated}
    for name, trigger in (("tier0+tier1 (trigger A)", set(trigger_a)), ("tier0+tier1 (trigger B)", set(trigger_b))):
        runs[name] = {q: (answers[q]["hits"] if q in trigger and q in answers and answers[q]["useful"]
                          else runs["tier0"][q]) for q in test}
    sample = sorted(random.Random(11).sample(test, min(len(test), args.always_sample)))
    print(f"asking the local model about {len(sample)} sampled queries (tier 1 always)")
    always = {q: answers[q] if q in answers else ask(q) for q in sample}
    runs_always = {q: (always[q]["hits"] if always[q]["useful"] else runs["tier0"][q]) for q in sample}

    ms = np.array([c["ms"] for c in calls])
    tokens_in = float(np.mean([c["tokens_in"] for c in calls]))
    tokens_out = float(np.mean([c["tokens_out"] for c in calls]))
    valid = float(np.mean([c["valid"] for c in calls]))
    useful = float(np.mean([c["useful"] for c in calls]))
    table = {name: score(run, test) for name, run in runs.items()}
    always_scores = {"tier0": score(runs["tier0"], sample), "tier1 always": score(runs_always, sample)}
    hosted = TierPolicy(usd_per_mtok_in=1.0, usd_per_mtok_out=5.0, max_tokens=200)  # configs/production.yaml
    prompt_tokens = int(round(tokens_in))  # the local tokenizer's count of the same prompt
    per_call = hosted.cost(prompt_tokens, 60)
    rate_a, rate_b = len(trigger_a) / len(test), len(trigger_b) / len(test)
    payload = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
        "queries": len(test), "corpus": len(ids), "relevant_grade": relevant, "scores": table,
        "tier1_always_sample": {"queries": len(sample), "scores": always_scores},
        "escalations": {"trigger_a": len(trigger_a), "trigger_b": len(trigger_b), "asked": len(escalated)},
        "tier0": {"p50_ms": round(float(np.median(tier0_ms)), 3),
                  "p95_ms": round(float(np.percentile(tier0_ms, 95)), 3)},
        "tier1": {"model": str(local.path or "packaged SmolLM2-135M-Instruct Q4_1"), "load_s": round(load_s, 1),
                  "calls": len(calls), "p50_ms": round(float(np.median(ms)), 1),
                  "p95_ms": round(float(np.percentile(ms, 95)), 1), "tokens_in_mean": round(tokens_in, 1),
                  "tokens_out_mean": round(tokens_out, 1), "valid_rate": round(valid, 3),
                  "useful_rate": round(useful, 3), "examples": calls[:8]},
        "cost_per_1000_queries": {
            "tier0_usd": 0.0, "tier1_usd": 0.0,
            "tier1_cpu_seconds_trigger_a": round(rate_a * 1000 * float(np.median(ms)) / 1000, 1),
            "tier1_cpu_seconds_trigger_b": round(rate_b * 1000 * float(np.median(ms)) / 1000, 1),
            "tier2_projected_usd_if_every_escalation_reached_it": {
                "trigger_a": round(rate_a * 1000 * per_call, 4), "trigger_b": round(rate_b * 1000 * per_call, 4),
                "assumes": f"{prompt_tokens} prompt tokens (as counted by the local tokenizer), 60 output tokens, "
                           "$1/$5 per million "
                           "in/out (configs/production.yaml); not measured: no hosted model is reachable here"}},
    }
    command = (f".venv/bin/python benchmarks/bench_llm_cascade.py --max-escalations {args.max_escalations} "
               f"--always-sample {args.always_sample}")
    projected = payload["cost_per_1000_queries"]["tier2_projected_usd_if_every_escalation_reached_it"]
    zero0, zero1 = always_scores["tier0"]["zero_useful@10"], always_scores["tier1 always"]["zero_useful@10"]
    ndcg0, ndcg1 = always_scores["tier0"]["nDCG@10"], always_scores["tier1 always"]["nDCG@10"]
    lines = ["# LLM cascade on noisy queries", "",
             f"Command: `{command}`  ", f"Machine: {payload['machine']}  ",
             f"Written: {payload['written_at']}", "",
             f"{len(test)} held-out **real** Home Depot queries with a seeded corruption each (the `skulens eval` "
             f"noisy set), BM25 over {len(ids):,} titles; zero-useful@10 = no product of grade >= {relevant} in the "
             "top 10.",
             "", "| configuration | zero results | zero-useful@10 | nDCG@10 |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['zero_results']:.3f} | {s['zero_useful@10']:.3f} | {s['nDCG@10']:.3f} |"
              for name, s in table.items()]
    lines += ["", f"Escalations: trigger A (no lexical match, what the service does) {len(trigger_a)} of {len(test)}; "
              f"trigger B (any word the catalogue lacks) {len(trigger_b)}; the local model was asked about "
              f"{len(escalated)} of them.", "",
              f"Tier 1 on every query of a seeded sample of {len(sample)}: zero-useful {zero0:.3f} (tier 0) vs "
              f"{zero1:.3f}, nDCG@10 {ndcg0:.3f} vs {ndcg1:.3f}.", "",
              "| tier | p50 | p95 | tokens in / out | valid JSON | finds something | $ per 1,000 queries |",
              "|---|---:|---:|---:|---:|---:|---:|",
              f"| 0: spelling + rules | {payload['tier0']['p50_ms']} ms | {payload['tier0']['p95_ms']} ms | - | 100% "
              "| - | 0 |",
              f"| 1: SmolLM2-135M GGUF (CPU) | {payload['tier1']['p50_ms']:.0f} ms | "
              f"{payload['tier1']['p95_ms']:.0f} ms "
              f"| {tokens_in:.0f} / {tokens_out:.0f} | {valid:.0%} | {useful:.0%} | 0 (CPU: "
              f"{payload['cost_per_1000_queries']['tier1_cpu_seconds_trigger_b']} s per 1,000 with trigger B) |",
              f"| 2: hosted (Claude Haiku, projected) | - | - | ~{prompt_tokens} / 60 | - | - | "
              f"{projected['trigger_b']} (trigger B), {projected['trigger_a']} (A): projection |",
              "", f"Local model load: {load_s:.0f} s (background thread; the service serves without it meanwhile).",
              "Hosted tiers are exercised in tests against a local server speaking their APIs; that says nothing about "
              "their quality, so no quality figure is given for them."]
    write_report("llm_cascade", lines, payload)


if __name__ == "__main__":
    main()
