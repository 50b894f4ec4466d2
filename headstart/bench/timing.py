"""The one timing loop every benchmark in headstart uses: call something repeatedly, time each call.

Model ceilings, batch-1 latency, batch-32 throughput and the backbone
comparison's speed all come from :func:`time_calls`, so they warm up, stop and
count the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """The timed calls of one :func:`time_calls` (warm-up calls excluded)."""

    seconds: tuple[float, ...]  # each call's duration
    total_s: float  # wall time from the first timed call to the end of the last, loop included

    @property
    def calls(self) -> int:
        return len(self.seconds)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.total_s

    @property
    def best_s(self) -> float:
        """The fastest call: on a shared machine other work only ever adds time."""
        return min(self.seconds)

    @property
    def p50_ms(self) -> float:
        return 1000 * float(np.percentile(np.asarray(self.seconds), 50))

    @property
    def p90_ms(self) -> float:
        return 1000 * float(np.percentile(np.asarray(self.seconds), 90))


def time_calls(
    call: Callable[[], Any], *, seconds: float | None = None, repeats: int | None = None, warmup: int = 1
) -> Timing:
    """Call ``call()`` ``warmup`` times untimed, then time calls until at least ``repeats`` calls
    *and* at least ``seconds`` seconds are done.

    With ``seconds`` alone at least one call is timed; with ``repeats`` alone
    exactly ``repeats``.  Warm-up calls absorb lazy allocations and kernel
    selection, which a steady-state figure must not include.
    """
    if seconds is None and repeats is None:
        raise ValueError("time_calls needs seconds, repeats or both")
    least = 1 if repeats is None else repeats
    if least < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    budget = 0.0 if seconds is None else seconds
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        end = time.perf_counter()
        times.append(end - t0)
        if len(times) >= least and end - start >= budget:
            return Timing(tuple(times), end - start)
