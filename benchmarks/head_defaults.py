"""How the default last-layer recipe compares with retrain.py's, on the same cached bottlenecks.

    python benchmarks/head_defaults.py --image_dir demo/fashion [--holdout demo/unseen] [--seeds 5]

For each recipe and seed it trains the head on the training split and reports
test accuracy (the run's own test split), accuracy on an optional held-out
folder, and training time.  Bottlenecks come from the cache, so only training
is timed.  The defaults in headstart/config.py were chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from headstart.backbones import resolve_backbone
from headstart.cache import BottleneckCache
from headstart.data import index_image_dir
from headstart.features import compute_bottlenecks
from headstart.head import SoftmaxHead
from headstart.settings import RETRAIN_PY_RECIPE, default

ADAM = {"optimizer": "adam", "learning_rate": 0.001, "train_batch_size": 100, "how_many_training_steps": 1000}
RECIPES = {
    "retrain.py (sgd 0.01, 4000 steps)": dict(RETRAIN_PY_RECIPE),
    "adam 0.001, 1000 steps (the 0.1 default)": {**ADAM, "early_stopping": False},
    "+ early stopping": {**ADAM, "early_stopping": True},
    "+ early stopping, label smoothing 0.1 (the default)": {**ADAM, "early_stopping": True, "label_smoothing": 0.1},
    "+ early stopping, weight decay 1e-4": {**ADAM, "early_stopping": True, "weight_decay": 1e-4},
    "+ early stopping, weight decay 1e-3": {**ADAM, "early_stopping": True, "weight_decay": 1e-3},
    "+ early stopping, images drawn uniformly": {**ADAM, "early_stopping": True, "sampling": "image"},
    "momentum 0.01, 1000 steps, early stopping": {**ADAM, "optimizer": "momentum", "learning_rate": 0.01,
                                                  "early_stopping": True},
    "adam 0.001, hidden 512 + dropout 0.5, early stopping": {**ADAM, "hidden_units": 512, "dropout": 0.5,
                                                             "early_stopping": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", type=Path, required=True)
    parser.add_argument("--holdout", type=Path, default=None, help="labelled folder never used in training")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--crop_pct", type=float, default=default("crop_pct"))
    parser.add_argument("--bottleneck_dir", type=Path, default=None)
    args = parser.parse_args()

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=args.crop_pct)
    index = index_image_dir(args.image_dir)
    with BottleneckCache(args.bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(index.records, backbone, cache, progress=False)
        holdout = None
        if args.holdout:
            held = index_image_dir(args.holdout, 0, 100, labels=index.labels, require_training=False)
            hb = compute_bottlenecks(held.records, backbone, cache, progress=False)
            holdout = (hb.vectors, np.array([index.labels.index(r.label) for r in hb.records]))
    ids = {label: i for i, label in enumerate(index.labels)}

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        records, vectors = bottlenecks.select(name)
        return vectors, np.array([ids[r.label] for r in records])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split("training"), split("validation"), split("testing")
    rows = []
    for name, params in RECIPES.items():
        tests, helds, times = [], [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            # Validation is only watched (early stopping keeps its best step); it never trains the head.
            head = SoftmaxHead(seed=seed, eval_step_interval=10**9, **params).fit(x_train, y_train, x_val, y_val)
            times.append(time.perf_counter() - start)
            tests.append(float(np.mean(head.predict(x_test) == y_test)))
            if holdout is not None:
                helds.append(float(np.mean(head.predict(holdout[0]) == holdout[1])))
        row = {"recipe": name, "test_accuracy": round(statistics.mean(tests), 4),
               "test_accuracy_min": round(min(tests), 4), "train_s": round(statistics.median(times), 3),
               "n_train": int(len(y_train)), "n_test": int(len(y_test))}
        if helds:
            row.update(holdout_accuracy=round(statistics.mean(helds), 4), n_holdout=int(len(holdout[1])))
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
