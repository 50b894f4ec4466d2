"""``headstart serve``: an HTTP inference service (REST and the Open Inference Protocol) with dynamic batching.

``create_app`` builds the ASGI app for loaded models; ``run_server`` runs it
under uvicorn with a graceful drain on SIGTERM.
"""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "build_server", "create_app", "load_models", "run_server"]


def __getattr__(name: str) -> Any:
    # FastAPI and uvicorn load only when a server is built.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("load_models", "run_server", "build_server"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'headstart.serve' has no attribute {name!r}")
