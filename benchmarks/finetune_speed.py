"""Training images/s of the top stages on the CPU, fp32 against bf16 autocast, per cut point.

    python benchmarks/finetune_speed.py [--blocks 1,2,3] [--batch_size 32] [--steps 8]

One training step is what ``headstart.finetune.train`` runs per batch: the top
``N`` stages of EfficientNet-Lite0 (pretrained, BatchNorm statistics frozen),
the head conv, a 10-class classifier, cross entropy, backward, AdamW.  Inputs
are maps of the cut's shape (random: a step's cost does not depend on the
values).  fp32 and bf16 steps alternate so that a busy machine slows both
alike; the median of ``--steps`` steps after one warm-up each is printed as
one JSON line per cut point.

``--flip_check`` prints instead, per cut point, how close a mirrored cached map
is to the map of the mirrored image (cosine per photo, scikit-image's cat,
coffee and astronaut photos), next to the unmirrored map's: what
``--flip_left_right`` on cached maps stands in for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="1,2,3")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--flip_check", action="store_true")
    args = parser.parse_args()
    if args.flip_check:
        flip_check([int(b) for b in args.blocks.split(",")])
        return

    import torch

    from headstart.backbones import resolve_backbone
    from headstart.finetune import _freeze_norms, torch_threads
    from headstart.map_cache import map_shape
    from headstart.networks import split_backbone

    backbone = resolve_backbone("efficientnet_lite0")
    with torch_threads():
        for blocks in (int(b) for b in args.blocks.split(",")):
            _, top = split_backbone(backbone, blocks)
            params = [p for _, p in top.trainable_parameters()]
            for p in params:
                p.requires_grad_(True)
            classifier = torch.nn.Linear(1280, 10)
            optimizer = torch.optim.AdamW([*params, *classifier.parameters()], lr=1e-4)
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(args.batch_size, *map_shape(backbone, blocks), generator=generator)
            y = torch.randint(0, 10, (args.batch_size,), generator=generator)
            top.train()
            _freeze_norms(top)
            seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for step in range(args.steps + 1):
                for mode in seconds:
                    start = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                        loss = torch.nn.functional.cross_entropy(classifier(top(x)).float(), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    if step:
                        seconds[mode].append(time.perf_counter() - start)
            rates = {mode: round(args.batch_size / statistics.median(s), 1) for mode, s in seconds.items()}
            print(json.dumps({"fine_tune_blocks": blocks, "batch_size": args.batch_size,
                              "images_per_second": rates, "bf16_speedup": round(rates["bf16"] / rates["fp32"], 2)}),
                  flush=True)


def flip_check(cuts: list[int]) -> None:
    import numpy as np
    import skimage.data
    import torch

    from headstart.backbones import resolve_backbone
    from headstart.map_cache import flip_maps
    from headstart.model import as_network_input
    from headstart.networks import split_backbone

    backbone = resolve_backbone("efficientnet_lite0")
    photos = np.stack([as_network_input(f(), backbone.preprocessing)
                       for f in (skimage.data.chelsea, skimage.data.coffee, skimage.data.astronaut)])
    cos = torch.nn.functional.cosine_similarity
    for blocks in cuts:
        frozen, _ = split_backbone(backbone, blocks)
        with torch.inference_mode():
            maps = frozen(torch.from_numpy(photos)).flatten(1)
            mirrored = frozen(torch.from_numpy(np.ascontiguousarray(photos[:, :, ::-1]))).flatten(1)
            flipped = flip_maps(frozen(torch.from_numpy(photos))).flatten(1)
        print(json.dumps({"fine_tune_blocks": blocks,
                          "cosine_flipped_map_vs_mirrored_image": [round(float(v), 3) for v in cos(flipped, mirrored)],
                          "cosine_map_vs_mirrored_image": [round(float(v), 3) for v in cos(maps, mirrored)]}))


if __name__ == "__main__":
    main()
