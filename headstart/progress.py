"""Progress reporting that suits where output goes.

On a terminal: a tqdm bar with rate and time left.  Elsewhere (CI logs, pipes):
a plain log line every ``interval`` seconds, so logs stay readable.  Library
code only ever calls :func:`track`; whether anything shows is the caller's
``progress`` flag.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("headstart")


class Progress:
    """A counter that renders as a bar on a TTY and as periodic lines otherwise."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", enabled: bool = True, interval: float = 10.0
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = 0
        self._interval = interval
        self._start = time.perf_counter()
        self._last_line = self._start
        self._bar: Any = None
        self._enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if self._enabled and now - self._last_line >= self._interval:
            self._last_line = now
            log.info("%s", self.line(now, postfix))

    def line(self, now: float | None = None, postfix: dict[str, Any] | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.count}"
        if self.total:
            text += f"/{self.total} ({100.0 * self.count / self.total:.0f}%)"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0:
            text += f", {max(self.total - self.count, 0) / rate:.0f}s left"
        if postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in postfix.items())
        return text

    def write(self, message: str) -> None:
        """Log a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            log.info("%s", message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    iterable: Any, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True
) -> Iterator[Any]:
    """Iterate while showing progress (see :class:`Progress`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit, enabled) as bar:
        for item in iterable:
            yield item
            bar.update()
