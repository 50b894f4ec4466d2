"""Dynamic batching: requests' images are queued and run together, a bounded number at a time.

One :class:`ModelWorker` per model.  A request is first *admitted* (its
images count against ``max_queue`` until it is answered, so the backlog is
bounded whatever the clients do), then its images are decoded in a shared
thread pool, then queued.  A collector task takes up to ``max_batch_size``
queued images, waiting at most ``max_batch_delay_ms`` after the oldest one
arrived, and runs them through the model in the model's own inference thread
(one thread: the runtime already uses every core for one batch, and two
batches at once would only contend).  Decoding overlaps inference, and an
image whose request timed out is dropped before it reaches the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageError
from .errors import ServeError, one_line
from .metrics import ServeMetrics

log = logging.getLogger("headstart")

WARMUP_BUDGET_S = 20.0


@dataclass(frozen=True)
class Part:
    """One encoded image of a request and how the request named it (file name or index)."""

    name: str
    data: bytes


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects queued images into batches for one model and runs them one batch at a time."""

    def __init__(self, name: str, clf: Any, *, max_batch_size: int, max_delay_s: float, metrics: ServeMetrics) -> None:
        self.name = name
        self.clf = clf
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._items: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"headstart-infer-{name}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"headstart-batcher-{self.name}")
        self._task.add_done_callback(self._on_stop)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _on_stop(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug: readiness turns 503 and waiting requests fail instead of hanging
            log.error("the batcher of model %s stopped: %s", self.name, one_line(exc), exc_info=exc)
            for item in self._items:
                if not item.future.done():
                    item.future.set_exception(ServeError(500, f"model {self.name} stopped serving"))
            self._items.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._items:
            if not item.future.done():
                item.future.set_exception(ServeError(503, "the server is shutting down"))
        self._items.clear()
        self._executor.shutdown(wait=True)

    async def run_once(self, images: np.ndarray) -> np.ndarray:
        """One batch straight through the inference thread (warm-up at start)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.clf.predict_batch, images)

    async def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``[len(images), classes]``, the images batched with everyone else's."""
        if not self.alive:
            raise ServeError(503, f"model {self.name} is not serving")
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        self._items.extend(items)
        self._wake.set()
        try:
            rows = await asyncio.gather(*(item.future for item in items))
        finally:
            for item in items:  # timed out or failed: the collector skips what is left of it
                if not item.future.done():
                    item.future.cancel()
        return np.stack(rows)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    def _live(self) -> int:
        return sum(1 for item in self._items if not item.future.done())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            # The deadline runs from the oldest image's arrival: an image that waited
            # while the previous batch ran is not made to wait again.
            deadline = self._items[0].enqueued + self.max_delay_s
            while self._live() < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            x = np.stack([item.image for item in batch])
            t0 = time.perf_counter()
            try:
                proba = await loop.run_in_executor(self._executor, self.clf.predict_batch, x)
            except Exception as exc:
                log.error("model %s failed on a batch of %d: %s", self.name, len(batch), one_line(exc), exc_info=exc)
                error = ServeError(500, f"model {self.name} failed on this batch ({type(exc).__name__})")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self.metrics.inference.labels(self.name).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(self.name).observe(len(batch))
            for item, row in zip(batch, proba):
                if not item.future.done():
                    item.future.set_result(row)


class ModelWorker:
    """Admission, decoding and batching for one served model."""

    def __init__(
        self,
        name: str,
        clf: Any,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        decode_pool: ThreadPoolExecutor,
        metrics: ServeMetrics,
    ) -> None:
        self.name = name
        self.clf = clf
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.decode_pool = decode_pool
        self.metrics = metrics
        self.batcher = Batcher(name, clf, max_batch_size=max_batch_size, max_delay_s=max_delay_s, metrics=metrics)
        self.pending = 0  # images admitted and not yet answered (touched only on the event loop)
        self.started = False

    async def start(self) -> None:
        """Run one batch of each size the batcher can form (within WARMUP_BUDGET_S), then be ready.

        Runtimes allocate and choose kernels per input shape the first time they
        see it (OpenVINO keeps a few MB per batch size): done now, the first
        answers are not slow, and memory does not creep up as rarer batch sizes
        turn up over the first thousands of requests.  Largest first after 1: the
        biggest allocation is surely made.
        """
        self.batcher.start()
        size = self.clf.input_size
        sizes = [1, *range(self.batcher.max_batch_size, 1, -1)]
        deadline = time.monotonic() + WARMUP_BUDGET_S
        for i, n in enumerate(sizes):
            await self.batcher.run_once(np.zeros((n, size, size, 3), np.uint8))
            if time.monotonic() > deadline and i + 1 < len(sizes):
                log.info(
                    "model %s: warmed up %d of %d batch sizes in %.0f s; the others warm up when first used",
                    self.name,
                    i + 1,
                    len(sizes),
                    WARMUP_BUDGET_S,
                )
                break
        self.started = True

    @property
    def ready(self) -> bool:
        return self.started and self.batcher.alive

    async def stop(self) -> None:
        self.started = False
        await self.batcher.stop()

    def _admit(self, n: int) -> None:
        if n > self.max_queue:
            self.metrics.rejected.labels(self.name, "too_many_images").inc()
            raise ServeError(
                413,
                f"{n} images in one request; this server takes at most {self.max_queue} "
                "(--max_queue): send them in smaller requests",
            )
        if self.pending + n > self.max_queue:
            self.metrics.rejected.labels(self.name, "queue_full").inc()
            raise ServeError(
                503,
                f"queue full ({self.pending} images waiting for model {self.name}); retry after a second",
                {"Retry-After": "1"},
            )
        self.pending += n
        self.metrics.queue_depth.labels(self.name).set(self.pending)

    def _release(self, n: int) -> None:
        self.pending -= n
        self.metrics.queue_depth.labels(self.name).set(self.pending)

    def _decode(self, part: Part, index: int, total: int) -> np.ndarray:
        where = f"part {part.name!r}" + (f" ({index + 1} of {total})" if total > 1 else "")
        if not part.data:
            raise ServeError(422, f"{where}: empty, no image data")
        try:
            return self.clf.decode(part.data, name=part.name)
        except ImageError as exc:
            raise ServeError(422, one_line(f"{where}: {getattr(exc, 'reason', None) or exc}")) from None

    async def classify(self, parts: Sequence[Part]) -> np.ndarray:
        """Probabilities for each part, in order; ServeError 413/422/503/504 when it cannot be done."""
        if not parts:
            raise ServeError(400, "no image in the request")
        n = len(parts)
        self._admit(n)
        loop = asyncio.get_running_loop()
        try:

            async def run() -> np.ndarray:
                decoded = await asyncio.gather(
                    *(loop.run_in_executor(self.decode_pool, self._decode, p, i, n) for i, p in enumerate(parts))
                )
                return await self.batcher.predict(decoded)

            try:
                proba = await asyncio.wait_for(run(), self.timeout_s)
            except asyncio.TimeoutError:
                self.metrics.rejected.labels(self.name, "timeout").inc()
                raise ServeError(
                    504,
                    f"not answered within {self.timeout_s:g} s (--timeout_s); "
                    "the server is overloaded: retry later or send fewer images",
                ) from None
        finally:
            self._release(n)
        self.metrics.answered(self.name, n)
        return proba
