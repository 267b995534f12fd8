"""Batching across requests: concurrent model calls become one, each caller gets its own result,
a lone call waits for nothing, and a failure reaches exactly the callers it concerns."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from skulens.serving.batching import BatchedEncoder, BatchedReranker, MicroBatcher


class Gated:
    """A batch function that blocks its first call until released, recording every batch."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            self.release.wait(5)
        return [item * 10 for item in items]


def _queued_behind_a_running_batch(batcher: MicroBatcher, run: Gated, first, rest: list) -> list:
    """Submit ``first``, hold its batch running until every item of ``rest`` is queued behind it,
    then let all run; the results in submission order."""
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher, first)]
        assert run.entered.wait(5)
        futures += [pool.submit(batcher, item) for item in rest]
        while batcher._queue.qsize() < len(rest):
            time.sleep(0.001)
        run.release.set()
        return [f.result(5) for f in futures]


def test_calls_that_arrive_while_a_batch_runs_are_run_together_each_with_its_own_result():
    run = Gated()
    batcher = MicroBatcher(run, max_batch=32)
    assert _queued_behind_a_running_batch(batcher, run, 1, list(range(2, 9))) == [n * 10 for n in range(1, 9)]
    assert run.batches == [[1], [2, 3, 4, 5, 6, 7, 8]]  # two model calls for eight requests
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (2, 8, 7)
    batcher.close()


def test_batches_never_exceed_max_batch():
    run = Gated()
    batcher = MicroBatcher(run, max_batch=3)
    assert _queued_behind_a_running_batch(batcher, run, 0, list(range(1, 8))) == [n * 10 for n in range(8)]
    assert [len(b) for b in run.batches] == [1, 3, 3, 1]


def test_a_lone_call_runs_at_once_and_a_latency_cap_holds_a_partial_batch_only_that_long():
    greedy = MicroBatcher(lambda items: items, max_batch=32)
    started = time.perf_counter()
    assert greedy("x") == "x"
    assert time.perf_counter() - started < 0.25  # well under the cap below, with room for a loaded CI machine
    capped = MicroBatcher(lambda items: items, max_batch=32, max_wait_ms=300)
    started = time.perf_counter()
    assert capped("x") == "x"
    assert 0.3 <= time.perf_counter() - started < 2.0
    greedy.close()
    capped.close()


def test_a_failing_batch_fails_each_of_its_callers_and_the_batcher_keeps_serving():
    calls = []

    def run(items):
        calls.append(items)
        if "bad" in items:
            raise RuntimeError("model crashed")
        return items

    batcher = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher("bad")
    assert batcher("good") == "good"
    short = MicroBatcher(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        short("x")
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(run, max_batch=0)


def test_batched_reranker_scores_as_the_scorer_does_in_fewer_calls():
    calls = []

    def score(queries, titles):
        calls.append(len(titles))
        time.sleep(0.01)  # a model call takes time, so concurrent requests queue behind it
        return np.array([len(q) * 100 + len(t) for q, t in zip(queries, titles, strict=True)], np.float32)

    reranker = BatchedReranker(score)
    requests = [(f"q{'x' * n}", [f"t{'y' * m}" for m in range(n + 1)]) for n in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda r: reranker(*r), requests))
    for (query, titles), got in zip(requests, results, strict=True):
        assert got.tolist() == [len(query) * 100 + len(t) for t in titles]
    assert len(calls) < len(requests)  # concurrent requests shared model calls
    assert sum(calls) == sum(len(t) for _, t in requests)
    assert reranker("q", []).shape == (0,)
    reranker.close()


class PhotoEncoder:
    name = "fake"

    def __init__(self) -> None:
        self.image_calls = 0

    def encode_texts(self, texts):
        return np.array([[len(t), 1.0] for t in texts], np.float32)

    def encode_images(self, sources):
        self.image_calls += 1
        if any(s == b"broken" for s in sources):
            raise ValueError("photo could not be decoded")
        return np.array([[float(len(s)), 0.0] for s in sources], np.float32)


def test_batched_encoder_gives_each_search_its_vector_and_one_broken_photo_fails_only_its_caller():
    encoder = BatchedEncoder(PhotoEncoder())
    assert encoder.encode_texts(["abc"]).tolist() == [[3.0, 1.0]]
    assert encoder.encode_texts(["a", "bb"]).tolist() == [[1.0, 1.0], [2.0, 1.0]]  # a list passes through
    # a batch with a broken photo: the good photos still get their vectors
    results = encoder._images([b"ok", b"broken", b"fine!"])
    assert results[0].tolist() == [2.0, 0.0] and results[2].tolist() == [5.0, 0.0]
    assert isinstance(results[1], ValueError)
    with pytest.raises(ValueError, match="could not be decoded"):
        encoder.encode_images([b"broken"])
    assert encoder.encode_images([b"four"]).tolist() == [[4.0, 0.0]]
    assert encoder.name == "fake"
    encoder.close()
