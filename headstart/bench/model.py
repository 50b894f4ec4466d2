"""The model benchmark (``headstart bench --model``): each runtime and precision side by side.

A run directory or an exported model is timed per runtime (batch-1 latency,
batch-32 throughput) and scored on test images (accuracy, top-1 agreement
with PyTorch eager fp32).  The graphs come from :mod:`headstart.export`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bundle import Bundle, load_bundle
from ..data import ImageRecord, Preprocessing, index_image_dir
from ..errors import DataError, HeadstartError, UsageError
from ..export import DEFAULT_CALIBRATION_IMAGES, create_classifier, describe_export
from ..export_check import MAX_CHECK_IMAGES, CheckImages, decode_images, find_check_images, predict, spread_records
from ..export_convert import quantize_int8, write_onnx
from ..runtimes import Runner, RuntimeChoice, create_session_runner
from .timing import time_calls

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")

BENCH_RUNTIMES = ("torch", "cuda", "onnxruntime", "openvino", "tensorrt", "litert", "tensorflow")
LATENCY_REPEATS = 30
THROUGHPUT_BATCHES = 3
THROUGHPUT_BATCH = 32


@dataclass(frozen=True)
class _Candidate:
    runtime: str
    precision: str
    model: str
    create: Callable[[], Runner]


def _measure(runner: Runner, x: np.ndarray, repeats: int = LATENCY_REPEATS) -> dict[str, float]:
    """Batch-1 latency p50/p90 (ms) over distinct images, and batch-32 throughput (images/s)."""
    runner(x[:1])  # warm up: lazy allocations, kernel selection
    ones = iter([x[i % len(x) : i % len(x) + 1] for i in range(repeats)])
    latency = time_calls(lambda: runner(next(ones)), repeats=repeats, warmup=0)
    batch = np.resize(x, (THROUGHPUT_BATCH, *x.shape[1:])) if len(x) < THROUGHPUT_BATCH else x[:THROUGHPUT_BATCH]
    throughput = time_calls(lambda: runner(batch), repeats=THROUGHPUT_BATCHES, warmup=1)
    return {
        "latency_p50_ms": round(latency.p50_ms, 3),
        "latency_p90_ms": round(latency.p90_ms, 3),
        "throughput_ips": round(throughput.calls_per_s * THROUGHPUT_BATCH, 1),
    }


def _torch_importable() -> bool:
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _session(path: Path, runtime: str, precision: str) -> Callable[[], Runner]:
    """A factory that opens ``path`` on ``runtime`` only when the benchmark reaches it."""
    return lambda: create_session_runner(path, RuntimeChoice(runtime, precision))


def _bench_candidates(
    bundle: Bundle | None,
    exported: Path | None,
    exported_format: str | None,
    training: Sequence[ImageRecord],
    prep: Preprocessing,
    workdir: Path,
    wanted: Sequence[str],
) -> list[_Candidate]:
    from ..runtimes import cpu_has_native_bf16, cuda_available

    found: list[_Candidate] = []
    module_box: dict[str, Any] = {}
    have_torch = bundle is not None and _torch_importable()

    def module() -> "torch.nn.Module":
        if "m" not in module_box:
            from ..run_model import resolve_model_backbone

            assert bundle is not None  # only called when have_torch, which needs a bundle

            module_box["m"] = create_classifier(bundle, resolve_model_backbone(bundle))
        return module_box["m"]

    def torch_factory(choice: RuntimeChoice, compiled: bool = False) -> Callable[[], Runner]:
        def create() -> Runner:
            import copy

            from ..runtimes.torch_runner import create_torch_runner

            return create_torch_runner(copy.deepcopy(module()), choice, compile=compiled)

        return create

    if have_torch and "torch" in wanted:
        found.append(_Candidate("torch", "fp32", "PyTorch eager", torch_factory(RuntimeChoice("torch", "fp32"))))
    gpu = have_torch and cuda_available()
    if gpu and "cuda" in wanted:
        found.append(_Candidate("cuda", "fp32", "PyTorch", torch_factory(RuntimeChoice("cuda", "fp32"))))
        found.append(_Candidate("cuda", "fp16", "PyTorch channels-last", torch_factory(RuntimeChoice("cuda", "fp16"))))
        found.append(
            _Candidate(
                "cuda",
                "fp16",
                "PyTorch channels-last + torch.compile",
                torch_factory(RuntimeChoice("cuda", "fp16"), compiled=True),
            )
        )

    # ONNX files: the given export, or fp32 and int8 built from the run for this benchmark.
    files: list[tuple[Path, str, str]] = []  # (path, format, precision)
    if exported is not None:
        from ..deployed import read_model_info

        files.append((exported, exported_format or "onnx", read_model_info(exported).precision))
    elif bundle is not None and have_torch:
        from ..run_model import resolve_model_backbone

        backbone = resolve_model_backbone(bundle)
        description = describe_export(bundle, backbone, "onnx", "fp32")
        fp32 = write_onnx(module(), workdir / "model-fp32.onnx", prep.input_size, description)
        files.append((fp32, "onnx", "fp32"))
        if training:
            x_cal, _ = decode_images(spread_records(training, DEFAULT_CALIBRATION_IMAGES, seed=1), prep)
            files.append((quantize_int8(fp32, workdir / "model-int8.onnx", x_cal), "onnx", "int8"))

    import importlib.util

    for path, fmt, precision in files:
        label = path.name
        if fmt == "onnx" and "onnxruntime" in wanted and importlib.util.find_spec("onnxruntime"):
            found.append(_Candidate("onnxruntime", precision, label, _session(path, "onnxruntime", "fp32")))
        if fmt in ("onnx", "openvino") and "openvino" in wanted and importlib.util.find_spec("openvino"):
            found.append(_Candidate("openvino", precision, label, _session(path, "openvino", "fp32")))
            if precision == "fp32" and cpu_has_native_bf16():
                found.append(_Candidate("openvino", "bf16", label, _session(path, "openvino", "bf16")))
        runs_it = {"tflite": "litert", "saved_model": "tensorflow"}.get(fmt, "")  # exports of headstart.tf_export
        if runs_it in wanted and importlib.util.find_spec(runs_it if runs_it == "tensorflow" else "ai_edge_litert"):
            found.append(_Candidate(runs_it, precision, label, _session(path, runs_it, "fp32")))
        if fmt == "tensorrt" and "tensorrt" in wanted:
            from ..runtimes.tensorrt import create_engine_runner

            found.append(_Candidate("tensorrt", precision, label, partial(create_engine_runner, path)))
    onnx_fp32 = next((p for p, f, q in files if f == "onnx" and q == "fp32"), None)
    if onnx_fp32 is not None and gpu and "tensorrt" in wanted and importlib.util.find_spec("tensorrt"):
        from ..runtimes.tensorrt import build_engine, create_engine_runner

        def trt_fp16() -> Runner:
            engine = build_engine(
                onnx_fp32, workdir / "model-fp16.engine", input_size=prep.input_size, precision="fp16"
            )
            return create_engine_runner(engine)

        found.append(_Candidate("tensorrt", "fp16", "engine from model-fp32.onnx", trt_fp16))
    return found


def bench_model(
    model: Path, *, image_dir: Path | None = None, runtimes: Sequence[str] | None = None, progress: bool = True
) -> list[dict]:
    """Each available runtime and precision side by side: batch-1 latency, batch-32 throughput, test accuracy.

    ``model`` is a run directory (PyTorch eager fp32 is the reference; fp32 and
    int8 ONNX are built for the comparison) or an exported model file.  Test
    images are the run's test split, or ``image_dir`` (one folder per label).
    One row per runtime; a runtime that fails gets a row with its error.
    """
    from ..deployed import is_exported_model, read_model_info

    model = Path(model)
    wanted = list(runtimes) if runtimes else list(BENCH_RUNTIMES)
    unknown = [r for r in wanted if r not in BENCH_RUNTIMES]
    if unknown:
        raise UsageError(f"unknown runtime {unknown[0]!r}", hint=f"use some of {', '.join(BENCH_RUNTIMES)}")
    exported, exported_format, bundle = None, None, None
    if is_exported_model(model):
        info = read_model_info(model)
        exported, exported_format, labels, prep = info.path, info.model_format, info.labels, info.preprocessing
        run_dir = Path(info.provenance.get("run_dir", ""))
        if (run_dir / "headstart.json").is_file():
            try:
                bundle = load_bundle(run_dir)
            except HeadstartError as exc:
                log.warning("not comparing with PyTorch: %s", exc)
    else:
        bundle = load_bundle(model)
        labels, prep = bundle.labels, bundle.preprocessing
    if bundle is not None:
        images = find_check_images(bundle, image_dir)
    elif image_dir is not None:
        index = index_image_dir(image_dir, 0, 100, labels=labels, require_training=False)
        images = CheckImages(index.root, "--image_dir", index.split("testing"), ())
    else:
        images = CheckImages(None, "none", (), (), "no run directory to find test images in")
    test = spread_records(images.test, MAX_CHECK_IMAGES)
    if not test:
        raise DataError(
            f"no test images to benchmark on: {images.note or 'none found'}",
            hint="pass --image_dir with labelled images (one folder per label)",
        )
    x, test = decode_images(test, prep)
    y = np.array([labels.index(r.label) for r in test], dtype=np.int64)
    rows: list[dict] = []
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        candidates = _bench_candidates(bundle, exported, exported_format, images.training, prep, Path(tmp), wanted)
        for number, cand in enumerate(candidates, 1):
            if progress:
                log.info("[%d/%d] %s %s (%s)", number, len(candidates), cand.runtime, cand.precision, cand.model)
            row: dict[str, Any] = {
                "runtime": cand.runtime,
                "precision": cand.precision,
                "model": cand.model,
                "n": int(len(x)),
            }
            try:
                t0 = time.perf_counter()
                runner = cand.create()
                runner(x[:1])
                row["setup_s"] = round(time.perf_counter() - t0, 2)
                row.update(_measure(runner, x))
                proba = predict(runner, x)[:, : len(labels)]  # an ood_score column may follow
                row["accuracy"] = round(float(np.mean(proba.argmax(1) == y)), 4)
                if cand.runtime == "torch" and reference is None:
                    reference = proba
                if reference is not None:
                    row["agreement"] = round(float(np.mean(proba.argmax(1) == reference.argmax(1))), 4)
                del runner
            except Exception as exc:  # one broken runtime must not hide the others
                log.warning("%s %s failed: %s", cand.runtime, cand.precision, exc)
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            rows.append(row)
    eager = next((r for r in rows if r["runtime"] == "torch" and "latency_p50_ms" in r), None)
    for row in rows:
        if eager and "latency_p50_ms" in row:
            row["latency_speedup"] = round(eager["latency_p50_ms"] / row["latency_p50_ms"], 2)
    return rows


def format_bench_rows(rows: Sequence[dict]) -> str:
    """The benchmark as a plain-text table, one row per runtime and precision."""
    columns = [
        ("runtime", "runtime", "l"),
        ("precision", "precision", "l"),
        ("model", "model", "l"),
        ("latency_p50_ms", "b1 p50 ms", "r"),
        ("latency_p90_ms", "b1 p90 ms", "r"),
        ("latency_speedup", "vs eager", "r"),
        ("throughput_ips", "b32 img/s", "r"),
        ("accuracy", "accuracy %", "r"),
        ("agreement", "agrees %", "r"),
    ]

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key in ("accuracy", "agreement"):
            return f"{100 * value:.1f}"
        if key == "latency_speedup":
            return f"{value:.2f}x"
        if isinstance(value, float):
            return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        return str(value)

    table = [[cell(r, key) for key, _, _ in columns] for r in rows]
    widths = [max([len(title)] + [len(t[i]) for t in table]) for i, (_, title, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if a == "r" else v.ljust(w) for v, w, (_, _, a) in zip(values, widths, columns)
        ).rstrip()

    lines = [line([title for _, title, _ in columns]), line(["-" * w for w in widths]), *map(line, table)]
    errors = [f"{r['runtime']} {r['precision']}: {r['error']}" for r in rows if r.get("error")]
    n = next((r["n"] for r in rows if r.get("n")), 0)
    lines.append(
        f"\nbatch-1 latency over {LATENCY_REPEATS} images, batch-{THROUGHPUT_BATCH} throughput, "
        f"accuracy on {n} test images; 'agrees' = same top-1 label as PyTorch eager fp32."
    )
    lines += [f"failed: {e}" for e in errors]
    return "\n".join(lines)
