#!/usr/bin/env bash
# The one prepared GPU check: every figure the GPU targets need, as one JSON object, in under 8 minutes.
#
#   bash benchmarks/gpu_kit.sh          # first, on a machine with PyPI: packs .gpu_kit/ (wheels, Fashion-MNIST)
#   bash benchmarks/gpu_check.sh        # then on the CUDA machine, from the repository root, .gpu_kit carried
#   N_PHOTOS=4000 BUDGET=300 bash benchmarks/gpu_check.sh
#
# Self-contained: installs .gpu_kit's wheels into a scratch folder (the machine
# has PyTorch, torchvision, timm, OpenCV, scikit-image, but not simplejpeg, the
# Lite0 weights or the serving stack), puts the repository on PYTHONPATH, writes
# its images (N_PHOTOS 500x375 photo JPEGs, N_PHONE 12-megapixel JPEGs, the
# 10,000 Fashion-MNIST test PNGs), then measures, each step under its own timeout:
#   ceiling     the network alone (fp16, channels-last, inputs already on the GPU)
#   e2e         files -> cached bottlenecks, --decode processes against GPU decoding,
#               on each kind of image, with the agreement of the two (benchmarks/gpu_e2e.py)
#   agreement   nvJPEG + device geometry against the CPU decoder on the sample photos at five
#               sizes: pixels and bottleneck cosines (benchmarks/gpu_agreement.py)
#   finetune    training images/s, every layer of Lite0, AMP bf16 (benchmarks/gpu_finetune_speed.py)
#   pytest_gpu  python -m pytest -m gpu on the test files that have GPU tests
#   serve       headstart serve on CUDA at concurrency 64 (benchmarks/gpu_serve_load.py),
#               only when this tree has `headstart serve`
#   extract     headstart bench extract --runtime cuda on 3,000 photos, --decode processes, then threads
#               (and with COMPILE=1 --compile): the command of the earlier GPU figures
# A step starts only if the time BUDGET (seconds, default 420) leaves it enough;
# otherwise its entry says "skipped". With $OUT set, the JSON and the steps' logs
# are also written there. DEVICE=cpu runs the same steps on the CPU with the torch
# runtime (use tiny N_PHOTOS/N_PHONE): a check of the script itself, not a measurement.
set -uo pipefail  # no -e: one failing step must not lose the others' figures
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-$(nproc)}
N_PHOTOS=${N_PHOTOS:-8000}
N_PHONE=${N_PHONE:-600}
N_FASHION=${N_FASHION:-10000}
N_SERVE_TRAIN=${N_SERVE_TRAIN:-1000}
BUDGET=${BUDGET:-420}
STEPS=${STEPS:-}  # e.g. STEPS="images e2e" to rerun only those steps
KIT=${KIT:-.gpu_kit}
DEVICE=${DEVICE:-cuda}
RUNTIME=$([ "$DEVICE" = cuda ] && echo cuda || echo torch)
PRECISION=$([ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/headstart-gpu.XXXXXX")}
mkdir -p "$WORK"
export HEADSTART_CACHE_DIR="$WORK/cache" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

for part in wheels serve; do  # .gpu_kit's wheels (benchmarks/gpu_kit.sh), into a scratch folder
  if ls "$KIT/$part"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$KIT/$part"/*.whl >>"$WORK/kit.log" 2>&1 || echo "warning: installing $KIT/$part failed (see $WORK/kit.log)" >&2
  fi
done
[ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DEVICE" = cuda ] &&
    ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo '{"error": "no CUDA GPU visible to torch"}'
  exit 1
fi
if ! "$PY" -c "from headstart.backbones import resolve_backbone; resolve_backbone('efficientnet_lite0')" \
    >"$WORK/preflight.log" 2>&1; then
  "$PY" - "$WORK/preflight.log" <<'PYEOF'
import json, sys
tail = open(sys.argv[1]).read().strip().splitlines()[-3:]
print(json.dumps({"error": "headstart cannot load EfficientNet-Lite0 here: "
                           "run benchmarks/gpu_kit.sh and carry .gpu_kit", "log": tail}))
PYEOF
  exit 1
fi

# step NAME NEED_S LIMIT_S COMMAND...: stdout -> NAME.out, stderr -> NAME.err, exit code and seconds -> NAME.rc
step() {
  local name=$1 need=$2 limit=$3
  shift 3
  if [ -n "$STEPS" ] && [[ " $STEPS " != *" $name "* ]]; then
    echo "skipped: not in STEPS" >"$WORK/$name.skip"
    return 0
  fi
  if [ "$(left)" -lt "$need" ]; then
    echo "skipped: out of time ($(left) s of the budget left, the step needs about $need)" >"$WORK/$name.skip"
    return 0
  fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  local t0=$SECONDS
  timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  echo "$? $((SECONDS - t0))" >"$WORK/$name.rc"
  echo "$name: rc $(cut -d' ' -f1 "$WORK/$name.rc"), $((SECONDS - t0)) s" >&2
}

step images 60 150 bash -c "'$PY' benchmarks/gpu_images.py photos '$WORK/photos' --count $N_PHOTOS && \
  '$PY' benchmarks/gpu_images.py phone '$WORK/phone' --count $N_PHONE && \
  '$PY' benchmarks/gpu_images.py fashion '$WORK/fashion' --count $N_FASHION --source '$KIT/fashion-mnist' && \
  '$PY' benchmarks/gpu_images.py fashion '$WORK/fashion_small' --count $N_SERVE_TRAIN --source '$KIT/fashion-mnist' && \
  echo '{\"photos\": $N_PHOTOS, \"phone\": $N_PHONE, \"fashion\": $N_FASHION}'"

step ceiling 30 90 "$PY" benchmarks/gpu_ceiling.py --batch_size "$BATCH" --device "$DEVICE"

step e2e 90 300 "$PY" benchmarks/gpu_e2e.py photos="$WORK/photos" phone="$WORK/phone" fashion="$WORK/fashion" \
  --batch_size "$BATCH" --workers "$WORKERS" --device "$DEVICE"

step agreement 20 60 "$PY" benchmarks/gpu_agreement.py --device "$DEVICE"

step finetune 45 120 "$PY" benchmarks/gpu_finetune_speed.py --image_dir "$WORK/photos" --seconds "${FT_SECONDS:-20}" \
  --batch_size "${FT_BATCH:-256}" --pool "${FT_POOL:-1024}" --device "$DEVICE"

gpu_tests=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
step pytest_gpu 60 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors $gpu_tests

# Serving: a model retrained on 1,000 Fashion-MNIST images, served on CUDA, loaded with photo JPEGs.
if [ -n "$STEPS" ] && [[ " $STEPS " != *" serve "* ]]; then
  echo "skipped: not in STEPS" >"$WORK/serve.skip"
elif ! "$PY" -m headstart serve --help >"$WORK/serve_help.txt" 2>&1; then
  echo '{"skipped": "headstart serve not available"}' >"$WORK/serve.out"
  echo "0 0" >"$WORK/serve.rc"
  : >"$WORK/serve.err"
elif [ "$(left)" -lt 90 ]; then
  echo "skipped: out of time ($(left) s of the budget left, serving needs about 90)" >"$WORK/serve.skip"
else
  step serve_model 30 90 "$PY" -m headstart retrain --image_dir "$WORK/fashion_small" --output_dir "$WORK/run" \
    --runtime "$RUNTIME" --how_many_training_steps 200 --no_report -q
  port=$(( 20000 + RANDOM % 20000 ))
  extra=()
  for flag in "--runtime $RUNTIME" "--precision $PRECISION" "--max_batch_size 64" "--max_queue 4096"; do
    grep -q -- "${flag%% *}" "$WORK/serve_help.txt" && extra+=($flag)
  done
  timeout --kill-after=10 120 "$PY" -m headstart serve --model "$WORK/run" --host 127.0.0.1 --port "$port" \
    "${extra[@]}" >"$WORK/serve_server.log" 2>&1 &
  server=$!
  step serve 30 90 "$PY" benchmarks/gpu_serve_load.py --port "$port" --images "$WORK/photos" --concurrency 64 \
    --seconds 20 --ready_timeout 60
  kill "$server" 2>/dev/null
  for _ in $(seq 1 20); do kill -0 "$server" 2>/dev/null || break; sleep 1; done
  kill -9 "$server" 2>/dev/null
  tail -n 5 "$WORK/serve_server.log" >>"$WORK/serve.err"
fi

ceilings=$([ "$DEVICE" = cuda ] && echo cuda-fp16,cuda-fp32 || echo torch-fp32)
extract() {  # extract NAME DECODE [--compile]: the figures of docs/PERFORMANCE.md's GPU section, same command
  local name=$1 decode=$2
  shift 2
  step "$name" 45 90 "$PY" -m headstart bench extract --image_dir "$WORK/photos" --limit 3000 --runtime "$RUNTIME" \
    --precision "$PRECISION" --ceilings "$ceilings" --batch_size "$BATCH" --decode "$decode" --workers "$WORKERS" \
    --seconds 3 --format json --quiet "$@"
}
extract extract processes
extract extract_threads threads
[ "${COMPILE:-0}" = 1 ] && extract extract_compile processes --compile

"$PY" - "$WORK" "$(( $(date +%s) - start ))" "${OUT:-}" <<'PYEOF'
import json, sys
from pathlib import Path

work, seconds, out_dir = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
steps = ("images", "ceiling", "e2e", "agreement", "finetune", "pytest_gpu", "serve_model", "serve", "extract",
         "extract_threads", "extract_compile")
result = {"seconds": seconds, "work": str(work)}
logs = []
for name in steps:
    if (work / f"{name}.skip").exists():
        result[name] = {"skipped": (work / f"{name}.skip").read_text().strip().removeprefix("skipped: ")}
        continue
    if not (work / f"{name}.rc").exists():
        result[name] = {"skipped": "not run"}
        continue
    rc, took = (int(v) for v in (work / f"{name}.rc").read_text().split())
    text = (work / f"{name}.out").read_text()
    err = (work / f"{name}.err").read_text()
    logs.append(f"===== {name} (rc {rc}, {took} s)\n{err[-6000:]}")
    if name == "pytest_gpu":
        lines = [l for l in text.strip().splitlines() if l.strip()]
        failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]
        result[name] = {"rc": rc, "summary": lines[-1] if lines else "", "failures": failures}
        continue
    try:
        value = json.loads(text[text.index("{"):]) if "{" in text else None
    except ValueError:
        value = None
    if rc == 0 and value is not None:
        result[name] = value
    elif rc == 0:
        result[name] = {"ok": True, "stdout_tail": text.strip().splitlines()[-3:]}
    else:
        result[name] = {"error": f"exit code {rc}" + (" (timed out)" if rc in (124, 137) else ""),
                        "stderr_tail": err.strip().splitlines()[-5:], **({"partial": value} if value else {})}
    result[name]["step_seconds"] = took

def rate(*keys):
    value = result
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value

targets = {"photos_e2e_gpu": (rate("e2e", "photos", "gpu", "images_per_s"), 5000),
           "phone_12mp_e2e_gpu": (rate("e2e", "phone", "gpu", "images_per_s"), 500),
           "fashion_png_e2e_gpu": (rate("e2e", "fashion", "gpu", "images_per_s"), 10000),
           "finetune_all_train": (rate("finetune", "train_images_per_s"), 2000),
           "serve_concurrency_64": (rate("serve", "images_per_s"), 3000)}
result["targets"] = {k: {"measured": v, "target": t, "met": None if v is None else v >= t}
                     for k, (v, t) in targets.items()}
result["gpu_decode_faster"] = {k: rate("e2e", k, "gpu_over_cpu") for k in ("photos", "phone", "fashion")}
text = json.dumps(result, indent=2)
print(text)
if out_dir:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "gpu_check.json").write_text(text)
    (Path(out_dir) / "gpu_check_logs.txt").write_text("\n".join(logs)[-2_000_000:])
PYEOF
