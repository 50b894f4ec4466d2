"""One ASGI middleware for what every request goes through: the key, the drain, metrics, the access log.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: it adds no task or
copy per request and leaves streaming bodies alone.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from .errors import error_body

access_log = logging.getLogger("headstart.access")
log = logging.getLogger("headstart")

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
# Answered while draining: probes and scrapes must keep working until the process exits.
DRAIN_PATHS = OPEN_PATHS | {"/metrics"}
# Pages a browser opens: a 401 there asks for the key with the browser's own dialog
# (user name anything, password the key), which then goes with the page's requests too.
BROWSER_PATHS = frozenset({"/", "/docs"})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def key_matches(authorization: str | None, key: str) -> bool:
    """``Bearer KEY``, or ``Basic`` with KEY as the password (what browsers send after their dialog)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            credentials = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
    elif scheme != "bearer":
        return False
    return hmac.compare_digest(credentials.encode("utf-8", "surrogateescape"), key.encode())


class ServeMiddleware:
    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def _reply(self, send: Any, status: int, message: str, headers: dict[str, str]) -> None:
        body = error_body(message)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        start = time.perf_counter()
        path = scope.get("path", "")
        sent = {"status": 500, "bytes": 0, "started": False}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["started"] = message["status"], True
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        key = state.settings.api_key
        if key and path not in OPEN_PATHS and not key_matches(_header(scope, b"authorization"), key):
            basic, bearer = 'Basic realm="headstart", charset="UTF-8"', 'Bearer realm="headstart"'
            challenge = basic if path in BROWSER_PATHS else bearer
            await self._reply(
                send_and_note,
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                {"www-authenticate": challenge},
            )
        elif state.draining and path not in DRAIN_PATHS:
            await self._reply(
                send_and_note,
                503,
                "the server is shutting down; retry on another instance",
                {"retry-after": "1", "connection": "close"},
            )
        else:
            state.inflight += 1
            try:
                await self.app(scope, receive, send_and_note)
            except Exception as exc:
                log.error("unexpected %s on %s %s", type(exc).__name__, scope.get("method"), path, exc_info=exc)
                if sent["started"]:
                    raise
                await self._reply(
                    send_and_note, 500, f"internal error ({type(exc).__name__}); the server log has the details", {}
                )
            finally:
                state.inflight -= 1
        self._observe(scope, sent, time.perf_counter() - start)

    def _observe(self, scope: dict[str, Any], sent: dict[str, int], seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        status = sent["status"]
        metrics = self.state.metrics
        metrics.requests.labels(template, scope.get("method", ""), str(status)).inc()
        metrics.latency.labels(template).observe(seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        extra = scope.get("state") or {}
        client = scope.get("client") or ("", 0)
        record = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "client": client[0],
            "method": scope.get("method"),
            "path": scope.get("path"),
            "route": template,
            "status": status,
            "ms": round(seconds * 1000, 2),
            "bytes": sent["bytes"],
        }
        for name in ("model", "images"):
            if name in extra:
                record[name] = extra[name]
        access_log.info("%s", json.dumps(record, separators=(",", ":")))
