"""Dynamic batching: concurrent requests share one forward pass of the model.

``ModelWorker`` owns one thread that makes every model call of an index (the models are not thread-safe,
and on a GPU one big batch beats many small ones). A request thread submits its inputs and waits; the
worker takes the oldest waiting job, gathers up to ``max_batch`` jobs of the same kind that arrive within
``max_wait_ms``, runs them as one call and hands each caller its own slice of the result. ``max_batch=1``
turns batching off (one request per call, which is what the old global lock did).

``BatchedEncoder`` and ``BatchedScorer`` put a loaded encoder / reranker behind a worker without changing
its interface, so ``Retriever`` (and whatever it grows) batches without knowing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class _Job:
    key: Any  # jobs with equal keys may share a call
    fn: Callable[[list], Any]  # the model call over a list of inputs
    items: list
    future: Future = field(default_factory=Future)


class ModelWorker:
    """One thread running model calls; jobs of one kind arriving within ``max_wait_ms`` share a call.

    Args:
        max_batch: most jobs (requests) merged into one call; 1 disables batching.
        max_wait_ms: how long the oldest job may wait for others to join it.
        on_batch: called with (kind, jobs, items) after each call (metrics).
    """

    def __init__(self, max_batch: int = 32, max_wait_ms: float = 2.0, name: str = "xmodal-model",
                 on_batch: Callable[[str, int, int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: deque[_Job] = deque()  # taken from the queue while gathering another kind
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet in a running call)."""
        return self._queue.qsize() + len(self._held)

    def submit(self, key: Any, fn: Callable[[list], Any], items: Sequence[Any]) -> Any:
        """Run ``fn`` over ``items`` (possibly together with other callers' items); blocks; returns this job's part."""
        if self._closed:
            raise RuntimeError("the model worker is closed")
        if threading.current_thread() is self._thread:  # a model call made from inside a model call
            return fn(list(items))
        job = _Job(key, fn, list(items))
        self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held:
            return self._held.popleft()
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, others = [first], []
            for job in list(self._held):  # same-kind jobs set aside while an earlier batch gathered
                if len(batch) < self.max_batch and job.key == first.key:
                    self._held.remove(job)
                    batch.append(job)
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter())) \
                        if self.max_wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # close after this batch
                    break
                (batch if job.key == first.key else others).append(job)
            self._held.extend(others)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        items = [x for job in batch for x in job.items]
        try:
            out = batch[0].fn(items)
        except BaseException as e:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0].future.set_exception(e)
            else:  # one caller's bad input must not fail the others: run each alone
                for job in batch:
                    self._run([job])
            return
        if self.on_batch is not None:
            try:
                self.on_batch(str(batch[0].key[0] if isinstance(batch[0].key, tuple) else batch[0].key),
                              len(batch), len(items))
            except Exception:  # metrics must never break serving
                pass
        start = 0
        for job in batch:
            n = len(job.items)
            job.future.set_result(out[start:start + n])
            start += n


class BatchedEncoder:
    """An encoder whose ``encode_text``/``encode_image`` (and other model calls) run on a ``ModelWorker``.

    Everything else (``model_id``, ``embedding_dim``, ``load_image``, ...) is the wrapped encoder's.
    """

    def __init__(self, encoder: Any, worker: ModelWorker) -> None:
        self._encoder, self._worker = encoder, worker

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._encoder, name)
        if name in ("encode_query", "encode_items") and callable(value):  # multi-vector calls: serialised, not merged
            return lambda *a, **kw: self._worker.submit((name, id(a)), lambda _: [value(*a, **kw)], [None])[0]
        return value

    @property
    def wrapped(self) -> Any:
        return self._encoder

    def _batched(self, method: str, inputs: Sequence[Any], convert_to: str | None) -> Any:
        fn = getattr(self._encoder, method)
        kw = {} if convert_to is None else {"convert_to": convert_to}

        def call(items: list) -> Any:
            out = fn(items, batch_size=max(1, min(len(items), 256)), show_progress=False, **kw)
            return out if isinstance(out, (list, np.ndarray)) else np.asarray(out)

        return self._worker.submit((method, convert_to), call, list(inputs))

    def encode_text(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None,
                    convert_to: str | None = None) -> Any:
        return self._batched("encode_text", texts, convert_to)

    def encode_image(self, images: Sequence[Any], batch_size: int = 32, show_progress: bool | None = None,
                     convert_to: str | None = None) -> Any:
        return self._batched("encode_image", images, convert_to)


class BatchedScorer:
    """A reranker whose ``score(queries, candidates)`` pairs of concurrent requests run in one call."""

    def __init__(self, scorer: Any, worker: ModelWorker) -> None:
        self._scorer, self._worker = scorer, worker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    @property
    def wrapped(self) -> Any:
        return self._scorer

    def score(self, queries: Sequence[Any], candidates: Sequence[Any], batch_size: int = 32,
              show_progress: bool | None = None) -> np.ndarray:
        def call(pairs: list) -> np.ndarray:
            q, c = [p[0] for p in pairs], [p[1] for p in pairs]
            return np.asarray(self._scorer.score(q, c, batch_size=batch_size, show_progress=False), dtype=np.float32)

        return np.asarray(self._worker.submit("score", call, list(zip(queries, candidates))), dtype=np.float32)
