"""Which novelty score says "unknown" best, and how well calibration works, on the same cached bottlenecks.

    python benchmarks/unknown_answer.py --image_dir demo/fashion --holdout demo/unseen [--bottleneck_dir D]

Trains the default head on ``--image_dir`` (validation split watched for early
stopping), fits the temperature on the validation split, then compares novelty
scores, each with its threshold set to accept 95 % of the validation images:
the share of ``--holdout`` images (same classes, never seen) rejected, and the
share of two folders of images of none of the classes rejected: handwritten
digits (scikit-learn) and crops of colour photos (scikit-image, scikit-learn),
which this script writes itself.  Prints one JSON object per score, then the
expected calibration error before and after temperature scaling.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.backbones import resolve_backbone
from headstart.cache import BottleneckCache
from headstart.calibrate import expected_calibration_error, fit_temperature, softmax
from headstart.config import RetrainConfig
from headstart.data import ImageRecord, find_images, index_image_dir, sha256_file
from headstart.features import compute_bottlenecks
from headstart.head import SoftmaxHead


def write_novel_images(out: Path, n: int = 300, seed: int = 0) -> dict[str, Path]:
    import skimage.data as sd
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    digits, photos = out / "digits", out / "photos"
    digits.mkdir(parents=True, exist_ok=True)
    photos.mkdir(exist_ok=True)
    images = load_digits().images
    for i in rng.choice(len(images), n, replace=False):
        Image.fromarray((images[i] / 16 * 255).astype(np.uint8)).resize((28, 28), Image.BICUBIC).save(
            digits / f"d{i}.png")
    sources = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), sd.camera(), sd.brick(), sd.grass(),
               sd.gravel(), sd.moon(), sd.text(), sd.page(), *load_sample_images().images]
    for k in range(n):
        a = sources[k % len(sources)]
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a
        s = int(rng.integers(48, min(a.shape[:2])))
        y, x = int(rng.integers(0, a.shape[0] - s + 1)), int(rng.integers(0, a.shape[1] - s + 1))
        Image.fromarray(a[y:y + s, x:x + s]).save(photos / f"p{k}.jpg", quality=90)
    return {"digits": digits, "photos": photos}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", type=Path, required=True)
    parser.add_argument("--holdout", type=Path, required=True, help="labelled folder of the same classes, unseen")
    parser.add_argument("--bottleneck_dir", type=Path, default=None)
    args = parser.parse_args()

    config = RetrainConfig(image_dir=args.image_dir)
    backbone = resolve_backbone(config.backbone, crop_pct=config.crop_pct)
    index = index_image_dir(args.image_dir)
    held = index_image_dir(args.holdout, 0, 100, labels=index.labels, require_training=False)
    ids = {label: i for i, label in enumerate(index.labels)}
    with tempfile.TemporaryDirectory() as tmp, BottleneckCache(args.bottleneck_dir) as cache:
        def vectors(records):  # noqa: ANN001, ANN202
            return compute_bottlenecks(records, backbone, cache, progress=False)

        found = vectors(index.records)
        hb = vectors(held.records)
        novel = {}
        for name, folder in write_novel_images(Path(tmp)).items():
            paths = find_images([folder])
            novel[name] = vectors([ImageRecord(p, p.name, "", "testing", sha256_file(p)) for p in paths]).vectors

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        records, x = found.select(name)
        return x, np.array([ids[r.label] for r in records])

    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = split("training"), split("validation"), split("testing")
    head = SoftmaxHead(n_classes=len(index.labels), **config.head_params()).fit(x_tr, y_tr, x_val, y_val)
    t = fit_temperature(head.logits(x_val), y_val)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    means = unit(np.stack([unit(x_tr)[y_tr == c].mean(0) for c in range(len(index.labels))]))
    train_unit = unit(x_tr)

    def parts(x: np.ndarray) -> dict[str, np.ndarray]:
        z = head.logits(x) / t
        p = softmax(z)
        return {"msp": 1 - p.max(1),
                "energy": -np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) - z.max(1),
                "cos": 1 - (unit(x) @ means.T).max(1),
                "knn10": 1 - np.sort(unit(x) @ train_unit.T, axis=1)[:, -10:].mean(1)}

    sets = {"validation": parts(x_val), "holdout": parts(hb.vectors), **{k: parts(v) for k, v in novel.items()}}
    ref = sets["validation"]
    for keys in (["msp"], ["energy"], ["cos"], ["knn10"], ["msp", "cos"], ["msp", "knn10"], ["energy", "cos"]):
        def score(d: dict[str, np.ndarray], keys: list[str] = keys) -> np.ndarray:
            return sum((d[k] - ref[k].mean()) / ref[k].std() for k in keys)

        threshold = np.quantile(score(ref), 0.95)
        row = {"score": "+".join(keys)}
        row.update({f"{name}_rejected": round(float(np.mean(score(sets[name]) > threshold)), 4)
                    for name in ("holdout", *novel)})
        print(json.dumps(row), flush=True)
    raw, cal = softmax(head.logits(x_te)), softmax(head.logits(x_te) / t)
    print(json.dumps({"temperature": round(t, 4), "ece_before": round(expected_calibration_error(raw, y_te), 4),
                      "ece_after": round(expected_calibration_error(cal, y_te), 4), "n_test": int(len(y_te))}))


if __name__ == "__main__":
    main()
