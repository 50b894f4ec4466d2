"""Compare the two ways to a .tflite of a trained run: onnx2tf (headstart's path) and litert-torch.

For the run's classifier (normalisation, backbone, head, softmax, novelty score) it
writes an fp32 .tflite with each converter, then runs both in the LiteRT interpreter
on the run's test split (and ``--image_dir``, labelled images it never saw) and
prints one JSON object: per converter, the conversion time, the file size, top-1
agreement with PyTorch eager fp32, the largest probability difference, accuracy,
and batch-1 latency (p50/p90 in ms, the two models timed in alternation, so both
see the same load on a shared machine).  A converter that cannot be imported or
fails is reported with its error.

litert-torch cannot be installed next to headstart's dependencies (it pins
typing-extensions < 4.13 through xdsl, downgrading pydantic and anyio), so run this
from a scratch virtualenv that sees headstart's (docs/DEPLOY.md):

    python -m venv /tmp/litert-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/litert-venv/lib/python3.11/site-packages/zz_headstart.pth
    /tmp/litert-venv/bin/pip install litert-torch
    /tmp/litert-venv/bin/python benchmarks/tflite_converters.py --model /tmp/run --image_dir /tmp/holdout
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _runner(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    (image,) = interpreter.get_input_details()
    out = next(o for o in interpreter.get_output_details() if len(o["shape_signature"]) == 2)  # probabilities
    state = {"n": None}

    def run(x: np.ndarray) -> np.ndarray:
        if state["n"] != len(x):
            interpreter.resize_tensor_input(image["index"], list(x.shape))
            interpreter.allocate_tensors()
            state["n"] = len(x)
        interpreter.set_tensor(image["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run


def _onnx2tf(module, bundle, backbone, work: Path) -> Path:
    from headstart.export import describe_export
    from headstart.export_convert import write_onnx
    from headstart.tf_export import onnx_to_keras, write_tflite

    description = describe_export(bundle, backbone, "tflite", "fp32")  # the file `headstart export` writes
    onnx_path = write_onnx(module, work / "model.onnx", backbone.preprocessing.input_size, description)
    path = work / "onnx2tf-fp32.tflite"
    write_tflite(onnx_to_keras(onnx_path, work), path, "fp32", description, None)
    return path


def _litert_torch(module, bundle, backbone, work: Path) -> Path:
    import litert_torch
    import torch

    size = backbone.preprocessing.input_size
    edge = litert_torch.convert(module, (torch.zeros((1, size, size, 3), dtype=torch.uint8),))
    path = work / "litert-torch-fp32.tflite"
    edge.export(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory")
    parser.add_argument("--image_dir", type=Path, default=None, help="more labelled images (one folder per label)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (each model, 20 images a round)")
    args = parser.parse_args()

    import torch

    from headstart.bundle import load_bundle
    from headstart.export import create_classifier
    from headstart.export_check import decode_images, find_check_images, predict, torch_runner
    from headstart.run_model import resolve_model_backbone

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_bundle(args.model)
    backbone = resolve_model_backbone(bundle)
    module = create_classifier(bundle, backbone)
    sets = {}
    for name, folder in (("test", None), ("image_dir", args.image_dir)):
        if name == "image_dir" and folder is None:
            continue
        records = find_check_images(bundle, folder).test
        x, kept = decode_images(records, backbone.preprocessing)
        y = np.array([bundle.labels.index(r.label) for r in kept])
        reference = predict(torch_runner(module), x)[:, :len(bundle.labels)]
        sets[name] = (x, y, reference)
    report: dict = {"run": str(args.model), "images": {k: len(v[0]) for k, v in sets.items()}, "converters": {}}
    runners = {}
    with tempfile.TemporaryDirectory(prefix="tflite-converters-") as tmp:
        for name, convert in (("onnx2tf", _onnx2tf), ("litert-torch", _litert_torch)):
            work = Path(tmp) / name
            work.mkdir()
            row: dict = {}
            try:
                t0 = time.perf_counter()
                path = convert(module, bundle, backbone, work)
                row["convert_s"] = round(time.perf_counter() - t0, 1)
                row["size_mb"] = round(path.stat().st_size / 1e6, 2)
                run = _runner(path)
                for set_name, (x, y, reference) in sets.items():
                    proba = np.concatenate([run(x[i:i + 16]) for i in range(0, len(x), 16)])
                    row[set_name] = {"agreement": round(float(np.mean(proba.argmax(1) == reference.argmax(1))), 4),
                                     "max_abs_diff": float(np.abs(proba - reference).max()),
                                     "accuracy": round(float(np.mean(proba.argmax(1) == y)), 4),
                                     "pytorch_accuracy": round(float(np.mean(reference.argmax(1) == y)), 4)}
                runners[name] = run
            except Exception as exc:  # a converter that fails is a result too
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report["converters"][name] = row
        x = sets["test"][0]
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():
            run(x[:1])
        for r in range(args.rounds):
            for name, run in runners.items():  # alternate, so both see the same load
                for i in range(20):
                    image = x[(20 * r + i) % len(x)][None]
                    t0 = time.perf_counter()
                    run(image)
                    times[name].append(1000 * (time.perf_counter() - t0))
        for name, values in times.items():
            report["converters"][name]["batch1_ms"] = {"p50": round(float(np.percentile(values, 50)), 2),
                                                       "p90": round(float(np.percentile(values, 90)), 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
