"""Training and the data doctor as studio jobs, on a network kept warm between runs.

Retraining after a few new images is fast because only those images run
through the network (the bottleneck cache has the rest) and because the
network itself stays loaded in the studio's process: building an OpenVINO
backbone costs seconds, which would otherwise dominate a retrain that
computes 20 vectors.  The same warm network answers the "Try" tab.

A training job first computes the missing bottlenecks itself (so the page can
show them count up), then calls :func:`headstart.train.retrain`, which finds
them all cached, and finally stores the test set's predictions so that a
confusion-matrix cell can list its images.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StudioError
from .jobs import Job
from .store import Store

log = logging.getLogger("headstart")


class Engine:
    """Networks kept loaded (one per backbone and runtime), shared by every project's jobs."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir
        self._runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self._lock = threading.Lock()  # building a runner
        self._run_lock = threading.Lock()  # a runner is used by one thread at a time

    def _models_dir(self) -> Path:
        from ..cache import models_dir

        return models_dir(self.cache_dir)

    def runner(self, backbone: Any, choice: Any) -> Callable[[np.ndarray], np.ndarray]:
        """A callable that builds the network on first use and keeps it for later jobs."""
        key = f"{backbone.fingerprint}|{choice.key}"

        def run(images: np.ndarray) -> np.ndarray:
            with self._lock:
                real = self._runners.get(key)
                if real is None:
                    from ..runtimes import create_runner

                    log.info("loading %s on %s (kept loaded for the next runs)", backbone.name, choice.key)
                    real = create_runner(backbone, choice, self._models_dir())
                    self._runners[key] = real
            with self._run_lock:
                return real(images)

        return run

    def is_warm(self, backbone: Any, choice: Any) -> bool:
        return f"{backbone.fingerprint}|{choice.key}" in self._runners


class _CountingCache:
    """The bottleneck cache, reporting how many of the images it already holds."""

    def __init__(self, cache: Any, on_lookup: Callable[[int, int], None]) -> None:
        self._cache, self._on_lookup = cache, on_lookup

    def get_many(self, extractor: str, sha256s: Any) -> dict[str, np.ndarray]:
        found = self._cache.get_many(extractor, sha256s)
        self._on_lookup(len(set(sha256s)), len(found))
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def _extract(job: Job, engine: Engine, config: Any, index: Any) -> Any:
    """Compute (or read) every bottleneck, emitting ``bottlenecks`` events as batches finish."""
    from ..backbones import resolve_backbone
    from ..cache import BottleneckCache
    from ..features import compute_bottlenecks
    from ..runtimes import resolve_runtime

    backbone = resolve_backbone(config.backbone, config.weights, crop_pct=config.crop_pct)
    choice = resolve_runtime(config.runtime, config.precision)
    state = {"total": 0, "missing": 0, "done": 0}

    def on_lookup(total: int, cached: int) -> None:
        state.update(total=total, missing=total - cached)
        job.emit(
            "bottlenecks",
            total=total,
            cached=cached,
            missing=total - cached,
            done=0,
            warm=engine.is_warm(backbone, choice),
        )

    warm = engine.runner(backbone, choice)

    def counting(images: np.ndarray) -> np.ndarray:
        job.check_cancel()
        out = warm(images)
        state["done"] += len(images)
        job.emit(
            "bottlenecks",
            total=state["total"],
            missing=state["missing"],
            done=state["done"],
            cached=state["total"] - state["missing"],
        )
        return out

    with BottleneckCache(config.bottleneck_dir) as cache:
        return compute_bottlenecks(
            index.records,
            backbone,
            _CountingCache(cache, on_lookup),  # type: ignore[arg-type]
            runtime=choice,
            runner=counting,
            batch_size=config.extraction_batch_size,
            workers=config.workers,
            progress=False,
        )


def train_work(
    store: Store, engine: Engine, models: Any, project: str, settings: dict[str, Any]
) -> Callable[[Job], dict[str, Any]]:
    """The body of a training job for ``project`` with checked ``settings``."""

    def work(job: Job) -> dict[str, Any]:
        from ..bundle import default_run_dir
        from ..config import RetrainConfig, check_config
        from ..data import index_image_dir
        from ..train import retrain

        start = time.perf_counter()
        root = store.project_dir(project)
        output = default_run_dir(store.runs_dir(project))
        config = RetrainConfig(
            image_dir=root, output_dir=output, bottleneck_dir=engine.cache_dir, progress=False, **settings
        )
        check_config(config)
        job.emit("phase", phase="index", message="Reading the class folders")
        index = index_image_dir(root, config.validation_percentage, config.testing_percentage)
        counts = index.counts()
        job.emit(
            "index",
            classes=list(index.labels),
            images=len(index.records),
            skipped=len(index.skipped),
            splits={s: sum(c[s] for c in counts.values()) for s in ("training", "validation", "testing")},
        )
        bottlenecks = None
        if not config.fine_tune_blocks:  # fine-tuning caches its own maps: retrain reports those itself
            job.emit("phase", phase="bottlenecks", message="Turning images into bottleneck vectors")
            bottlenecks = _extract(job, engine, config, index)
        job.check_cancel()
        job.emit("phase", phase="training", message="Training the last layer")

        def on_step(step: Any) -> None:
            job.check_cancel()
            row = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(step).items()}
            job.emit("step", total=step.steps, **row)

        result = retrain(config, on_step=on_step)
        run_id = result.run_dir.name
        test = result.metrics["test"]
        seconds = round(time.perf_counter() - start, 3)
        done = {
            "run": run_id,
            "accuracy": test["accuracy"],
            "n": test["n"],
            "seconds": seconds,
            "bottlenecks": result.metrics.get("bottlenecks"),
            "computed": bottlenecks.computed if bottlenecks is not None else None,
        }
        # The accuracy goes to the page first; the per-image snapshot for the matrix follows.
        job.emit("result", **done)
        job.emit("phase", phase="snapshot", message="Keeping the test predictions for the confusion matrix")
        try:
            write_predictions(store, engine, models, project, result.run_dir, index)
        except Exception as exc:  # the run is saved; only the cell lists are missing
            log.warning("could not keep the test predictions of %s: %s", run_id, exc)
        return done

    return work


def predictions_path(store: Store, project: str, run_id: str) -> Path:
    return store.studio_dir(project, "predictions") / f"{run_id}.json"


def write_predictions(store: Store, engine: Engine, models: Any, project: str, run_dir: Path, index: Any) -> None:
    """Every test image's predicted label, so a confusion-matrix cell can show its images."""
    bundle_test = [r for r in index.records if r.split == "testing" and r.path.is_file()]
    clf = models.get(project, run_dir.name)
    kept, proba, ood, _ = clf.score_records(bundle_test)
    unknown = clf.is_unknown(ood)
    labels = list(clf.labels)
    items = []
    order = proba.argmax(axis=1) if len(kept) else np.zeros(0, dtype=int)
    for i, (record, p) in enumerate(zip(kept, order)):
        items.append(
            {
                "path": record.relpath,
                "label": record.label,
                "predicted": labels[int(p)],
                "score": round(float(proba[i, p]), 6),
                "unknown": bool(unknown[i]) if unknown is not None else False,
            }
        )
    path = predictions_path(store, project, run_dir.name)
    path.write_text(json.dumps({"labels": labels, "items": items}))


def read_predictions(store: Store, project: str, run_id: str) -> dict[str, Any] | None:
    path = predictions_path(store, project, run_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def doctor_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("headstart.doctor") is not None


def doctor_work(store: Store, engine: Engine, project: str, backbone: str) -> Callable[[Job], dict[str, Any]]:
    def work(job: Job) -> dict[str, Any]:
        if not doctor_available():
            raise StudioError(
                501,
                "the data doctor is not part of this installation",
                "update headstart to a version with 'headstart doctor'",
            )
        from ..doctor import doctor

        root = store.project_dir(project)
        job.emit("phase", phase="doctor", message="Checking for label errors, duplicates, leaks and outliers")
        try:
            report = doctor(root, bottleneck_dir=engine.cache_dir, backbone=backbone, progress=False)
        except ImportError as exc:
            raise StudioError(
                501,
                f"the data doctor needs a package that is missing: {exc.name or exc}",
                "pip install 'headstart[doctor]'",
            ) from exc
        data = {
            "created": time.time(),
            "summary": json.loads(json.dumps(report.summary(), default=str)),
            "findings": json.loads(json.dumps(report.to_dict(), default=str)),
        }
        (store.studio_dir(project) / "doctor.json").write_text(json.dumps(data))
        return {"summary": data["summary"]}

    return work


def read_doctor(store: Store, project: str) -> dict[str, Any] | None:
    """The last report, each finding marked with whether its image is still there (fixes move files)."""
    try:
        report = json.loads((store.studio_dir(project) / "doctor.json").read_text())
    except (OSError, ValueError):
        return None
    root = store.project_dir(project)

    def there(rel: Any) -> bool:
        safe = isinstance(rel, str) and ".." not in rel.split("/") and not rel.startswith("/")
        return safe and (root / rel).is_file()

    for items in (report.get("findings") or {}).values():
        for item in items:
            if isinstance(item, dict) and "path" in item:
                item["exists"] = there(item["path"])
                if isinstance(item.get("paths"), list):
                    item["paths"] = [p for p in item["paths"] if there(p)]
    return report
