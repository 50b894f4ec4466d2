"""Interactive API docs at ``/docs``, with Swagger UI served from this machine.

FastAPI's default page loads Swagger UI from a CDN, which an offline or
firewalled server cannot reach.  The ``swagger-ui-py`` package ships the
same files; they are served from here.  Without it ``/docs`` falls back to
the CDN page.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

log = logging.getLogger("headstart")

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


def swagger_static_dir() -> Path | None:
    """The ``swagger_ui/static`` folder, found without importing the package (it pulls in jinja2 and yaml)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def add_docs_routes(app: FastAPI) -> None:
    static = swagger_static_dir()
    if static is None:
        log.debug("swagger-ui-py is not installed: /docs loads Swagger UI from its CDN")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if static is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="headstart serve")
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="headstart serve",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if static is None or name not in ASSETS:
            return Response(b'{"error": "no such asset"}', status_code=404, media_type="application/json")
        return FileResponse(static / name, media_type=ASSETS[name], headers={"cache-control": "max-age=86400"})
