"""A trained model on disk: the run directory.

Layout (no pickles anywhere, so loading a model never runs code from it)::

    labels.txt          one label per line, as retrain.py's --output_labels wrote it
    head.safetensors    the trained last layer, float32 tensors
    headstart.json      manifest: labels, backbone, preprocessing, head config,
                        hyperparameters, versions, sha256 of the two files above
    metrics.json        evaluation results (optional)
    ...                 extra files (report.html, skipped.csv, ...)

Writes are atomic: a run directory is either the previous bundle or the new one,
never half of each. Loads are paranoid: every way a bundle can be missing, edited or
inconsistent becomes a :class:`ModelError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import secrets
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .data import Preprocessing
from .errors import DataError, ModelError, UsageError
from .manifest import (
    BACKBONE_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_NAME,
    LABELS_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    _check_head_config,
    _check_labels,
    _check_manifest,
    _check_tensors,
    _fail,
)

log = logging.getLogger("headstart")

_RESERVED = {MANIFEST_NAME, HEAD_NAME, LABELS_NAME, METRICS_NAME}
# Distribution names to try for each optional component, first found wins.
_OPTIONAL_DISTS = {
    "torch": ("torch",),
    "timm": ("timm",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "ort-nightly"),
    "openvino": ("openvino",),
}


@dataclass(frozen=True)
class BackboneRecord:
    """The manifest's ``backbone`` section: which network and weights made the bottlenecks, on what runtime."""

    name: str
    timm_name: str | None = None
    weights_fingerprint: str | None = None
    weights: str | None = None
    num_features: int | None = None
    runtime: str | None = None
    precision: str | None = None
    fine_tune_blocks: int | str | None = None  # fine-tuned runs: the stages trained (weights: BACKBONE_NAME)
    base_weights_fingerprint: str | None = None  # fine-tuned runs: the pretrained weights they started from

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class DataRecord:
    """The manifest's ``data`` section: where the training images were and how they were split."""

    image_dir: str
    testing_percentage: float = 10.0
    validation_percentage: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataRecord:
        return cls(
            str(d["image_dir"]), float(d.get("testing_percentage", 10.0)), float(d.get("validation_percentage", 10.0))
        )


@dataclass(frozen=True)
class Bundle:
    """Everything needed to rebuild a trained classifier, as read and verified from disk."""

    path: Path
    labels: tuple[str, ...]
    backbone: BackboneRecord
    preprocessing: Preprocessing
    head_tensors: dict[str, np.ndarray]
    head_config: dict
    hyperparameters: dict
    versions: dict
    created: str
    data: DataRecord | None
    head_sha256: str
    metrics: dict | None  # the run's results, for reports only: never an input to anything else


# --------------------------------------------------------------------------- small helpers


def versions() -> dict:
    """Versions of headstart, Python, numpy and the installed ML packages.

    Optional packages are looked up with ``importlib.metadata`` so that recording
    versions never imports torch or openvino (seconds of start-up time).
    """
    try:
        own = importlib.metadata.version("headstart")
    except importlib.metadata.PackageNotFoundError:
        own = str(getattr(sys.modules.get("headstart"), "__version__", "unknown"))
    result = {"headstart": own, "python": platform.python_version(), "numpy": np.__version__}
    for name, dists in _OPTIONAL_DISTS.items():
        for dist in dists:
            try:
                result[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return result


def default_run_dir(base: str | Path = "runs") -> Path:
    """``base/<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3`` ... appended if that exists.

    The folder is not created: :func:`save_bundle` creates it atomically at the end of
    training, so a failed run leaves no empty folder behind.
    """
    root = Path(base)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _labels_text(labels: Sequence[str]) -> str:
    return "".join(f"{label}\n" for label in labels)


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (rename, create). Not possible on Windows: skip there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _jsonable(obj: Any) -> Any:
    """Plain JSON values from what callers naturally pass (numpy scalars and arrays,
    tuples, Paths). NaN/inf become null: JSON has no such numbers, and metrics such as
    the precision of a never-predicted class are legitimately undefined."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.floating) and obj.dtype.itemsize < 8:
        return _jsonable(float(str(obj)))  # float32(0.1) -> 0.1, not 0.10000000149011612
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _json_bytes(obj: Any) -> bytes:
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


# --------------------------------------------------------------------------- save


def _check_run_dir(run_dir: Path) -> bool:
    """Return whether ``run_dir`` exists; refuse to replace anything but a bundle or an empty folder."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise UsageError(f"Output path {run_dir} exists and is not a folder", hint="choose another --output_dir")
    if (run_dir / MANIFEST_NAME).is_file() or not any(run_dir.iterdir()):
        return True
    raise UsageError(
        f"Output folder {run_dir} holds files that are not a headstart run; not overwriting it",
        hint="choose another --output_dir, or empty that folder",
    )


def _check_extra_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if (
        not name
        or rel.is_absolute()
        or "\\" in name
        or any(p in ("", ".", "..") for p in rel.parts)
        or str(rel) in _RESERVED
    ):
        raise ValueError(
            f"extra file name {name!r} must be a relative path inside the run folder and not one of {sorted(_RESERVED)}"
        )
    return rel


def save_bundle(
    run_dir: str | Path,
    *,
    labels: Sequence[str],
    backbone: BackboneRecord | Mapping[str, Any],
    preprocessing: Preprocessing | Mapping[str, Any],
    head_tensors: Mapping[str, np.ndarray],
    head_config: dict,
    hyperparameters: dict,
    metrics: dict | None = None,
    data: DataRecord | None = None,
    extra_files: dict[str, bytes | str] | None = None,
    output_labels: str | Path | None = None,
) -> Path:
    """Write a bundle into ``run_dir`` atomically and return ``run_dir``.

    Everything is written and fsynced in a hidden sibling folder, then renamed into
    place; an existing bundle (or empty folder) at ``run_dir`` is swapped out and
    deleted only after the new one is in. A failure at any point leaves the previous
    bundle untouched and no temp folder behind. A folder holding anything else is
    refused, so a mistyped ``--output_dir`` cannot wipe a user's files.
    ``output_labels`` also writes labels.txt there (retrain.py's ``--output_labels``).
    """
    run_dir = Path(run_dir).expanduser()
    if run_dir.is_symlink() or run_dir.name in ("", ".", ".."):  # rename the real folder, not "."
        run_dir = run_dir.resolve()
    try:
        labels = _check_labels(list(labels), LABELS_NAME)
    except ModelError as err:  # labels come from folder names: the user's data, not a model
        raise DataError(f"Cannot save the model: {err}", hint="rename that class folder") from None
    tensors = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in head_tensors.items()}
    _check_head_config(head_config, len(labels), "head_config")
    _check_tensors(tensors, head_config, "head_tensors")
    extras = {_check_extra_name(k): v for k, v in (extra_files or {}).items()}
    replacing = _check_run_dir(run_dir)

    from safetensors.numpy import save as save_safetensors

    head_bytes = save_safetensors(tensors, metadata={"format": FORMAT_NAME})
    labels_bytes = _labels_text(labels).encode("utf-8")
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "labels": list(labels),
        "backbone": backbone.to_dict() if isinstance(backbone, BackboneRecord) else dict(backbone),
        "preprocessing": preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else dict(preprocessing),
        **({"data": data.to_dict()} if data is not None else {}),
        "head_config": dict(head_config),
        "hyperparameters": dict(hyperparameters),
        "versions": versions(),
        "files": {
            HEAD_NAME: {
                "sha256": _sha256(head_bytes),
                "size": len(head_bytes),
                "tensors": {k: list(v.shape) for k, v in tensors.items()},
            },
            LABELS_NAME: {"sha256": _sha256(labels_bytes), "size": len(labels_bytes)},
        },
    }
    tuned = extras.get(PurePosixPath(BACKBONE_NAME))
    if tuned is not None:  # a fine-tuned backbone: checksummed, and verified on load, like the head
        tuned_bytes = tuned.encode("utf-8") if isinstance(tuned, str) else bytes(tuned)
        files: dict[str, Any] = manifest["files"]  # type: ignore[assignment]
        files[BACKBONE_NAME] = {"sha256": _sha256(tuned_bytes), "size": len(tuned_bytes)}
    _check_manifest(json.loads(_json_bytes(manifest)))

    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = parent / f".{run_dir.name}.partial-{token}"
    old = parent / f".{run_dir.name}.old-{token}"
    labels_out = Path(output_labels).expanduser() if output_labels is not None else None
    labels_tmp = labels_out.with_name(f".{labels_out.name}.partial-{token}") if labels_out else None
    committed = False
    try:
        tmp.mkdir()
        _write_synced(tmp / HEAD_NAME, head_bytes)
        _write_synced(tmp / LABELS_NAME, labels_bytes)
        if metrics is not None:
            _write_synced(tmp / METRICS_NAME, _json_bytes(metrics))
        for rel, content in extras.items():
            payload = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            _write_synced(tmp.joinpath(*rel.parts), payload)
        _write_synced(tmp / MANIFEST_NAME, _json_bytes(manifest))  # last: its presence marks a bundle
        _fsync_dir(tmp)
        if labels_tmp is not None:
            _write_synced(labels_tmp, labels_bytes)

        # Commit: everything that can fail slowly has happened; only renames remain.
        if replacing and (run_dir / MANIFEST_NAME).is_file():
            log.info("replacing the previous run in %s", run_dir)
        if replacing:
            os.replace(run_dir, old)
            try:
                os.replace(tmp, run_dir)
            except BaseException:
                os.replace(old, run_dir)
                raise
        else:
            os.replace(tmp, run_dir)
        committed = True
        _fsync_dir(parent)
        if labels_tmp is not None and labels_out is not None:
            os.replace(labels_tmp, labels_out)
            _fsync_dir(labels_out.parent)
    except OSError as err:
        if committed:
            raise ModelError(
                f"The model was saved to {run_dir}, but {labels_out} cannot be written: {err}",
                hint=f"copy {run_dir / LABELS_NAME} there yourself",
            ) from err
        raise ModelError(
            f"Cannot write the model to {run_dir}: {err}",
            hint="check free disk space and permissions; any previous model there is unchanged",
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if labels_tmp is not None:
            labels_tmp.unlink(missing_ok=True)
        if committed and old.exists():  # the previous bundle, now replaced
            shutil.rmtree(old, ignore_errors=True)
            if old.exists():
                log.warning("Could not delete the previous model at %s; delete it by hand", old)
    log.info("Saved model (%d classes) to %s", len(labels), run_dir)
    return run_dir


# --------------------------------------------------------------------------- load


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _fail(name, f"missing from {path.parent}") from None
    except OSError as err:
        raise _fail(name, f"cannot be read: {err}") from err


def load_bundle(run_dir: str | Path) -> Bundle:
    """Read and verify a bundle written by :func:`save_bundle`.

    Checks, in order: folder and manifest present, manifest schema, checksums of
    head.safetensors and labels.txt, labels.txt against the manifest, tensors against
    head_config. Any failure is a :class:`ModelError` naming the file and the problem;
    tensors are read with safetensors, never unpickled.
    """
    root = Path(run_dir).expanduser()
    if not root.exists():
        raise ModelError(
            f"Model folder {root} does not exist", hint="pass the --output_dir of a finished headstart run"
        )
    if not root.is_dir():
        raise ModelError(f"{root} is not a folder", hint="pass the run folder, not a file in it")
    if not (root / MANIFEST_NAME).is_file():
        raise ModelError(
            f"{root} is not a headstart run folder (no {MANIFEST_NAME})",
            hint="pass the --output_dir of a finished headstart run",
        )

    raw = _read(root / MANIFEST_NAME, MANIFEST_NAME)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _fail(MANIFEST_NAME, f"not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
    _check_manifest(manifest)
    labels = tuple(manifest["labels"])

    head_bytes = _read(root / HEAD_NAME, HEAD_NAME)
    labels_bytes = _read(root / LABELS_NAME, LABELS_NAME)
    for name, data in ((HEAD_NAME, head_bytes), (LABELS_NAME, labels_bytes)):
        if _sha256(data) != manifest["files"][name]["sha256"]:
            raise _fail(name, "checksum mismatch: the file was modified after training")
    if BACKBONE_NAME in manifest["files"] or manifest["backbone"].get("fine_tune_blocks") is not None:
        expected = (manifest["files"].get(BACKBONE_NAME) or {}).get("sha256")
        if not isinstance(expected, str) or _sha256(_read(root / BACKBONE_NAME, BACKBONE_NAME)) != expected:
            raise _fail(BACKBONE_NAME, "checksum missing or mismatched: the tuned backbone was modified after training")

    try:
        file_labels = labels_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(LABELS_NAME, "not UTF-8 text") from None
    if file_labels != _labels_text(labels):
        raise _fail(LABELS_NAME, f"its labels disagree with {MANIFEST_NAME}")

    from safetensors.numpy import load as load_safetensors

    try:
        tensors = load_safetensors(head_bytes)
    except Exception as err:  # safetensors raises its own error type for bad headers
        raise _fail(HEAD_NAME, f"not a valid safetensors file ({err})") from None
    _check_tensors(tensors, manifest["head_config"], HEAD_NAME)

    metrics: dict | None = None
    metrics_path = root / METRICS_NAME
    if metrics_path.exists():
        try:
            metrics = json.loads(_read(metrics_path, METRICS_NAME).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _fail(METRICS_NAME, "not valid JSON", hint="delete it or re-evaluate the model") from None
        if not isinstance(metrics, dict):
            raise _fail(METRICS_NAME, "expected a JSON object", hint="delete it or re-evaluate the model")

    try:
        recorded = DataRecord.from_dict(manifest["data"]) if isinstance(manifest.get("data"), dict) else None
    except (KeyError, TypeError, ValueError):
        raise _fail(MANIFEST_NAME, "'data' is malformed") from None
    return Bundle(
        path=root,
        labels=labels,
        backbone=BackboneRecord.from_dict(manifest["backbone"]),
        preprocessing=Preprocessing.from_dict(manifest["preprocessing"]),
        head_tensors=tensors,
        head_config=manifest["head_config"],
        hyperparameters=manifest["hyperparameters"],
        versions=manifest["versions"],
        created=manifest["created"],
        data=recorded,
        head_sha256=manifest["files"][HEAD_NAME]["sha256"],
        metrics=metrics,
    )
