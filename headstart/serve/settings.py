"""Every setting of ``headstart serve`` once: its default and its check."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

DEFAULT_MAX_BATCH_DELAY_MS = 5.0
DEFAULT_MAX_QUEUE = 256
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_MB = 20.0
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ServeSettings:
    """How the service batches, bounds and guards its work.

    ``max_batch_size`` ``None`` means each model's own best batch (the
    runtime's).  ``max_queue`` counts images admitted and not yet answered
    (decoding, waiting and running), per model: past it a request gets 503.
    """

    max_batch_size: int | None = None
    max_batch_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    api_key: str | None = None
    default_model: str | None = None
    top_k: int = DEFAULT_TOP_K
    decode_workers: int | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> ServeSettings:
        """Raise a UsageError naming the flag for any value the service cannot run with."""
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise UsageError(
                f"--max_batch_size must be at least 1, got {self.max_batch_size}",
                hint="e.g. --max_batch_size 16 (or leave it out: the runtime's best batch)",
            )
        if not 0 <= self.max_batch_delay_ms <= 60_000:
            raise UsageError(
                f"--max_batch_delay_ms must be between 0 and 60000, got {self.max_batch_delay_ms}",
                hint="e.g. --max_batch_delay_ms 5",
            )
        if self.max_queue < 1:
            raise UsageError(f"--max_queue must be at least 1, got {self.max_queue}", hint="e.g. --max_queue 256")
        if not self.timeout_s > 0:
            raise UsageError(f"--timeout_s must be positive, got {self.timeout_s}", hint="e.g. --timeout_s 30")
        if not self.max_body_mb > 0:
            raise UsageError(f"--max_body_mb must be positive, got {self.max_body_mb}", hint="e.g. --max_body_mb 20")
        if self.api_key is not None and (not self.api_key or any(c.isspace() for c in self.api_key)):
            raise UsageError(
                "the API key must be non-empty and without spaces",
                hint="e.g. --api_key $(python -c 'import secrets; print(secrets.token_urlsafe())')",
            )
        if self.top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {self.top_k}")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise UsageError(f"decode workers must be at least 1, got {self.decode_workers}")
        return self
