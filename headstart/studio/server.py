"""Running the studio under uvicorn on 127.0.0.1, and saying where once it listens."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger("headstart")

HOST = "127.0.0.1"  # the studio reads and writes the user's files: this machine only, always


def run_studio_server(
    data_dir: str | Path,
    *,
    port: int = 8080,
    cache_dir: str | Path | None = None,
    max_upload_mb: float = 50.0,
    on_listen: Callable[[str], None] | None = None,
) -> None:
    """Serve the studio until Ctrl-C or SIGTERM; ``on_listen(url)`` is called once the socket is bound."""
    import uvicorn

    from .app import create_studio_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {HOST}:{port}: {exc.strerror or exc}",
            hint="another program uses that port: pass --port 0 for a free one",
        ) from None
    sock.listen(128)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    app = create_studio_app(data_dir, cache_dir=cache_dir, max_upload_mb=max_upload_mb)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_listen is not None:
        on_listen(url)
    server.run(sockets=[sock])


class StudioThread:
    """The studio under uvicorn in a background thread of this process (tests, benchmarks, notebooks)."""

    def __init__(self, data_dir: str | Path, *, port: int = 0, **options: object) -> None:
        import threading

        import uvicorn

        from .app import create_studio_app

        self.app = create_studio_app(data_dir, **options)  # type: ignore[arg-type]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, port))
        self._sock.listen(128)
        self.url = f"http://{HOST}:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)  # in a thread uvicorn leaves the signal handlers alone
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="headstart-studio", daemon=True
        )

    def __enter__(self) -> StudioThread:
        import time

        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the studio server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
