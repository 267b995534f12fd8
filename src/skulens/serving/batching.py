"""Batching across requests: model calls from concurrent searches joined into one.

A text query encoding costs about 2 ms on ONNX Runtime whether it carries one query or sixteen, and
a cross-encoder call on 160 pairs costs far less than eight calls on 20: most of a small call is
fixed overhead (session dispatch, thread wake-ups). :class:`MicroBatcher` gives each request thread
a plain blocking call while one background thread runs the model on everything queued so far.

Batching is *greedy*: the batch thread takes the first waiting item, then whatever else is already
waiting (up to ``max_batch``), and runs at once. A lone request therefore waits for nothing; under
load, requests that arrive while a batch runs form the next one. ``max_wait_ms`` (the latency cap,
default 0) lets the thread hold a partial batch a little longer to fill it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """Counts since start: calls batched, model calls made, the largest batch."""

    items: int = 0
    batches: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return round(self.items / self.batches, 2) if self.batches else 0.0


class MicroBatcher(Generic[T, R]):
    """``run(items) -> results`` (one result per item, same order) called on batches of the items
    that concurrent threads submit; ``batcher(item)`` blocks for that item's result.

    An exception raised by ``run`` is raised in every caller of that batch. ``on_batch(size)`` is
    called after each batch (for metrics)."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 name: str = "batcher", on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_ms / 1000
        self.name, self.on_batch = name, on_batch
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[tuple[T, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"skulens-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future:
        """A future of ``item``'s result."""
        if self._closed:
            raise RuntimeError(f"{self.name} batcher is closed")
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        return self.submit(item).result(timeout)

    def close(self) -> None:
        """Stop the batch thread once the items queued so far have run."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def _collect(self, first: tuple[T, Future]) -> tuple[list[tuple[T, Future]], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.perf_counter()
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._execute(live)
            if stop:
                return

    def _execute(self, batch: list[tuple[T, Future]]) -> None:
        try:
            results = self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for a batch of {len(batch)}")
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
        self.stats.items += len(batch)
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch))


class BatchedEncoder:
    """A query encoder whose single-text and single-photo encodings from concurrent searches run as
    one model call each (texts with texts, photos with photos). Anything else passes through."""

    def __init__(self, encoder: Any, *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self.encoder = encoder
        self.name = getattr(encoder, "name", "encoder")
        hook = (lambda kind: (lambda size: on_batch(kind, size))) if on_batch else (lambda kind: None)
        self.texts = MicroBatcher(lambda texts: list(encoder.encode_texts(texts)), max_batch=max_batch,
                                  max_wait_ms=max_wait_ms, name="encode-text", on_batch=hook("encode_text"))
        self.images = MicroBatcher(self._images, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                   name="encode-image", on_batch=hook("encode_image"))

    def _images(self, photos: list[Any]) -> list[np.ndarray | Exception]:
        # One undecodable photo must not fail the others in its batch: decode failures are
        # found per photo, and only that caller gets the error.
        try:
            return list(self.encoder.encode_images(photos))
        except ValueError:
            if len(photos) == 1:
                raise
            out: list[np.ndarray | Exception] = []
            for photo in photos:
                try:
                    out.append(self.encoder.encode_images([photo])[0])
                except ValueError as exc:
                    out.append(exc)
            return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) != 1:
            return self.encoder.encode_texts(texts)
        return self.texts(texts[0])[None, :]

    def encode_images(self, sources: Sequence[str | bytes]) -> np.ndarray:
        if len(sources) != 1:
            return self.encoder.encode_images(sources)
        result = self.images(sources[0])
        if isinstance(result, Exception):
            raise result
        return result[None, :]

    def close(self) -> None:
        self.texts.close()
        self.images.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


class BatchedReranker:
    """A cross-encoder scorer ``f(query, titles)`` whose calls from concurrent searches are scored as
    one batch of pairs: ``score(queries, titles)`` with one query per pair (the scorers in
    :mod:`skulens.models.reranker` take that form)."""

    def __init__(self, score: Callable[[list[str], list[str]], np.ndarray], *, max_batch: int = 16,
                 max_wait_ms: float = 0.0, on_batch: Callable[[str, int], None] | None = None,
                 chunk_pairs: int = 64) -> None:
        self.score, self.chunk_pairs = score, chunk_pairs
        self.batcher = MicroBatcher(self._run, max_batch=max_batch, max_wait_ms=max_wait_ms, name="rerank",
                                    on_batch=(lambda size: on_batch("rerank", size)) if on_batch else None)

    def _run(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        queries = [query for query, titles in requests for _ in titles]
        titles = [title for _, request_titles in requests for title in request_titles]
        # Pairs of similar length scored together: a batch is padded to its longest pair, so one
        # long title would otherwise make every pair of the batch cost as much as it does.
        order = sorted(range(len(titles)), key=lambda i: len(queries[i]) + len(titles[i]))
        scores = np.empty(len(titles), np.float32)
        for start in range(0, len(order), self.chunk_pairs):
            part = order[start:start + self.chunk_pairs]
            scores[part] = np.asarray(self.score([queries[i] for i in part], [titles[i] for i in part]),
                                      dtype=np.float32).reshape(-1)
        bounds = np.cumsum([0] + [len(t) for _, t in requests])
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def __call__(self, query: str, titles: list[str]) -> np.ndarray:
        if not titles:
            return np.zeros(0, np.float32)
        return self.batcher((query, list(titles)))

    def close(self) -> None:
        self.batcher.close()
