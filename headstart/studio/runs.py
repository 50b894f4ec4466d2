"""A project's runs: the list, one run's numbers, and the images behind a confusion-matrix cell."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import StudioError
from .store import RUNS_DIR, Store

RUN_ID_CHARS = set("0123456789-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def run_dir(store: Store, project: str, run_id: Any) -> Path:
    """``<project>/runs/<run_id>`` for a run that exists (the id is checked: no path escapes)."""
    if not isinstance(run_id, str) or not run_id or set(run_id) - RUN_ID_CHARS or run_id.startswith("-"):
        raise StudioError(422, f"bad run id {run_id!r}", "use an id from GET /api/projects/{project}/runs")
    path = store.project_dir(project) / RUNS_DIR / run_id
    if not (path / "headstart.json").is_file():
        raise StudioError(404, f"no run {run_id!r} in project {project!r}", "train one first")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_summaries: dict[str, tuple[int, dict[str, Any]]] = {}  # by run folder, until its metrics.json changes


def run_summary(path: Path) -> dict[str, Any]:
    """One row of the runs list: when, how accurate on how many, on what, with which settings."""
    metrics_file = path / "metrics.json"
    try:
        stamp = metrics_file.stat().st_mtime_ns
    except OSError:
        stamp = -1
    cached = _summaries.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    metrics = _read_json(metrics_file)
    manifest = _read_json(path / "headstart.json")
    test = metrics.get("test", {})
    exports = (
        sorted(p.name for p in (path / "export").glob("*") if p.suffix in (".onnx", ".xml"))
        if (path / "export").is_dir()
        else []
    )
    row = {
        "id": path.name,
        "created": os.path.getmtime(path / "headstart.json"),
        "accuracy": test.get("accuracy"),
        "n": test.get("n"),
        "labels": test.get("labels") or manifest.get("labels"),
        "backbone": (manifest.get("backbone") or {}).get("name"),
        "fine_tune_blocks": (manifest.get("backbone") or {}).get("fine_tune_blocks"),
        "hyperparameters": manifest.get("hyperparameters", {}),
        "splits": metrics.get("splits"),
        "validation_accuracy": (metrics.get("validation") or {}).get("accuracy"),
        "timing": metrics.get("timing"),
        "exports": exports,
    }
    _summaries[str(path)] = (stamp, row)
    return row


def list_runs(store: Store, project: str) -> list[dict[str, Any]]:
    root = store.project_dir(project) / RUNS_DIR
    if not root.is_dir():
        return []
    rows = [run_summary(p) for p in root.iterdir() if (p / "headstart.json").is_file()]
    return sorted(rows, key=lambda r: (r["created"], r["id"]), reverse=True)


def run_details(store: Store, project: str, run_id: str) -> dict[str, Any]:
    """Everything the Inspect tab shows: test numbers with N, per class, the matrix, the mistakes."""
    path = run_dir(store, project, run_id)
    metrics = _read_json(path / "metrics.json")
    test = metrics.get("test", {})
    root = store.project_dir(project)
    misclassified = sorted(metrics.get("misclassified", []), key=lambda m: -float(m.get("score", 0)))
    for item in misclassified:
        item["exists"] = _exists(root, item.get("path"))
    return {
        **run_summary(path),
        "test": test,
        "per_class": test.get("per_class", {}),
        "confusion_matrix": test.get("confusion_matrix"),
        "misclassified": misclassified,
        "calibration": {k: v for k, v in (metrics.get("calibration") or {}).items() if not k.startswith("reliability")},
        "unknown": metrics.get("unknown"),
        "history": metrics.get("history", []),
        "training": metrics.get("training"),
        "bottlenecks": metrics.get("bottlenecks"),
        "skipped": metrics.get("skipped", [])[:100],
        "report": (path / "report.html").is_file(),
    }


def _exists(root: Path, rel: Any) -> bool:
    if not isinstance(rel, str) or ".." in rel.split("/") or rel.startswith("/"):
        return False
    return (root / rel).is_file()


def cell_images(store: Store, project: str, run_id: str, true: str, predicted: str) -> dict[str, Any]:
    """The test images labelled ``true`` that the run predicted as ``predicted``, most confident first."""
    from .training import read_predictions

    path = run_dir(store, project, run_id)
    snapshot = read_predictions(store, project, run_id)
    root = store.project_dir(project)
    if snapshot is None:
        # Runs trained outside the studio: the misclassified list still names the off-diagonal cells.
        if true == predicted:
            raise StudioError(
                404,
                "this run has no per-image predictions for correct answers",
                "runs trained in the studio keep them; retrain here to see this cell",
            )
        metrics = _read_json(path / "metrics.json")
        items = [
            dict(m)
            for m in metrics.get("misclassified", [])
            if m.get("label") == true and m.get("predicted") == predicted
        ]
    else:
        items = [dict(i) for i in snapshot["items"] if i["label"] == true and i["predicted"] == predicted]
    items.sort(key=lambda i: -float(i.get("score", 0)))
    for item in items:
        item["exists"] = _exists(root, item.get("path"))
    return {"true": true, "predicted": predicted, "items": items}


def delete_run(store: Store, project: str, run_id: str) -> None:
    from .training import predictions_path

    path = run_dir(store, project, run_id)
    shutil.rmtree(path)
    predictions_path(store, project, run_id).unlink(missing_ok=True)
