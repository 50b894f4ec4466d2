"""Does headstart's fast decoder change what the network sees?  Bottlenecks of the
same images through headstart's decoder and through timm's evaluation transform
(Pillow), both on PyTorch fp32; for scale, OpenVINO bf16 against PyTorch fp32 on
timm's pixels.

    python benchmarks/resample_agreement.py /tmp/photos [--limit 400]

Prints one JSON object: per-image cosine similarity (min, 1st percentile, mean)
for each comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(cos.min()), 4), "p1": round(float(np.percentile(cos, 1)), 4),
            "mean": round(float(cos.mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--limit", type=int, default=400)
    args = parser.parse_args()

    import timm.data
    from PIL import Image

    from headstart.backbones import resolve_backbone
    from headstart.bench import list_image_records
    from headstart.cache import default_cache_dir
    from headstart.data import load_image
    from headstart.runtimes import RuntimeChoice, create_runner

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    prep = backbone.preprocessing
    transform = timm.data.create_transform(input_size=prep.input_size, crop_pct=prep.crop_pct,
                                           interpolation=prep.interpolation, is_training=False)
    geometry = [t for t in transform.transforms if type(t).__name__ in ("Resize", "CenterCrop")]
    records = list_image_records(args.image_dir)
    step = max(1, len(records) // args.limit)
    paths = [r.path for r in records[::step][: args.limit]]

    def timm_pixels(path: Path) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        for t in geometry:
            img = t(img)
        return np.asarray(img)

    ours = np.stack([load_image(p, prep) for p in paths])
    theirs = np.stack([timm_pixels(p) for p in paths])
    models = default_cache_dir() / "models"

    def vectors(choice: RuntimeChoice, images: np.ndarray) -> np.ndarray:
        runner = create_runner(backbone, choice, models)
        return np.concatenate([runner(images[i : i + 32]) for i in range(0, len(images), 32)])

    torch_fp32 = RuntimeChoice("torch", "fp32")
    reference = vectors(torch_fp32, theirs)
    out = {
        "images": len(paths),
        "headstart_decoder_vs_timm_transform": cosine_summary(vectors(torch_fp32, ours), reference),
        "for_scale_openvino_bf16_vs_torch_fp32": cosine_summary(vectors(RuntimeChoice("openvino", "bf16"), theirs),
                                                                reference),
        "mean_abs_pixel_difference": round(float(np.abs(ours.astype(int) - theirs.astype(int)).mean()), 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
