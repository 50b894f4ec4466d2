"""Which ops the TFLite int8 export leaves in float, measured: three variants on one run.

Each variant is TensorFlow's post-training int8 of the run's converted graph (onnx2tf,
as ``headstart export --format tflite`` does), calibrated on the same training images
(``--calibration_images``, the export's sample); what differs is what stays float:

* ``all int8``: everything quantised;
* ``tail float``: everything after the last convolution (pooling, head, softmax, novelty);
* ``ends float`` (the export's choice): that, and everything up to and including the first
  convolution (the normalised pixels).

Prints one JSON object: per variant and image set, top-1 agreement with PyTorch eager
fp32, accuracy and the drop in points.

    python benchmarks/tflite_int8_variants.py --model /tmp/run --image_dir /tmp/holdout
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory")
    parser.add_argument("--image_dir", type=Path, default=None, help="more labelled images (one folder per label)")
    parser.add_argument("--calibration_images", type=int, default=300)
    args = parser.parse_args()

    from headstart.bundle import load_bundle
    from headstart.export import create_classifier, describe_export
    from headstart.export_check import decode_images, find_check_images, predict, spread_records, torch_runner
    from headstart.export_convert import write_onnx
    from headstart.run_model import resolve_model_backbone
    from headstart.runtimes import RuntimeChoice
    from headstart.runtimes.litert_runner import create_litert_runner
    from headstart.tf_export import _float_nodes, onnx_to_keras
    from headstart.tfhub_runtime import import_tensorflow, quiet_native_logs

    bundle = load_bundle(args.model)
    backbone = resolve_model_backbone(bundle)
    prep = backbone.preprocessing
    module = create_classifier(bundle, backbone)
    sets = {}
    for name, folder in (("test", None), ("image_dir", args.image_dir)):
        if name == "image_dir" and folder is None:
            continue
        x, kept = decode_images(find_check_images(bundle, folder).test, prep)
        y = np.array([bundle.labels.index(r.label) for r in kept])
        sets[name] = (x, y, predict(torch_runner(module), x)[:, :len(bundle.labels)])
    calibration, _ = decode_images(spread_records(find_check_images(bundle).training, args.calibration_images, seed=1), prep)
    tf = import_tensorflow()
    report: dict = {"run": str(args.model), "calibration_images": len(calibration), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as tmp:
        onnx_path = write_onnx(module, Path(tmp) / "model.onnx", prep.input_size,
                                describe_export(bundle, backbone, "tflite", "int8"))
        keras = onnx_to_keras(onnx_path, Path(tmp))
        with quiet_native_logs():
            float_model = bytes(tf.lite.TFLiteConverter.from_keras_model(keras).convert())
        ends = _float_nodes(float_model)
        tail_start = next(i for i, n in enumerate(ends) if "convolution" in n) + 1  # after the first convolution
        variants = {"all int8": [], "tail float": ends[tail_start:], "ends float": ends}

        def representative():
            for image in calibration:
                yield [image[None]]

        for name, denylist in variants.items():
            conv = tf.lite.TFLiteConverter.from_keras_model(keras)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
            with quiet_native_logs():
                model = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=representative, debug_options=options).get_nondebug_quantized_model()
            path = Path(tmp) / f"{name.replace(' ', '-')}.tflite"
            path.write_bytes(model)
            run = create_litert_runner(path, RuntimeChoice("litert", "fp32"))
            row = {}
            for set_name, (x, y, reference) in sets.items():
                # the converter's own output order (ood_score first when the run has one): pick the probabilities
                out = np.concatenate([run(x[i:i + 16]) for i in range(0, len(x), 16)])
                proba = out[:, -len(bundle.labels):] if out.shape[1] > len(bundle.labels) else out
                accuracy, ref = float(np.mean(proba.argmax(1) == y)), float(np.mean(reference.argmax(1) == y))
                agreement = float(np.mean(proba.argmax(1) == reference.argmax(1)))
                row[set_name] = {"n": len(x), "agreement": round(agreement, 4), "accuracy": round(accuracy, 4),
                                 "drop_points": round(100 * (ref - accuracy), 2)}
            report["variants"][name] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
