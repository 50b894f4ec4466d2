"""headstart's bottleneck extraction against the machine's ceiling and against
the code a practitioner would write instead, measured in one run.

    python benchmarks/bench_extract.py IMAGE_DIR [--baseline_images 320] [--json out.json]

1. ``headstart.bench.bench_extract``: the model-only ceiling of every installed
   runtime (decoded images in memory), headstart's end-to-end rate from the
   files with a cold bottleneck cache, and the ratio.
2. The baseline, in a fresh process: timm + torchvision ``ImageFolder`` +
   ``DataLoader(num_workers=2, batch_size=32)``, eager PyTorch fp32 under
   ``torch.inference_mode()``, the same EfficientNet-Lite0 weights and the
   same resize/crop (timm's eval transform), on the first
   ``--baseline_images`` images (it is slow; its rate does not depend on how
   many images it sees).

Prints a JSON object with both and the two ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BASELINE = r'''
import json, sys, time
import torch, timm
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from headstart.backbones import resolve_backbone
from headstart.networks import create_model

image_dir, count, crop_pct = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
backbone = resolve_backbone("efficientnet_lite0", crop_pct=crop_pct)   # the packaged weights, read once
model = create_model(backbone)                                          # timm tf_efficientnet_lite0, num_classes=0
p = backbone.preprocessing
transform = timm.data.create_transform(input_size=p.input_size, crop_pct=p.crop_pct, interpolation=p.interpolation,
                                       mean=p.mean, std=p.std, is_training=False)
dataset = ImageFolder(image_dir, transform=transform)
step = max(1, len(dataset) // count)
dataset = Subset(dataset, list(range(0, len(dataset), step))[:count])
loader = DataLoader(dataset, batch_size=32, num_workers=2, shuffle=False)
start = time.perf_counter()
features = []
with torch.inference_mode():
    for images, _ in loader:
        features.append(model(images))
seconds = time.perf_counter() - start
n = sum(len(f) for f in features)
print(json.dumps({"what": "timm + torchvision ImageFolder + DataLoader(num_workers=2), eager fp32",
                  "images": n, "seconds": seconds, "images_per_s": n / seconds,
                  "torch_threads": torch.get_num_threads()}))
'''


def run_baseline(image_dir: Path, count: int, crop_pct: float) -> dict:
    out = subprocess.run([sys.executable, "-c", BASELINE, str(image_dir), str(count), str(crop_pct)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--baseline_images", type=int, default=320)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--crop_pct", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=None, help="images for headstart's end-to-end run")
    parser.add_argument("--seconds", type=float, default=5.0, help="per ceiling measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    from headstart.bench import bench_extract

    started = time.perf_counter()
    result = bench_extract(args.image_dir, runtime=args.runtime, crop_pct=args.crop_pct, limit=args.limit,
                           seconds=args.seconds).to_dict()
    baseline = run_baseline(args.image_dir, args.baseline_images, args.crop_pct)
    e2e = result["end_to_end"]["images_per_s"]
    best = max(c["images_per_s"] for c in result["ceilings"])
    report = {"headstart": result, "baseline": baseline,
              "end_to_end_over_best_ceiling": e2e / best,
              "end_to_end_over_baseline": e2e / baseline["images_per_s"],
              "seconds": time.perf_counter() - started}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
