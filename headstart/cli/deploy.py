"""export: a run directory -> one self-contained model (ONNX, OpenVINO, TensorRT, TFLite, SavedModel), checked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_command, flag, print_json, require_path


def register(sub: Any) -> None:
    _register_export(sub)


def _register_export(sub: Any) -> None:
    p = add_command(
        sub,
        "export",
        "export a retrained model as one file (ONNX, OpenVINO IR, TensorRT, TFLite, SavedModel)",
        "headstart export --model runs/flowers                       # runs/flowers/export/model-fp32.onnx\n"
        "headstart export --model runs/flowers --precision int8      # calibrated on the run's training images\n"
        "headstart export --model runs/flowers --format openvino --output deploy/flowers.xml\n"
        "headstart export --model runs/flowers --format tflite --precision int8   # LiteRT / MediaPipe, with metadata\n"
        "headstart export --model runs/flowers --format saved_model                # TF Serving: image bytes in\n"
        "headstart label --model runs/flowers/export/model-fp32.onnx photo.jpg",
        description="Export a retrained model: normalisation, backbone, last layer and softmax in one graph "
        "(uint8 RGB [N, H, W, 3] in, probabilities out); labels and preprocessing in its metadata "
        "and in a .json sidecar. The export is checked against PyTorch on the run's test images, and "
        "fails if it loses more than --max_accuracy_drop points of test accuracy.",
    )
    flag(p, "--model", type=Path, required=True, help="run directory written by 'headstart retrain'")
    flag(
        p,
        "--format",
        dest="model_format",
        choices=["onnx", "openvino", "tensorrt", "tflite", "saved_model"],
        default="onnx",
        help="model format (default: %(default)s)",
    )
    flag(
        p,
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp32, fp16 (OpenVINO, TensorRT, TFLite) or int8 (ONNX, OpenVINO, TensorRT, TFLite) calibrated on "
        "the run's training images (default: %(default)s)",
    )
    flag(
        p,
        "--output",
        type=Path,
        default=None,
        help="file to write (default: RUN_DIR/export/model-PRECISION.onnx, or .../export/openvino/*.xml, "
        ".../export/tensorrt/*.engine, .../export/tflite/*.tflite, .../export/saved_model/model-fp32/); the "
        "sidecar is the same name ending in .json",
    )
    flag(
        p,
        "--image_dir",
        type=Path,
        default=None,
        help="labelled images to check against, when the run's own test images are gone",
    )
    flag(
        p,
        "--max_accuracy_drop",
        type=float,
        default=1.0,
        help="fail when test accuracy drops by more than this many points (default: %(default)s)",
    )
    flag(p, "--force", action="store_true", help="write the export even if it fails the accuracy gate")
    flag(
        p,
        "--calibration_images",
        type=int,
        default=300,
        help="training images used to calibrate int8 (default: %(default)s)",
    )
    flag(p, "--weights", type=Path, default=None, help="the backbone's weights file, if it was trained with one")
    flag(
        p,
        "--bottleneck_dir",
        type=Path,
        default=None,
        help="headstart's cache folder; TensorRT engines are cached under it (default: $HEADSTART_CACHE_DIR "
        "or ~/.cache/headstart)",
    )
    flag(p, "--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..tf_export import TF_PRECISIONS, require_tf_export

    if args.model_format in TF_PRECISIONS:
        require_tf_export()  # before any work: the converters come with the [tensorflow] extra
    require_path(args.model, "--model", "folder")
    require_path(args.image_dir, "--image_dir", "folder")
    require_path(args.weights, "--weights", "file")
    result = export_model(
        args.model,
        model_format=args.model_format,
        precision=args.precision,
        output=args.output,
        image_dir=args.image_dir,
        max_accuracy_drop=args.max_accuracy_drop,
        force=args.force,
        calibration_images=args.calibration_images,
        weights=args.weights,
        cache_dir=args.bottleneck_dir,
        progress=not args.quiet,
    )
    check = result.check
    if args.json:
        print_json(
            {
                "path": str(result.path),
                "sidecar": str(result.sidecar),
                "format": result.model_format,
                "precision": result.precision,
                "files": [str(f) for f in result.files],
                "check": check.to_dict(),
                "seconds": round(result.seconds, 2),
            }
        )
        return 0
    print(f"Exported {result.model_format} {result.precision}: {result.path}")
    print(f"Sidecar: {result.sidecar}")
    agreement, accuracy, ref, drop = check.agreement, check.accuracy, check.reference_accuracy, check.accuracy_drop
    if check.n and agreement is not None and accuracy is not None and ref is not None and drop is not None:
        print(
            f"Check on {check.n} images ({check.source}, {check.runtime}): top-1 agreement with PyTorch "
            f"{100 * agreement:.1f}%, test accuracy {100 * accuracy:.1f}% "
            f"(PyTorch {100 * ref:.1f}%: {describe_drop(drop)})"
        )
    else:
        print(f"Not checked: {check.note}")
    if check.note:
        print(f"Note: {check.note}")
    print(f"Next: headstart label --model {result.path} IMAGE...")
    return 0


def describe_drop(points: float) -> str:
    """The export's accuracy change in words: "+0.0 points" of a "drop" reads like a loss."""
    shown = round(abs(points), 1)
    if shown == 0:
        return "no accuracy lost"
    return f"{'lost' if points > 0 else 'gained'} {shown:.1f} point{'' if shown == 1 else 's'}"
