"""Every failure leaves the service as ``{"error": "one line"}`` with its status code.

That object is the Open Inference Protocol's error format; the REST routes
use it too, so a client handles one shape.  Nothing a client sends can
produce a traceback in a response: unexpected exceptions are logged here
and answered 500 with the exception's type only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("headstart")

# Statuses the service answers with, and what each means (for the OpenAPI document).
ERROR_STATUSES = {
    400: "wrong content type, malformed JSON or an invalid request",
    401: "missing or wrong API key",
    404: "unknown model, version or route",
    413: "body over --max_body_mb, or more images than --max_queue",
    422: "an image that cannot be used: unreadable, not an image, or too many pixels; says which part",
    503: "queue full (with Retry-After) or shutting down",
    504: "not answered within --timeout_s",
}


class ServeError(Exception):
    """A request the service refuses, with the status and a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def one_line(text: Any) -> str:
    """The first line of ``text``, at most 300 characters (errors never carry a multi-line dump)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= 300 else line[:297] + "..."


def install_handlers(app: Any) -> None:
    """Answer FastAPI's and Starlette's own errors (validation, 404, 405) in the protocol's format."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_serve_error(request: Any, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"error": one_line("invalid request: " + "; ".join(problems))}, status_code=400)

    async def on_http(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            {"error": one_line(message)}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def on_unexpected(request: Any, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server log has the details"}, status_code=500
        )

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
