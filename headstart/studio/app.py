"""The studio's ASGI application: the page, and a JSON API over projects of class folders.

``create_studio_app(data_dir)`` returns a FastAPI app (the stack ``headstart
serve`` runs on).  This module holds the app, its guards and the "collect"
routes (projects, classes, images, thumbnails, uploads); training, runs and
the tools are in :mod:`headstart.studio.routes`.  docs/STUDIO.md lists every
route with its request and response.

Guards, because a local web app is reachable from any page the browser opens:
the Host header must name this machine (no DNS rebinding), a request that
changes anything must come from the studio's own page when it says where it
comes from (no cross-site form posts), names and paths are checked before they
touch the disk, and request bodies are capped while they stream in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from .. import __version__
from ..errors import CacheError, HeadstartError, ModelError, OfflineError
from .errors import StudioError
from .jobs import JobManager
from .store import Store
from .thumbs import cached_thumbnail
from .tools import ModelCache, ServeManager
from .training import Engine

log = logging.getLogger("headstart")

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_MB = 50.0
MAX_FILES_PER_REQUEST = 1000
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Studio:
    """What the routes share."""

    store: Store
    engine: Engine
    jobs: JobManager
    models: ModelCache
    serve: ServeManager
    max_upload_bytes: int
    max_pixels: int


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _hostname(header: str) -> str:
    """``host:port`` -> ``host`` (IPv6 literals keep their brackets)."""
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def error_response(exc: StudioError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def _install_guards(app: FastAPI, studio: Studio) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = _hostname(request.headers.get("host") or "")
        if host not in LOCAL_HOSTS:
            return JSONResponse(
                {
                    "error": f"host {host!r} is not this machine",
                    "hint": "open the studio at the 127.0.0.1 address it printed",
                },
                status_code=421,
            )
        origin = request.headers.get("origin")
        if request.method not in SAFE_METHODS and origin and origin != "null":
            if urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse(
                    {
                        "error": "requests that change data must come from the studio's own page",
                        "hint": f"open {request.url.scheme}://{request.headers.get('host')}/",
                    },
                    status_code=403,
                )
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    @app.exception_handler(StudioError)
    async def studio_error(request: Request, exc: StudioError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HeadstartError)
    async def headstart_error(request: Request, exc: HeadstartError) -> JSONResponse:
        status = 503 if isinstance(exc, (CacheError, OfflineError)) else 409 if isinstance(exc, ModelError) else 422
        return JSONResponse({"error": str(exc), **({"hint": exc.hint} if exc.hint else {})}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(
            {"error": "bad request: " + "; ".join(parts), "hint": "see docs/STUDIO.md for the API"}, status_code=422
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("studio: %s %s failed", request.method, request.url.path)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return JSONResponse(
            {"error": f"unexpected {type(exc).__name__}: {first}", "hint": "the studio's terminal shows the details"},
            status_code=500,
        )


async def read_json(request: Request, limit: int = 1_000_000) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise StudioError(413, "request body too large for JSON", "send less")
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise StudioError(422, "the request body is not valid JSON") from None


def _need(body: Any, key: str) -> Any:
    if not isinstance(body, dict) or key not in body:
        raise StudioError(422, f"the request needs a JSON object with {key!r}")
    return body[key]


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise StudioError(
                413,
                f"upload too large (more than {_mb(limit)}); the limit is {_mb(limit)} per file",
                "split it, or start the studio with a larger --max_upload_mb",
            )
        yield chunk


async def read_uploads(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of a multipart upload (``files`` parts) or of a raw image body.

    The body is capped at ``limit`` as it streams in, so a 200 MB upload is
    refused after ``limit`` bytes, with nothing stored.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:  # multipart headers add a little
        raise StudioError(
            413,
            f"upload too large ({_mb(int(length))}); the limit is {_mb(limit)} per file",
            "pick smaller files, or start the studio with a larger --max_upload_mb",
        )
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        parser = MultiPartParser(
            request.headers,
            _limited(request, limit + 64 * 1024),  # type: ignore[arg-type]
            max_files=MAX_FILES_PER_REQUEST,
            max_fields=100,
        )
        try:
            form = await parser.parse()
        except StudioError:
            raise
        except Exception as exc:  # a malformed body from a client
            raise StudioError(
                422, f"cannot read the upload: {exc}", "send multipart/form-data with 'files' parts"
            ) from None
        out = []
        try:
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read(limit + 1)
                    if len(data) > limit:
                        raise StudioError(413, f"{value.filename}: too large; the limit is {_mb(limit)} per file")
                    out.append((value.filename or "upload", data))
        finally:
            await form.close()
        if not out:
            raise StudioError(422, "the upload holds no file", "send the images as 'files' parts")
        return out
    name = request.query_params.get("filename") or request.headers.get("x-filename") or "upload"
    data = b"".join([chunk async for chunk in _limited(request, limit)])
    return [(name, data)]


def create_studio_app(
    data_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int | None = None,
) -> FastAPI:
    """The studio over ``data_dir`` (one sub-folder per project); ``cache_dir`` is the bottleneck cache."""
    from ..data import DEFAULT_MAX_PIXELS

    store = Store(data_dir)
    engine = Engine(Path(cache_dir).expanduser() if cache_dir is not None else None)
    studio = Studio(
        store,
        engine,
        JobManager(),
        ModelCache(store, engine),
        ServeManager(),
        int(max_upload_mb * 1_000_000),
        max_pixels or DEFAULT_MAX_PIXELS,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        studio.jobs.cancel_all()
        studio.serve.stop()
        studio.models.close()

    app = FastAPI(title="headstart studio", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.studio = studio
    _install_guards(app, studio)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    _collect_routes(app, studio)
    from .routes import add_routes

    add_routes(app, studio)
    return app


def _collect_routes(app: FastAPI, studio: Studio) -> None:
    store = studio.store

    @app.get("/api/projects")
    def projects() -> dict[str, Any]:
        return {"projects": store.list_projects()}

    @app.post("/api/projects", status_code=201)
    async def create_project(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        path = store.create_project(_need(body, "name"))
        for cls in body.get("classes", []) or []:
            store.create_class(path.name, cls)
        return {"name": path.name, "classes": store.list_classes(path.name)}

    @app.post("/api/projects/{project}/classes", status_code=201)
    async def create_class(project: str, request: Request) -> dict[str, Any]:
        name = store.create_class(project, _need(await read_json(request), "name"))
        return {"name": name, "count": 0}

    @app.patch("/api/projects/{project}/classes/{cls}")
    async def rename_class(project: str, cls: str, request: Request) -> dict[str, Any]:
        _busy_guard(studio, project, "rename a class")
        name = store.rename_class(project, cls, _need(await read_json(request), "name"))
        return {"name": name, "count": len(store.list_images(project, name))}

    @app.delete("/api/projects/{project}/classes/{cls}")
    def delete_class(project: str, cls: str) -> dict[str, Any]:
        store.delete_class(project, cls)
        return {"deleted": cls}

    @app.get("/api/projects/{project}/classes/{cls}/images")
    def list_images(project: str, cls: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 1000:
            raise StudioError(422, "offset must be 0 or more and limit between 1 and 1000")
        images = store.list_images(project, cls)
        page = images[offset : offset + limit]
        return {
            "class": cls,
            "total": len(images),
            "offset": offset,
            "items": [{**i.to_dict(), "v": int(i.mtime)} for i in page],
        }

    @app.post("/api/projects/{project}/classes/{cls}/images")
    async def upload(project: str, cls: str, request: Request) -> JSONResponse:
        store.class_dir(project, cls)  # 404 before reading a byte
        files = await read_uploads(request, studio.max_upload_bytes)

        def add_all() -> list[Any]:
            return [store.add_image(project, cls, name, data, studio.max_pixels) for name, data in files]

        results = await run_in_threadpool(add_all)
        rows = [r.to_dict() for r in results]
        counts = {k: sum(r.status == k for r in results) for k in ("added", "duplicate", "error")}
        body: dict[str, Any] = {"results": rows, **counts, "count": len(store.list_images(project, cls))}
        if counts["error"] == len(results):
            body["error"] = rows[0]["message"] if len(rows) == 1 else f"none of the {len(rows)} files is a usable image"
            return JSONResponse(body, status_code=422)
        return JSONResponse(body)

    @app.post("/api/projects/{project}/images/move")
    async def move(project: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        paths, to = _paths(_need(body, "paths")), _need(body, "to")
        return {"moved": await run_in_threadpool(store.move_images, project, paths, to)}

    @app.post("/api/projects/{project}/images/delete")
    async def delete(project: str, request: Request) -> dict[str, Any]:
        paths = _paths(_need(await read_json(request), "paths"))
        return {"deleted": await run_in_threadpool(store.delete_images, project, paths)}

    @app.get("/api/projects/{project}/thumbs/{rel:path}")
    def thumb(project: str, rel: str) -> Response:
        data = cached_thumbnail(store.image_path(project, rel), store.studio_dir(project, "thumbs"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/projects/{project}/files/{rel:path}")
    def original(project: str, rel: str) -> FileResponse:
        return FileResponse(store.image_path(project, rel), headers={"Cache-Control": "private, max-age=3600"})


def _paths(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise StudioError(422, "'paths' must be a non-empty list of image paths like 'cats/1a2b3c.jpg'")
    if len(value) > 10000:
        raise StudioError(422, "at most 10,000 images at once")
    return value


def _busy_guard(studio: Studio, project: str, what: str) -> None:
    job = studio.jobs.current(project)
    if job is not None and job.running:
        raise StudioError(
            409,
            f"cannot {what} while {'training' if job.kind == 'train' else 'the doctor'} runs",
            "wait for it to finish",
        )
