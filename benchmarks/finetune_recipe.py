"""How the fine-tuning recipe's knobs move unseen-image accuracy, epoch by epoch, on cached maps.

    python benchmarks/finetune_recipe.py --workdir /tmp/ftbench \
        --configs '[{"lr": 1e-3, "flip": true}, {"lr": 3e-4, "flip": false, "epochs": 6}]'

``--workdir`` is a folder written by ``benchmarks/finetune_accuracy.py`` (its
``train/`` and ``unseen/`` Fashion-MNIST folders; maps are cached in
``cache-<blocks>/``, computed if missing).  A head is trained on the pooled
bottlenecks as ``retrain`` does, then for each configuration the top
``--blocks`` stages and the classifier are fine-tuned from it with early
stopping off, and after every epoch the validation loss and accuracy (what
early stopping sees) and the accuracy on the unseen images (what it cannot
see) are printed as one JSON line.  Keys: ``lr`` (classifier's peak rate),
``ratio`` (pretrained layers' share of it), ``ls`` (label smoothing),
``flip`` (mirror maps), ``epochs``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--configs", required=True, help="JSON list of configurations")
    args = parser.parse_args()

    import torch

    from headstart.backbones import resolve_backbone
    from headstart.config import RetrainConfig
    from headstart.data import index_image_dir
    from headstart.export import fold_head
    from headstart.finetune import FineTuneParams, MapSource, create_classifier, pooled_features, torch_threads, train
    from headstart.map_cache import MapCache, compute_maps
    from headstart.networks import split_backbone
    from headstart.train import build_head

    config = RetrainConfig(image_dir=args.workdir / "train")
    backbone = resolve_backbone(config.backbone, crop_pct=config.crop_pct)
    index = index_image_dir(config.image_dir, config.validation_percentage, config.testing_percentage)
    unseen = index_image_dir(args.workdir / "unseen", 0, 100, labels=index.labels, require_training=False)
    ids = {label: i for i, label in enumerate(index.labels)}
    cpu = torch.device("cpu")
    with MapCache(args.workdir / f"cache-{args.blocks}") as cache, torch_threads():
        maps = compute_maps(index.records, backbone, args.blocks, cache, progress=False)
        umaps = compute_maps(unseen.records, backbone, args.blocks, cache, progress=False)
        records = {s: maps.select(s) for s in ("training", "validation")}
        y = {s: np.array([ids[r.label] for r in records[s]]) for s in records}
        y_unseen = np.array([ids[r.label] for r in umaps.records])
        _, top0 = split_backbone(backbone, args.blocks)
        x = {s: pooled_features(top0, MapSource(cache, maps, records[s]), cpu) for s in records}
        head = build_head(config, len(index.labels)).fit(x["training"], y["training"], x["validation"],
                                                         y["validation"])
        x_unseen = pooled_features(top0, MapSource(cache, umaps, umaps.records), cpu)
        print(json.dumps({"start": True, "unseen": float(np.mean(head.predict(x_unseen) == y_unseen))}), flush=True)
        for c in json.loads(args.configs):
            _, top = split_backbone(backbone, args.blocks)
            classifier = create_classifier(fold_head(head.to_state()[0]))
            params = FineTuneParams(epochs=c.get("epochs", 4), learning_rate=c.get("lr", 1e-3),
                                    label_smoothing=c.get("ls", 0.1), flip=c.get("flip", False),
                                    block_lr_ratio=c.get("ratio", 0.1), patience=10**6)
            unseen_source = MapSource(cache, umaps, umaps.records)

            def on_epoch(row, c=c, top=top, classifier=classifier, unseen_source=unseen_source) -> None:
                features = pooled_features(top, unseen_source, cpu)
                with torch.no_grad():
                    predicted = classifier(torch.from_numpy(features)).argmax(1).numpy()
                print(json.dumps({**c, "epoch": row.epoch, "validation_loss": round(row.validation_loss, 4),
                                  "validation_accuracy": round(row.validation_accuracy, 4),
                                  "train_accuracy": round(row.train_accuracy, 4),
                                  "unseen": float(np.mean(predicted == y_unseen)),
                                  "images_per_second": round(row.images_per_second or 0)}), flush=True)

            train(top, classifier, MapSource(cache, maps, records["training"], flip=params.flip), y["training"],
                  MapSource(cache, maps, records["validation"]), y["validation"], params, progress=False,
                  on_epoch=on_epoch)


if __name__ == "__main__":
    main()
