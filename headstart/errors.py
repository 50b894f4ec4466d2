"""Exceptions that carry a one-line message and a hint for the user.

Library code raises these; ``cli.py`` is the one place that turns them into a
message and an exit code.  Anything else that escapes is a bug and is shown as
one with ``HEADSTART_DEBUG=1``.
"""

from __future__ import annotations


class HeadstartError(Exception):
    """A failure the user can fix. ``str(err)`` is one line; ``hint`` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(HeadstartError):
    """Bad flags or arguments: exit code 2, like argparse."""

    exit_code = 2


class DataError(HeadstartError):
    """A problem with the user's image folder (missing, empty, one class ...)."""


class ImageError(HeadstartError):
    """One image could not be used. Usually caught, reported and skipped."""


class ModelError(HeadstartError):
    """A saved model or export is missing, tampered with or inconsistent."""


class OfflineError(HeadstartError):
    """Something had to be downloaded and the network is not reachable."""


class CacheError(HeadstartError):
    """The bottleneck store cannot be opened or written."""
