"""The network alone on a CUDA GPU: what no data pipeline can beat.

    python benchmarks/gpu_ceiling.py [--batch_size 128] [--seconds 5]

EfficientNet-Lite0 (224 px), fp16, channels-last, cuDNN autotuned, on a batch
of normalised inputs already on the GPU, no headstart code in the loop.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="cuda", help="cpu: fp32 on the CPU (to check the script)")
    args = parser.parse_args()

    import torch

    from headstart.backbones import resolve_backbone
    from headstart.networks import create_model

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    size = backbone.preprocessing.input_size
    cuda = args.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    model = create_model(backbone).to(device=args.device, dtype=dtype).to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    x = torch.randn(args.batch_size, 3, size, size, device=args.device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(10 if cuda else 1):
            model(x)
        sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            model(x)
            n += args.batch_size
        sync()
        rate = n / (time.perf_counter() - start)
    print(json.dumps({"what": "torch-only ceiling: fp16 channels-last, inputs already on the GPU",
                      "batch_size": args.batch_size, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                      "torch": torch.__version__, "images_per_s": round(rate, 1)}))


if __name__ == "__main__":
    main()
