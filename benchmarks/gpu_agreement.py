"""How far are GPU-decoded images from the CPU decoder's?  Pixels and bottlenecks.

    python benchmarks/gpu_agreement.py [--device cpu|cuda] [--crop_pct 1.0]

scikit-image's three sample photos saved as JPEG (quality 90) at their own
size, 500x375, 1024x768, 2048x1536 and 4032x3024 (a 12-megapixel enlargement),
decoded by :func:`headstart.gpu_decode.decode_files` on ``--device`` (``cpu``:
torchvision's libjpeg-turbo and the device geometry on CPU tensors; ``cuda``:
nvJPEG) and by the CPU decoder (:func:`headstart.data.load_image`).  For each
file: the DCT scaling the CPU decoder used, the mean and largest absolute
pixel difference, and the cosine between EfficientNet-Lite0 bottlenecks of the
two (PyTorch fp32 on the CPU).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop_pct", type=float, default=1.0)
    args = parser.parse_args()

    import skimage.data
    import torch
    from PIL import Image

    from headstart.backbones import resolve_backbone
    from headstart.data import load_image
    from headstart.gpu_decode import decode_files
    from headstart.gpu_geometry import draft_factor
    from headstart.networks import create_feature_extractor

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=args.crop_pct)
    prep = backbone.preprocessing
    module = create_feature_extractor(backbone)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in ("chelsea", "coffee", "astronaut"):
            photo = Image.fromarray(getattr(skimage.data, name)())
            for size in (None, (500, 375), (1024, 768), (2048, 1536), (4032, 3024)):
                image = photo if size is None else photo.resize(size, Image.Resampling.BICUBIC)
                path = Path(tmp) / f"{name}_{image.size[0]}x{image.size[1]}.jpg"
                image.save(path, "JPEG", quality=90)
                paths.append(path)
        batch = decode_files(paths, prep, device=args.device)
        gpu = batch.images.cpu().numpy()
        cpu = np.stack([load_image(p, prep) for p in paths])
        with torch.inference_mode():
            vectors = module(torch.from_numpy(gpu)).numpy().astype(np.float64)
            reference = module(torch.from_numpy(cpu)).numpy().astype(np.float64)
        cosine = (vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
        for path, a, b, c in zip(paths, gpu, cpu, cosine):
            w, h = Image.open(path).size
            diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
            rows.append({"file": path.name, "draft": draft_factor(w, h, prep.resize_size),
                         "pixel_mean_abs": round(float(diff.mean()), 3), "pixel_max_abs": int(diff.max()),
                         "cosine": round(float(c), 5)})
    print(json.dumps({"device": args.device, "crop_pct": args.crop_pct, "routes": batch.routes,
                      "cosine_min": round(float(cosine.min()), 5), "cosine_mean": round(float(cosine.mean()), 5),
                      "pixel_mean_abs_max": max(r["pixel_mean_abs"] for r in rows), "files": rows}, indent=2))


if __name__ == "__main__":
    main()
