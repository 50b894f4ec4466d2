"""A TF Hub-style SavedModel backbone against the same network built in timm, on the same runtimes, in one run.

    python benchmarks/tfhub_backbone.py [--images 320] [--workdir /tmp/headstart-tfhub-bench] [--json out.json]

The network is MobileNetV2 1.0 at 224 px both ways, with random weights (speed does
not depend on them): Keras' ``MobileNetV2(weights=None, include_top=False,
pooling="avg")`` exported as a TF Hub image feature vector (float32 [0, 1] in, the
[-1, 1] scaling inside, 1,280 numbers out) and used as ``--backbone tfhub:DIR``;
timm's ``mobilenetv2_100`` (``num_classes=0``) from a weights file, as
``--backbone mobilenet_v2 --weights FILE``.  Both are converted to ONNX once
(tf2onnx / torch.onnx; the conversion times are reported, not counted in the
rates) and run on each installed CPU runtime; the SavedModel also runs in
TensorFlow itself, the fallback for modules tf2onnx cannot convert.

Per backbone and runtime, in alternating order, best of two rounds:
- model only: images/s of the runner on one decoded batch of 16 already in memory;
- end to end: ``compute_bottlenecks`` over ``--images`` Fashion-MNIST PNGs into an
  empty cache (decoding, batching, cache writes).
The ratio SavedModel / timm on the same runtime is the target (>= 0.5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_savedmodel(folder: Path) -> Path:
    """Keras MobileNetV2 (no pretrained weights) as a TF Hub feature vector with a fixed 224 px signature."""
    from headstart.tfhub_runtime import import_tensorflow

    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None,
                                         pooling="avg")

    class FeatureVector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="images")])
        def __call__(self, images: Any) -> Any:
            return self.net(images * 2.0 - 1.0, training=False)  # TF Hub modules take [0, 1]

    module = FeatureVector()
    serve = tf.function(lambda images: {"feature_vector": module(images)},
                        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="images")])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    return folder


def timm_weights(path: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("mobilenetv2_100", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="Fashion-MNIST images for the end-to-end rate")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/headstart-tfhub-bench"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    import numpy as np

    from headstart.backbones import resolve_backbone
    from headstart.bench.timing import time_calls
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.datasets import write_fashion_mnist
    from headstart.features import compute_bottlenecks, decode_ahead, default_workers
    from headstart.runtimes import RuntimeChoice, available_runtimes, best_precision, create_runner
    from headstart.tfhub_runtime import create_tensorflow_runner

    write_fashion_mnist(work / "images", per_class=max(1, args.images // 10))
    records = index_image_dir(work / "images", 0, 100, require_training=False).records[: args.images]
    start = time.perf_counter()
    tfhub = resolve_backbone(f"tfhub:{build_savedmodel(work / 'mobilenet_v2_savedmodel')}")
    build_s = time.perf_counter() - start
    timm_net = resolve_backbone("mobilenet_v2", timm_weights(work / "mobilenetv2_100.safetensors"), crop_pct=1.0)
    backbones = {"savedmodel": tfhub, "timm": timm_net}
    choices = [RuntimeChoice(r, best_precision(r)) for r in available_runtimes() if r in ("openvino", "onnxruntime")]
    choices += [RuntimeChoice("openvino", "fp32")] if any(c.key == "openvino-bf16" for c in choices) else []
    models = work / "models"

    runners: dict[tuple[str, str], Any] = {}
    conversion: dict[str, float] = {}
    for label, backbone in backbones.items():
        for choice in choices:
            t0 = time.perf_counter()
            runners[label, choice.key] = create_runner(backbone, choice, models)
            conversion.setdefault(label, round(time.perf_counter() - t0, 2))  # the first one converts
    runners["savedmodel", "tensorflow-fp32"] = create_tensorflow_runner(tfhub)

    def batch_for(backbone: Any) -> np.ndarray:
        paths = [r.path for r in records[:16]]
        return np.stack([img for _, img, _ in decode_ahead(paths, backbone.preprocessing, 16, default_workers())])

    batches = {label: batch_for(b) for label, b in backbones.items()}
    results: dict[tuple[str, str], dict[str, float]] = {}
    for round_ in range(args.rounds):
        for (label, key), runner in runners.items():
            batch = batches[label]
            model_only = 16 / time_calls(lambda r=runner, b=batch: r(b), seconds=1.5, repeats=3).best_s
            cache_dir = work / f"cache-{label}-{key}-{round_}"
            with BottleneckCache(cache_dir) as cache:
                runtime = RuntimeChoice(*key.split("-")) if key != "tensorflow-fp32" else RuntimeChoice("torch",
                                                                                                      "fp32")
                done = compute_bottlenecks(records, backbones[label], cache, runtime=runtime, runner=runner,
                                           progress=False)
            shutil.rmtree(cache_dir)
            end_to_end = done.computed / done.seconds
            best = results.setdefault((label, key), {"model_only": 0.0, "end_to_end": 0.0})
            best["model_only"] = round(max(best["model_only"], model_only), 1)
            best["end_to_end"] = round(max(best["end_to_end"], end_to_end), 1)
            print(f"round {round_ + 1}: {label:10s} {key:16s} model only {model_only:7.1f}  end to end "
                  f"{end_to_end:7.1f} images/s", file=sys.stderr)

    rows = []
    for key in [c.key for c in choices] + ["tensorflow-fp32"]:
        saved, ref = results[("savedmodel", key)], results.get(("timm", key))
        rows.append({"runtime": key, "savedmodel": saved, "timm": ref,
                     "ratio_model_only": round(saved["model_only"] / ref["model_only"], 2) if ref else None,
                     "ratio_end_to_end": round(saved["end_to_end"] / ref["end_to_end"], 2) if ref else None})
    out = {"images": len(records), "rounds": args.rounds, "batch_size": 16, "savedmodel_build_s": round(build_s, 1),
           "first_runner_s": conversion, "rows": rows}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
