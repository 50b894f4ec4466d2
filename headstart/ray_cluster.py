"""The Ray cluster itself: the ``--ray`` settings, the connection, the size of the actor pool, Ray Data's output.

Nothing here knows about bottlenecks; :mod:`headstart.distributed` runs
extraction on the cluster these pieces reach.  Kept apart so that checking the
``--ray`` flags (the settings table, the CLI) imports no more than this, and so
the extraction module reads as the plan, the cluster's work and the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

RAY_HINT = 'pip install "headstart[ray]"'
LOCAL_OBJECT_STORE = 2 * 2**30  # bytes, for a cluster started by --ray local


@dataclass(frozen=True)
class RaySettings:
    """Where and how to run extraction on Ray (``--ray``, ``--ray_actors`` ...)."""

    address: str  # "auto", "local" or "ray://host:port" (or "host:port")
    actors: int | None = None  # None: as many as the cluster holds (see plan_pool)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: a whole node for a CPU actor, one core for a GPU actor


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line usage error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError("--ray needs Ray (with Ray Data), which is not installed", hint=RAY_HINT) from exc
    return ray


def check_address(address: str) -> str | None:
    """None when ``address`` can name a Ray cluster, else what is wrong with it (for the settings table)."""
    if not isinstance(address, str) or not address.strip():
        return "must be auto, local, ray://HOST:PORT or HOST:PORT"
    if address in ("auto", "local") or address.startswith("ray://"):
        return None
    host, _, port = address.rpartition(":")
    return None if host and port.isdigit() else "must be auto, local, ray://HOST:PORT or HOST:PORT"


@contextmanager
def connect(address: str) -> Iterator[Any]:
    """A connection to the cluster for the duration of one extraction.

    An existing connection (``ray.init`` called by the caller) is used as it is
    and left open; otherwise ``local`` starts a cluster on this machine that
    ends with the run, and ``auto`` / ``ray://`` connect to a running one.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            # In-flight blocks are a few MB each: 2 GiB of object store is plenty, and spares the machine's memory.
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at --ray {address}: {str(exc).splitlines()[0]}",
            hint="start one with `ray start --head`, pass its address, or use --ray local",
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Pool:
    """The actor pool for this cluster: how many actors, how many fit now, what each holds."""

    wanted: int
    now: int
    nodes: int
    cpus_per_actor: float


def plan_pool(nodes: Sequence[dict[str, Any]], settings: RaySettings) -> Pool:
    """Size the pool from the alive nodes' resources; a usage error when no actor can ever start.

    By default a CPU actor holds every core of a node (one per node, the
    runtime's threads on all of them: measured faster than one single-core
    actor per core, docs/SCALE.md); a GPU actor holds ``gpus_per_actor`` GPUs and one core.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    node_cpus = [float(r.get("CPU", 0)) for r in alive if r.get("CPU", 0) > 0]
    gpus = sum(float(r.get("GPU", 0)) for r in alive)
    if settings.gpus_per_actor > 0:
        if gpus < settings.gpus_per_actor:
            raise UsageError(
                f"--ray_gpus_per_actor {settings.gpus_per_actor:g}, but the cluster has {gpus:g} GPU(s)",
                hint="use --ray_gpus_per_actor 0 for CPU actors",
            )
        per_actor = settings.cpus_per_actor or 1.0
        fit = int(gpus // settings.gpus_per_actor)
    else:
        per_actor = settings.cpus_per_actor or (min(node_cpus) if node_cpus else 1.0)
        fit = sum(int(c // per_actor) for c in node_cpus)
    if fit < 1:
        raise UsageError(
            f"no node of the Ray cluster has the {per_actor:g} CPU(s) an actor holds", hint="lower --ray_cpus_per_actor"
        )
    wanted = settings.actors or fit
    return Pool(wanted, min(wanted, fit), len(alive), per_actor)


class _Unless(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _quiet_ray_data(ray: Any) -> None:
    """One progress bar, the driver's: Ray Data's own bars, banners and the note that they are off go."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    progress = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _Unless) for f in progress.filters):
        progress.addFilter(_Unless("Progress bars disabled"))


__all__ = ["RAY_HINT", "Pool", "RaySettings", "check_address", "connect", "import_ray", "plan_pool"]
