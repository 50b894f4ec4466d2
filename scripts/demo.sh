#!/usr/bin/env bash
# headstart's main job end to end on demo data: install, write the Fashion-MNIST
# demo folder, retrain a classifier on it, evaluate it on unseen images, label a few.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
set -x
headstart datasets fashion-mnist --out demo/fashion --per_class 300
headstart datasets fashion-mnist --out demo/unseen --split test --per_class 100
headstart retrain --image_dir demo/fashion --output_dir runs/demo
headstart evaluate --model runs/demo --image_dir demo/unseen
headstart label --model runs/demo demo/unseen/Sandal/test_00011.png demo/unseen/Bag/test_00018.png --top_k 3
