#!/usr/bin/env bash
# GPU speed study (issue: speed). Writes bench JSON files into $OUT_DIR (default bench/).
#   scripts/bench_gpu.sh [FASHION_MNIST_DIR]
# 1. `distill bench` of the seed Tiny recipe in bf16 on 50,000 images: eager, compiled, CUDA graph;
# 2. the hard-distilled recipe with a CUDA graph (teacher forward share);
# 3. ViT-Base at 224 px (patch 16), compiled bf16: model-FLOPs utilisation against the card's peak.
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's venv where it has one (as launch.sh), else the system's; PYTHON= overrides
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
OUT_DIR="${OUT_DIR:-bench}"
mkdir -p "$OUT_DIR"
root="${1:-/usr/share/datasets/fashion-mnist}"
common=(data.root="$root" data.train_subset=50000 train.mixed_precision=bf16)
steps=(--steps "${STEPS:-300}" --warmup "${WARMUP:-50}")

"$PY" -m distill bench recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" "${steps[@]}" --out "$OUT_DIR/tiny_eager.json"
"$PY" -m distill bench recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" train.compile=true "${steps[@]}" \
  --out "$OUT_DIR/tiny_compiled.json"
"$PY" -m distill bench recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" train.cuda_graphs=true "${steps[@]}" \
  --out "$OUT_DIR/tiny_graphed.json"
# teacher weights do not change its speed: a fresh resnet18 (CIFAR stem) stands in for a trained one
"$PY" -m distill bench recipes/fashion_mnist/hard_tiny.yaml "${common[@]}" train.cuda_graphs=true teacher.checkpoint=null \
  "${steps[@]}" --out "$OUT_DIR/tiny_hard_graphed.json"
"$PY" -m distill bench recipes/fashion_mnist/plain_tiny.yaml data.root="$root" data.train_subset=16384 \
  train.mixed_precision=bf16 train.compile=true student.model=distill_vit_base data.img_size=224 \
  student.patch_size=16 data.batch_size=256 --steps 30 --warmup 10 --out "$OUT_DIR/base224_compiled.json"
