"""headstart studio: a local web app for the whole loop (collect, train, inspect, fix, try, export).

``create_studio_app(data_dir)`` builds the ASGI app; ``headstart studio`` runs it
on 127.0.0.1.  The page is plain files in ``static/`` (no build step, nothing
from the network); the JSON API is documented in docs/STUDIO.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_studio_app"]


def __getattr__(name: str) -> Any:
    if name == "create_studio_app":
        from .app import create_studio_app

        return create_studio_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
