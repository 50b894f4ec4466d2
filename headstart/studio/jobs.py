"""Background jobs (training, the data doctor): one at a time per project, with a stream of events.

A job runs in a thread of the studio's process and appends plain-dict events
(``{"type": "step", ...}``) to its list; the server sends them as server-sent
events, replaying from the start (or from ``Last-Event-ID``) so a page that
reloads mid-run sees the whole curve.  Log lines the job's thread writes to the
``headstart`` logger become events too, so warnings (imbalanced classes, skipped
images) reach the page as they reach a terminal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import HeadstartError
from .errors import StudioError

log = logging.getLogger("headstart")

MAX_EVENTS = 5000  # a runaway job cannot grow memory without bound; the last event is always kept
FINISHED = ("done", "error", "cancelled")


class Cancelled(Exception):
    """Raised inside a job's thread when someone asked it to stop."""


@dataclass
class Job:
    id: str
    project: str
    kind: str  # train | doctor
    settings: dict[str, Any] = field(default_factory=dict)
    state: str = "running"  # running | done | error | cancelled
    started: float = field(default_factory=time.time)
    finished: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def emit(self, kind: str, **data: Any) -> None:
        with self._cond:
            if len(self.events) >= MAX_EVENTS and kind not in FINISHED:
                return
            self.events.append(
                {"id": len(self.events), "type": kind, "t": round(time.time() - self.started, 3), **data}
            )
            self._cond.notify_all()

    def check_cancel(self) -> None:
        if self.cancel_requested:
            raise Cancelled()

    def wait_events(self, after: int, timeout: float) -> list[dict[str, Any]]:
        """Events with id >= ``after``; waits up to ``timeout`` seconds for one when there is none yet."""
        with self._cond:
            if len(self.events) <= after and self.state == "running":
                self._cond.wait(timeout)
            return self.events[after:]

    @property
    def running(self) -> bool:
        return self.state == "running"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "kind": self.kind,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "events": len(self.events),
            "result": self.result,
            "error": self.error,
            "settings": self.settings,
        }


class _ThreadLogs(logging.Handler):
    """Forwards the job thread's own ``headstart`` log lines (INFO and up) as ``log`` events."""

    def __init__(self, job: Job, thread_id: int) -> None:
        super().__init__(logging.INFO)
        self.job, self.thread_id = job, thread_id
        self.seen: set[str] = set()  # retrain indexes the folder again: say each warning once

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            message = record.getMessage()
            if message in self.seen:
                return
            self.seen.add(message)
            self.job.emit("log", level=record.levelname.lower(), message=message)
        except Exception:  # logging must never break the job
            pass


class JobManager:
    """At most one running job per project; the last job of each project is kept for the page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # by id
        self._current: dict[str, Job] = {}  # by project: the running or last job
        self._counter = 0

    def start(
        self, project: str, kind: str, work: Callable[[Job], dict[str, Any]], settings: dict[str, Any] | None = None
    ) -> Job:
        with self._lock:
            current = self._current.get(project)
            if current is not None and current.running:
                what = "a training run" if current.kind == "train" else "the data doctor"
                raise StudioError(
                    409,
                    f"{what} is already running for project {project!r} "
                    f"(started {time.time() - current.started:.0f} s ago)",
                    "wait for it to finish, or cancel it",
                )
            self._counter += 1
            job = Job(f"{kind}-{self._counter}", project, kind, dict(settings or {}))
            self._jobs[job.id] = job
            self._current[project] = job
            # Keep only recent jobs: events of old ones are not needed once a newer one exists.
            for old in [j for j in self._jobs.values() if j.project == project and j is not job and not j.running]:
                if old.kind == kind:
                    del self._jobs[old.id]
        thread = threading.Thread(target=self._run, args=(job, work), name=f"studio-{job.id}", daemon=True)
        thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]]) -> None:
        handler = _ThreadLogs(job, threading.get_ident())
        logger = logging.getLogger("headstart")
        logger.addHandler(handler)
        try:
            result = work(job)
            job.result = result
            job.emit("done", **(result or {}))
            job.state = "done"
        except Cancelled:
            job.error = {"error": "cancelled"}
            job.emit("cancelled", message="cancelled")
            job.state = "cancelled"
        except StudioError as exc:
            job.error = exc.to_dict()
            job.emit("error", message=exc.message, hint=exc.hint)
            job.state = "error"
        except HeadstartError as exc:
            job.error = {"error": str(exc), "hint": exc.hint}
            job.emit("error", message=str(exc), hint=exc.hint)
            job.state = "error"
        except MemoryError:
            job.error = {"error": "out of memory"}
            job.emit("error", message="out of memory", hint="close other programs, or lower the batch size")
            job.state = "error"
        except Exception as exc:  # a bug must end the job with a message, not hang the page
            log.exception("studio job %s failed", job.id)
            first = str(exc).splitlines()[0] if str(exc) else ""
            job.error = {"error": f"unexpected {type(exc).__name__}: {first}"}
            job.emit("error", message=job.error["error"], hint="the studio's terminal shows the details")
            job.state = "error"
        finally:
            job.finished = job.finished or time.time()
            if job.state == "running":  # an exception escaped the handlers above (BaseException)
                job.state = "error"
            logger.removeHandler(handler)
            with job._cond:
                job._cond.notify_all()

    def get(self, project: str, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.project != project:
            raise StudioError(404, f"no job {job_id!r} in project {project!r}", "start one with POST .../train")
        return job

    def current(self, project: str, kind: str | None = None) -> Job | None:
        job = self._current.get(project)
        if job is not None and (kind is None or job.kind == kind):
            return job
        if kind is not None:
            found = [j for j in self._jobs.values() if j.project == project and j.kind == kind]
            return found[-1] if found else None
        return None

    def latest(self, project: str, kind: str) -> Job | None:
        found = [j for j in self._jobs.values() if j.project == project and j.kind == kind]
        return max(found, key=lambda j: j.started) if found else None

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.running]

    def cancel_all(self) -> None:
        for job in self.running():
            job.cancel_requested = True
