"""Loading the models and running the app under uvicorn, with a graceful drain on SIGTERM.

On the first SIGTERM or Ctrl-C the service starts draining: readiness turns
503 (a load balancer stops sending), new requests get 503, and the requests
already in flight finish.  When none is left (or after ``--timeout_s``)
uvicorn stops.  A second signal stops at once.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .settings import ServeSettings

log = logging.getLogger("headstart")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str | None, Path]]:
    """``PATH`` or ``name=PATH`` each; a plain path is named after the model once it is loaded."""
    out: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and NAME_PATTERN.match(name) and not Path(spec).exists():
            out.append((name, Path(path)))
        else:
            out.append((None, Path(spec)))
    return out


def load_models(specs: Sequence[str], *, runtime: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Each ``--model`` loaded once, named; a name that cannot go in a URL is a UsageError."""
    from ..model import load_model

    if not specs:
        raise UsageError("say which model to serve", hint="headstart serve --model runs/flowers")
    models: dict[str, Any] = {}
    try:
        for given, path in parse_model_specs(specs):
            if given is not None and given in models:
                raise UsageError(f"two models are named {given!r}", hint="give each --model name=PATH its own name")
            clf = load_model(path, runtime=runtime, precision=precision)
            name = given or clf.name
            if not NAME_PATTERN.match(name) or name in models:
                clf.close()
                why = "is taken" if name in models else "cannot be used in a URL"
                raise UsageError(
                    f"model name {name!r} {why}",
                    hint=f"name it: --model mymodel={path} (letters, digits, '.', '_', '-')",
                )
            models[name] = clf
            log.info(
                "loaded %s: %s, %d labels, %s, version %s", name, clf.path, len(clf.labels), clf.runtime, clf.version
            )
    except BaseException:
        for clf in models.values():
            clf.close()
        raise
    return models


def _uvicorn_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, draining before it stops (see the module's docstring)."""

        serve_state: Any = None
        drain_timeout_s: float = 30.0

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = self.serve_state
            if state is None or state.draining:
                self.force_exit = self.should_exit  # a second signal: stop now
                self.should_exit = True
                return
            state.draining = True
            threading.Thread(target=self._drain, name="headstart-drain", daemon=True).start()

        def _drain(self) -> None:
            state = self.serve_state
            deadline = time.monotonic() + self.drain_timeout_s
            log.info("draining: %d requests in flight", state.inflight)
            while state.inflight > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            if state.inflight:
                log.warning("stopping with %d requests unanswered after %.0f s", state.inflight, self.drain_timeout_s)
            self.should_exit = True

    return DrainingServer


def build_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "warning",
) -> Any:
    """A uvicorn server for ``app`` (call ``.run()``; ``.should_exit = True`` stops it from another thread)."""
    import uvicorn

    settings = settings or app.state.serve.settings
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        # Bodies are read before admission: this bounds how many are held at once
        # (uvicorn answers 503 beyond it).
        limit_concurrency=4 * settings.max_queue + 64,
        server_header=False,
        date_header=True,
    )
    server = _uvicorn_server_class()(config)
    server.serve_state = app.state.serve
    server.drain_timeout_s = settings.timeout_s + 1
    return server


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear error (and ``--port 0`` works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="is another server on that port? pick another with --port (0: any free one)",
        ) from None


def run_server(
    models: Mapping[str, Any],
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_listen: Callable[[str], None] | None = None,
) -> None:
    """Serve ``models`` until SIGTERM / Ctrl-C; returns after the drain.  ``on_listen`` gets the base URL."""
    from .app import create_app

    app = create_app(models, settings)
    sock = bind_socket(host, port)
    server = build_server(app, host=host, port=sock.getsockname()[1], settings=settings)
    if on_listen is not None:
        shown = f"[{host}]" if ":" in host else host
        on_listen(f"http://{shown}:{sock.getsockname()[1]}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
