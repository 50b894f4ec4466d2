"""Try, export and serve: models held open for predictions, export zips, a ``headstart serve`` process."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .errors import StudioError
from .runs import run_dir, run_summary
from .store import Store
from .training import Engine

log = logging.getLogger("headstart")

MAX_OPEN_MODELS = 3  # each holds a head and a reference to the shared network: small, but bounded
EXPORT_FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


class ModelCache:
    """Trained runs opened with :func:`headstart.load_model`, the most recently used few kept."""

    def __init__(self, store: Store, engine: Engine) -> None:
        self.store, self.engine = store, engine
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, project: str, run_id: str) -> Any:
        path = run_dir(self.store, project, run_id)
        key = str(path)
        with self._lock:
            clf = self._models.get(key)
            if clf is not None:
                self._models.move_to_end(key)
                return clf
        from ..model import load_model
        from ..run_model import RunClassifier

        clf = load_model(path, bottleneck_dir=self.engine.cache_dir, use_cache=True)
        if isinstance(clf, RunClassifier) and clf.bundle.backbone.fine_tune_blocks is None:
            # The run's network is the one training keeps loaded: share it instead of building another.
            clf.use_runner(self.engine.runner(clf.backbone, clf.choice))
        with self._lock:
            self._models[key] = clf
            while len(self._models) > MAX_OPEN_MODELS:
                _, old = self._models.popitem(last=False)
                old.close()
        return clf

    def forget(self, project: str, run_id: str) -> None:
        key = str(self.store.project_dir(project) / "runs" / run_id)
        with self._lock:
            clf = self._models.pop(key, None)
        if clf is not None:
            clf.close()

    def close(self) -> None:
        with self._lock:
            for clf in self._models.values():
                clf.close()
            self._models.clear()


def predict(models: ModelCache, project: str, run_id: str, data: bytes, name: str, top_k: int) -> dict[str, Any]:
    from ..errors import ImageError

    clf = models.get(project, run_id)
    try:
        prediction = clf.predict_images([data], top_k=top_k, names=[name])[0]
    except ImageError as exc:
        raise StudioError(
            422, f"{name}: {getattr(exc, 'reason', None) or exc}", "use a JPEG, PNG, WebP, BMP, GIF or TIFF image"
        ) from None
    row = prediction.to_dict()
    row.setdefault("unknown", False)
    return {"run": run_id, "labels": list(clf.labels), **row}


# ---------------------------------------------------------------- export

README = """# {project}: an image classifier exported by headstart

{k} classes: {labels}.
Test accuracy {accuracy} on {n} images the model never saw in training (run {run}).

## Files

{files}

The model file holds the whole network, from RGB pixels to class probabilities
(the normalisation is inside the graph). The `.json` sidecar next to it holds the
labels, the resizing the model expects, the "unknown" threshold and the result
of the export's self-check against PyTorch.

## Run it in Python

```python
# pip install headstart   (or only the runtime: pip install {runtime_pip})
import headstart

model = headstart.load_model("{model}")
predictions, skipped = model.predict_files(["photo.jpg"], top_k=3)
for p in predictions:
    print(p.path, p.label, p.top, "unknown" if p.unknown else "")
```

## From the command line

```sh
headstart label --model {model} photo.jpg
headstart serve --model {model} --port 8000
curl -F file=@photo.jpg http://127.0.0.1:8000/v1/predict
```
"""


def export_zip(store: Store, engine: Engine, project: str, run_id: str, model_format: str) -> Path:
    """A zip of the run exported as ONNX or OpenVINO IR (self-checked), its sidecar and a README."""
    if model_format not in EXPORT_FORMATS:
        raise StudioError(422, f"unknown export format {model_format!r}", "use onnx or openvino")
    from ..errors import DataError
    from ..export import export_model

    path = run_dir(store, project, run_id)
    try:
        result = export_model(path, model_format=model_format, cache_dir=engine.cache_dir, progress=False)
    except DataError as exc:  # the self-check reads the project's test images with the run's labels
        raise StudioError(
            422,
            f"cannot check the export against this project's test images: {exc}",
            "train again (the project changed since this run), then export the new run",
        ) from None
    summary = run_summary(path)
    files = [Path(f) for f in result.files]
    accuracy = summary.get("accuracy")
    names = {
        ".onnx": "the model (ONNX)",
        ".xml": "the model (OpenVINO IR graph)",
        ".bin": "the model's weights (OpenVINO IR)",
        ".json": "the sidecar: labels, preprocessing, checks",
    }
    readme = README.format(
        project=project,
        k=len(summary.get("labels") or []),
        labels=", ".join(summary.get("labels") or []),
        accuracy=f"{100 * accuracy:.1f} %" if accuracy is not None else "unknown",
        n=summary.get("n"),
        run=run_id,
        files="\n".join(f"- `{f.name}`: {names.get(f.suffix, 'part of the model')}" for f in files)
        + "\n- `labels.txt`: the class names, one a line, in the model's output order",
        model=result.path.name,
        runtime_pip="onnxruntime numpy pillow" if model_format == "onnx" else "openvino numpy pillow",
    )
    out_dir = store.studio_dir(project, "exports")
    target = out_dir / f"{project}-{run_id}-{model_format}.zip"
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        folder = f"{project}-{model_format}"
        for f in files:
            zf.write(f, f"{folder}/{f.name}")
        zf.writestr(f"{folder}/README.md", readme)
        labels_file = path / "labels.txt"
        if labels_file.is_file():
            zf.write(labels_file, f"{folder}/labels.txt")
    os.replace(partial, target)
    return target


# ---------------------------------------------------------------- headstart serve


def serve_available() -> bool:
    return (
        importlib.util.find_spec("headstart.serve") is not None
        and importlib.util.find_spec("headstart.cli.serve") is not None
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeManager:
    """At most one ``headstart serve`` child process, on 127.0.0.1."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: dict[str, Any] = {}
        self._log: Path | None = None
        self._lock = threading.Lock()

    def start(self, store: Store, project: str, run_id: str, port: int | None = None) -> dict[str, Any]:
        if not serve_available():
            raise StudioError(
                501,
                "'headstart serve' is not part of this installation",
                "update headstart to a version with 'headstart serve'",
            )
        path = run_dir(store, project, run_id)
        if port is not None and not (1024 <= port <= 65535):
            raise StudioError(422, f"port must be between 1024 and 65535, got {port}", "or leave it empty")
        self.stop()
        port = port or _free_port()
        self._log = store.studio_dir(project) / "serve.log"
        cmd = [
            sys.executable,
            "-m",
            "headstart",
            "serve",
            "--model",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with self._lock, open(self._log, "wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self._info = {
                "project": project,
                "run": run_id,
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "pid": self._proc.pid,
                "started": time.time(),
                "model": path.name,
            }
        log.info("started headstart serve on %s (pid %d)", self._info["url"], self._proc.pid)
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            proc, info = self._proc, dict(self._info)
        if proc is None:
            return {"state": "stopped"}
        code = proc.poll()
        if code is not None:
            tail = ""
            if self._log is not None and self._log.is_file():
                lines = [x for x in self._log.read_text(errors="replace").splitlines() if x.strip()]
                tail = next((x for x in reversed(lines) if x.startswith("error:")), lines[-1] if lines else "")
            return {**info, "state": "exited", "exit_code": code, "message": tail}
        try:
            with urllib.request.urlopen(f"{info['url']}/v2/health/ready", timeout=0.5) as r:
                ready = r.status == 200
        except OSError:
            ready = False
        return {**info, "state": "ready" if ready else "starting"}

    def stop(self) -> dict[str, Any]:
        with self._lock:
            proc, self._proc = self._proc, None
            info, self._info = self._info, {}
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.info("stopped headstart serve (pid %d)", proc.pid)
        return {"state": "stopped", **({"was": info} if info else {})}
