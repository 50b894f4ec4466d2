"""The studio's routes for training, runs, the doctor, trying a model, exporting and serving it."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .errors import StudioError
from .runs import cell_images, delete_run, list_runs, run_details, run_dir, run_summary
from .settings import form_fields, parse_settings
from .tools import EXPORT_FORMATS, export_zip, predict, serve_available
from .training import doctor_available, doctor_work, read_doctor, train_work

if TYPE_CHECKING:
    from .app import Studio

EVENT_POLL_S = 0.05  # how often an event stream looks for new events
MAX_TOP_K = 20


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def add_routes(app: FastAPI, studio: Studio) -> None:
    from .app import read_json, read_uploads

    store, jobs = studio.store, studio.jobs
    form = functools.cache(form_fields)  # the installed backbones do not change while the studio runs

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        from ..settings import SETTINGS

        return {
            "version": __version__,
            "data_dir": str(store.root),
            "max_upload_mb": studio.max_upload_bytes / 1e6,
            "settings": form(),
            "export_formats": list(EXPORT_FORMATS),
            "features": {
                "doctor": doctor_available(),
                "serve": serve_available(),
                "fine_tune": "fine_tune_blocks" in SETTINGS,
            },
        }

    @app.get("/api/projects/{project}")
    def project(project: str) -> dict[str, Any]:
        store.project_dir(project)
        runs = list_runs(store, project)
        train, doctor = jobs.latest(project, "train"), jobs.latest(project, "doctor")
        return {
            "name": project,
            "path": str(store.project_dir(project)),
            "classes": store.list_classes(project),
            "runs": runs[:50],
            "job": train.summary() if train else None,
            "doctor_job": doctor.summary() if doctor else None,
        }

    # ---------------------------------------------------------------- train and jobs
    @app.post("/api/projects/{project}/train", status_code=202)
    async def train(project: str, request: Request) -> dict[str, Any]:
        settings = parse_settings(await read_json(request))
        classes = store.list_classes(project)
        filled = [c for c in classes if c["count"] > 0]
        if len(filled) < 2:
            have = ", ".join(f"{c['name']} ({c['count']})" for c in classes) or "no classes yet"
            raise StudioError(
                422,
                f"training needs at least two classes with images; this project has {have}",
                "add a second class and some images of it",
            )
        empty = [c["name"] for c in classes if c["count"] == 0]
        if empty:
            raise StudioError(
                422, f"class {empty[0]!r} has no images yet", "add images to it, or delete the empty class"
            )
        job = jobs.start(project, "train", train_work(store, studio.engine, studio.models, project, settings), settings)
        return job.summary()

    @app.get("/api/projects/{project}/jobs/{job_id}")
    def job_status(project: str, job_id: str) -> dict[str, Any]:
        job = jobs.get(project, job_id)
        return {**job.summary(), "log": list(job.events)}

    @app.post("/api/projects/{project}/jobs/{job_id}/cancel")
    def cancel(project: str, job_id: str) -> dict[str, Any]:
        job = jobs.get(project, job_id)
        if job.running:
            job.cancel_requested = True
        return job.summary()

    @app.get("/api/projects/{project}/jobs/{job_id}/events")
    async def events(project: str, job_id: str, request: Request) -> StreamingResponse:
        job = jobs.get(project, job_id)
        last = request.headers.get("last-event-id", "")
        first = int(last) + 1 if last.isdigit() else 0

        async def stream() -> Any:
            sent = first
            yield "retry: 2000\n\n"
            while True:
                running = job.running  # read before the events: the last event is appended before state changes
                for event in job.events[sent:]:
                    yield _sse(event)
                    sent = event["id"] + 1
                if not running and sent >= len(job.events):
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # ---------------------------------------------------------------- runs
    @app.get("/api/projects/{project}/runs")
    def runs(project: str) -> dict[str, Any]:
        return {"runs": list_runs(store, project)}

    @app.get("/api/projects/{project}/runs/{run_id}")
    def run(project: str, run_id: str) -> dict[str, Any]:
        return run_details(store, project, run_id)

    @app.delete("/api/projects/{project}/runs/{run_id}")
    def remove_run(project: str, run_id: str) -> dict[str, Any]:
        studio.models.forget(project, run_id)
        delete_run(store, project, run_id)
        return {"deleted": run_id}

    @app.get("/api/projects/{project}/runs/{run_id}/cells")
    def cells(project: str, run_id: str, true: str, predicted: str) -> dict[str, Any]:
        return cell_images(store, project, run_id, true, predicted)

    # ---------------------------------------------------------------- doctor
    @app.post("/api/projects/{project}/doctor", status_code=202)
    async def start_doctor(project: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not doctor_available():
            raise StudioError(
                501,
                "the data doctor is not part of this installation",
                "update headstart to a version with 'headstart doctor'",
            )
        backbone = body.get("backbone") if isinstance(body, dict) else None
        classes = [c for c in store.list_classes(project) if c["count"]]
        if not classes:
            raise StudioError(422, "the project has no images to check", "add images first")
        job = jobs.start(
            project, "doctor", doctor_work(store, studio.engine, project, backbone or "efficientnet_lite0")
        )
        return job.summary()

    @app.get("/api/projects/{project}/doctor")
    def doctor_findings(project: str) -> dict[str, Any]:
        store.project_dir(project)
        job = jobs.latest(project, "doctor")
        return {
            "available": doctor_available(),
            "job": job.summary() if job else None,
            "report": read_doctor(store, project),
        }

    # ---------------------------------------------------------------- try
    @app.post("/api/projects/{project}/runs/{run_id}/predict")
    async def try_image(project: str, run_id: str, request: Request) -> dict[str, Any]:
        top_k = request.query_params.get("top_k", "5")
        if not top_k.isdigit() or not 1 <= int(top_k) <= MAX_TOP_K:
            raise StudioError(422, f"top_k must be between 1 and {MAX_TOP_K}, got {top_k!r}")
        uploads = await read_uploads(request, studio.max_upload_bytes)
        name, data = uploads[0]
        if not data:
            raise StudioError(422, f"{name}: empty file (0 bytes)", "send an image")
        return await run_in_threadpool(predict, studio.models, project, run_id, data, name, int(top_k))

    # ---------------------------------------------------------------- export and serve
    @app.post("/api/projects/{project}/runs/{run_id}/export")
    async def export(project: str, run_id: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        fmt = body.get("format", "onnx") if isinstance(body, dict) else "onnx"
        path = await run_in_threadpool(export_zip, store, studio.engine, project, run_id, fmt)
        return {
            "format": fmt,
            "file": path.name,
            "size": path.stat().st_size,
            "download": f"/api/projects/{project}/exports/{path.name}",
            "run": run_summary(run_dir(store, project, run_id)),
        }

    @app.get("/api/projects/{project}/exports/{name}")
    def download(project: str, name: str) -> FileResponse:
        folder = store.studio_dir(project, "exports")
        if "/" in name or name.startswith(".") or not name.endswith(".zip") or not (folder / name).is_file():
            raise StudioError(404, f"no export {name!r}", "export the run first")
        return FileResponse(folder / name, media_type="application/zip", filename=name)

    @app.get("/api/serve")
    def serve_status() -> dict[str, Any]:
        return {"available": serve_available(), **studio.serve.status()}

    @app.post("/api/projects/{project}/runs/{run_id}/serve")
    async def serve_start(project: str, run_id: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        port = body.get("port") if isinstance(body, dict) else None
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise StudioError(422, f"port must be a whole number, got {port!r}")
        return await run_in_threadpool(studio.serve.start, store, project, run_id, port)

    @app.delete("/api/serve")
    async def serve_stop() -> dict[str, Any]:
        return await run_in_threadpool(studio.serve.stop)
