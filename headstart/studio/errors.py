"""One error type for the studio's routes: an HTTP status, a one-line message and a hint."""

from __future__ import annotations

from typing import Any


class StudioError(Exception):
    """Answered as ``{"error": message, "hint": hint}`` with ``status``."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **({"hint": self.hint} if self.hint else {})}
