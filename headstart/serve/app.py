"""The ASGI application: a REST API, the Open Inference Protocol (KServe v2), metrics, docs and a page.

``create_app(models, settings)`` takes models already loaded (see
:func:`headstart.model.load_model`); the caller owns and closes them.  Routes:

* REST: ``POST /v1/models/{name}/predict`` (raw image, multipart ``file``
  parts, or ``{"instances": [{"b64": ...}]}``), ``POST /v1/predict`` (the
  default model), ``GET /v1/models`` and ``GET /v1/models/{name}``;
* v2: ``/v2``, ``/v2/health/live|ready``, ``/v2/models/{name}[/versions/{v}]``
  (metadata), ``.../ready`` and ``.../infer``;
* ``/metrics`` (Prometheus), ``/docs`` and ``/openapi.json``, and ``/`` (the page).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response

from .. import __version__
from ..errors import UsageError
from . import schemas
from .batcher import ModelWorker
from .body import read_body, rest_parts
from .errors import ServeError, install_handlers
from .metrics import CONTENT_TYPE, ServeMetrics
from .middleware import ServeMiddleware
from .settings import ServeSettings
from .v2 import build_infer_response, model_metadata, parse_infer_request

log = logging.getLogger("headstart")

PAGE = Path(__file__).with_name("page") / "index.html"
# The page runs its own inline script and talks only to this server.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'none'"
)
V2_EXTENSIONS = ["binary_tensor_data", "classification"]
TOP_K_MAX = 1000


@dataclass
class ServeState:
    """What the routes share: the models, their workers and the service's condition."""

    models: dict[str, Any]
    settings: ServeSettings
    default: str
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    workers: dict[str, ModelWorker] = field(default_factory=dict)
    draining: bool = False
    inflight: int = 0  # requests being handled (the drain on SIGTERM waits for none)

    def worker(self, name: str) -> ModelWorker:
        worker = self.workers.get(name)
        if worker is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ServeError(404, f"unknown model {name!r}; this server has: {known}")
        return worker

    @property
    def ready(self) -> bool:
        return not self.draining and bool(self.workers) and all(w.ready for w in self.workers.values())


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status, media_type="application/json")


def _model_info(name: str, worker: ModelWorker) -> dict[str, Any]:
    clf = worker.clf
    info = dict(clf.info())
    info.pop("path", None)  # where the model lies on the server is none of the clients' business
    info.update(
        name=name,
        model=name,
        model_version=clf.version,
        labels=list(clf.labels),
        runtime=clf.runtime,
        max_batch_size=worker.batcher.max_batch_size,
        ready=worker.ready,
    )
    return info


def _top_k(state: ServeState, top_k: int | None) -> int:
    return state.settings.top_k if top_k is None else top_k


def create_app(models: Mapping[str, Any], settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``models`` (name -> a loaded Classifier), started and stopped by the ASGI server."""
    settings = (settings or ServeSettings()).check()
    if not models:
        raise UsageError("no model to serve", hint="headstart serve --model runs/flowers")
    default = settings.default_model or next(iter(models))
    if default not in models:
        raise UsageError(f"default model {default!r} is not among the served ones ({', '.join(models)})")
    state = ServeState(dict(models), settings, default)
    page = PAGE.read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(
            max_workers=settings.decode_workers or min(8, os.cpu_count() or 1), thread_name_prefix="headstart-decode"
        )
        for name, clf in state.models.items():
            state.metrics.describe_model(name, clf)
            state.workers[name] = ModelWorker(
                name,
                clf,
                max_batch_size=settings.max_batch_size or max(1, int(clf.batch_size)),
                max_delay_s=settings.max_batch_delay_ms / 1000.0,
                max_queue=settings.max_queue,
                timeout_s=settings.timeout_s,
                decode_pool=pool,
                metrics=state.metrics,
            )
        try:
            await asyncio.gather(*(w.start() for w in state.workers.values()))
            log.info(
                "ready: %s",
                ", ".join(
                    f"{n} ({w.clf.runtime}, batches of up to {w.batcher.max_batch_size})"
                    for n, w in state.workers.items()
                ),
            )
            yield
        finally:
            state.draining = True
            await asyncio.gather(*(w.stop() for w in state.workers.values()), return_exceptions=True)
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="headstart serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Image classification with models retrained by headstart: a REST API, the Open "
        "Inference Protocol (KServe v2), Prometheus metrics and a page to try it. Errors "
        'are {"error": "..."} with the status code.',
    )
    app.state.serve = state
    install_handlers(app)
    app.add_middleware(ServeMiddleware, state=state)
    _add_openapi(app, settings)
    from .docs import add_docs_routes

    add_docs_routes(app)

    async def predict(request: Request, name: str, top_k: int | None) -> Response:
        worker = state.worker(name)
        request.state.model = name
        body = await read_body(request, settings.max_body_bytes)
        parts = await rest_parts(request, body, settings.max_queue)
        request.state.images = len(parts)
        proba = await worker.classify(parts)
        rows = worker.clf.predictions(proba, [p.name for p in parts], _top_k(state, top_k))
        return _json(
            {"model": name, "model_version": worker.clf.version, "predictions": [row.to_dict() for row in rows]}
        )

    top_k_query = Query(None, ge=1, le=TOP_K_MAX, description="how many labels per image (default 5)")

    @app.post(
        "/v1/models/{name}/predict",
        tags=["REST"],
        response_model=schemas.PredictResponse,
        responses=schemas.errors(400, 404, 413, 422, 503, 504),
        openapi_extra=schemas.PREDICT_BODY,
        summary="Top labels of one or more images",
    )
    async def predict_named(request: Request, name: str, top_k: int | None = top_k_query) -> Response:
        return await predict(request, name, top_k)

    @app.post(
        "/v1/predict",
        tags=["REST"],
        response_model=schemas.PredictResponse,
        responses=schemas.errors(400, 413, 422, 503, 504),
        openapi_extra=schemas.PREDICT_BODY,
        summary="Top labels with the default model",
    )
    async def predict_default(request: Request, top_k: int | None = top_k_query) -> Response:
        return await predict(request, state.default, top_k)

    @app.get(
        "/v1/models",
        tags=["REST"],
        response_model=schemas.ModelList,
        responses=schemas.errors(),
        summary="The models served",
    )
    async def list_models() -> Response:
        return _json({"default": state.default, "models": [_model_info(n, w) for n, w in state.workers.items()]})

    @app.get(
        "/v1/models/{name}",
        tags=["REST"],
        response_model=schemas.ModelInfo,
        responses=schemas.errors(404),
        summary="One model: labels, version, runtime, preprocessing",
    )
    async def show_model(name: str) -> Response:
        return _json(_model_info(name, state.worker(name)))

    _add_v2_routes(app, state)

    @app.get(
        "/metrics", tags=["service"], summary="Prometheus metrics", responses=schemas.errors(), response_class=Response
    )
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get(
        "/",
        tags=["service"],
        summary="A page to try the models",
        response_class=HTMLResponse,
        responses=schemas.errors(),
    )
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"content-security-policy": PAGE_CSP, "cache-control": "no-cache"})

    return app


def _add_v2_routes(app: FastAPI, state: ServeState) -> None:
    settings = state.settings

    def versioned(name: str, version: str | None) -> ModelWorker:
        worker = state.worker(name)
        if version is not None and version != worker.clf.version:
            raise ServeError(404, f"model {name!r} has no version {version!r}; it serves {worker.clf.version}")
        return worker

    @app.get(
        "/v2", tags=["v2"], response_model=schemas.ServerMetadata, responses=schemas.errors(), summary="Server metadata"
    )
    async def server_metadata() -> Response:
        return _json({"name": "headstart", "version": __version__, "extensions": V2_EXTENSIONS})

    @app.get("/v2/health/live", tags=["v2"], response_model=schemas.Live, summary="Liveness (no key needed)")
    async def live() -> Response:
        return _json({"live": True})

    @app.get(
        "/v2/health/ready",
        tags=["v2"],
        response_model=schemas.Ready,
        summary="Readiness (no key needed)",
        responses={503: {"model": schemas.Ready, "description": "starting or shutting down"}},
    )
    async def ready() -> Response:
        return _json({"ready": state.ready}, 200 if state.ready else 503)

    async def metadata(name: str, version: str | None) -> Response:
        worker = versioned(name, version)
        return _json(model_metadata(name, worker.clf))

    async def model_ready(name: str, version: str | None) -> Response:
        worker = versioned(name, version)
        ok = worker.ready and not state.draining
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        worker = versioned(name, version)
        request.state.model = name
        body = await read_body(request, settings.max_body_bytes)
        parsed = parse_infer_request(body, request.headers, len(worker.clf.labels))
        request.state.images = len(parsed.parts)
        proba = await worker.classify(parsed.parts)
        content, headers = build_infer_response(name, worker.clf, parsed, proba)
        return Response(content, headers=headers)

    meta: dict[str, Any] = {"tags": ["v2"], "response_model": schemas.ModelMetadata, "responses": schemas.errors(404)}
    ready_doc: dict[str, Any] = {
        "tags": ["v2"],
        "response_model": schemas.ModelReady,
        "responses": {**schemas.errors(404), 503: {"model": schemas.ModelReady, "description": "not ready"}},
    }
    infer_doc: dict[str, Any] = {
        "tags": ["v2"],
        "response_model": schemas.InferenceResponse,
        "responses": schemas.errors(400, 404, 413, 422, 503, 504),
        "openapi_extra": schemas.INFER_BODY,
    }

    @app.get("/v2/models/{name}", summary="Model metadata", **meta)
    async def metadata_latest(name: str) -> Response:
        return await metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", summary="Model metadata, one version", **meta)
    async def metadata_version(name: str, version: str) -> Response:
        return await metadata(name, version)

    @app.get("/v2/models/{name}/ready", summary="Model readiness", **ready_doc)
    async def ready_latest(name: str) -> Response:
        return await model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness, one version", **ready_doc)
    async def ready_version(name: str, version: str) -> Response:
        return await model_ready(name, version)

    @app.post("/v2/models/{name}/infer", summary="Inference", **infer_doc)
    async def infer_latest(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference, one version", **infer_doc)
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)


def _add_openapi(app: FastAPI, settings: ServeSettings) -> None:
    """The generated document, plus the hand-parsed bodies' schemas and the bearer key when there is one."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas.request_components())
            if settings.api_key:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in doc.get("paths", {}).items():
                    for operation in operations.values():
                        operation["security"] = [] if path.startswith("/v2/health/") else [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
