"""Training images/s for fine-tuning the whole of EfficientNet-Lite0 on a GPU.

    python benchmarks/gpu_finetune_speed.py [--image_dir DIR] [--batch_size 256] [--seconds 20] [--compile]

What ``--fine_tune_blocks all`` will have to run, measured before that feature
exists: Lite0 at 224 px with its pretrained weights and a new 10-class layer,
every parameter trained, AMP bf16 (autocast), channels-last, AdamW (fused),
BatchNorm in training mode.  The inputs are synthetic-from-real: a pool of real
photos (the JPEGs in ``--image_dir``, else scikit-image's samples) decoded once
by headstart's decoder, kept on the GPU as uint8, and drawn at random with a
random horizontal flip at every step, so the figure is the training step's,
not a data loader's.  ``--compile`` wraps the model in ``torch.compile`` (its
compile time is reported, not timed).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def photo_pool(image_dir: Path | None, prep, count: int) -> np.ndarray:
    """``count`` real images as uint8 [N, S, S, 3], decoded as headstart decodes them."""
    from PIL import Image

    from headstart.data import load_image

    images: list[np.ndarray] = []
    if image_dir is not None:
        for path in sorted(image_dir.rglob("*.jpg"))[:count]:
            images.append(load_image(path, prep))
    if not images:
        import io

        import skimage.data

        rng = np.random.default_rng(0)
        sources = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
        for i in range(count):
            src = Image.fromarray(sources[i % len(sources)])
            w, h = src.size
            cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            buffer = io.BytesIO()
            src.crop((left, top, left + cw, top + ch)).save(buffer, "JPEG", quality=90)
            images.append(load_image(buffer.getvalue(), prep))
    while len(images) < count:
        images.extend(images[: count - len(images)])
    return np.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", type=Path, default=None)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup_steps", type=int, default=15)
    parser.add_argument("--pool", type=int, default=1024, help="distinct real images on the GPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: the same loop on the CPU (to check the script)")
    args = parser.parse_args()

    import torch

    from headstart.backbones import resolve_backbone
    from headstart.networks import InputAdapter, create_model

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    prep = backbone.preprocessing
    net = create_model(backbone)  # pretrained, no ImageNet classifier: pooled 1280-d features
    model = torch.nn.Sequential(InputAdapter(net, prep), torch.nn.Linear(net.num_features, 10))
    model = model.to(device).to(memory_format=torch.channels_last).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    torch.backends.cudnn.benchmark = True
    step_model = torch.compile(model) if args.compile else model

    pool = torch.from_numpy(photo_pool(args.image_dir, prep, args.pool)).to(device)
    labels = torch.arange(len(pool), device=device) % 10
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> torch.Tensor:
        index = torch.randint(0, len(pool), (args.batch_size,), device=device, generator=generator)
        images = pool[index]
        flip = torch.rand(args.batch_size, device=device, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(2), images)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_model(images), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    start = time.perf_counter()
    first = float(step())
    for _ in range(args.warmup_steps - 1):
        step()
    sync()
    warmup = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps, start = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        if steps % 10 == 0:
            sync()
            if time.perf_counter() - start >= args.seconds:
                break
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "what": "EfficientNet-Lite0 224 px, every layer trained, AMP bf16, channels-last, fused AdamW",
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
        "batch_size": args.batch_size,
        "compile": args.compile, "warmup_s": round(warmup, 1), "steps": steps, "seconds": round(elapsed, 2),
        "train_images_per_s": round(steps * args.batch_size / elapsed, 1),
        "loss_first": round(first, 3), "loss_last": round(float(loss), 3),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }, indent=2))


if __name__ == "__main__":
    main()
