#!/usr/bin/env bash
# Issue 5's GPU goal: a 200-epoch distilled run with the teacher-logit cache in at most 1.15x
# the plain run. On one GPU, over 50,000 Fashion-MNIST images, bf16, the whole step as a CUDA graph:
#   1. plain: the seed Tiny recipe (the yardstick, timed on the same card);
#   2. record: hard distillation with a live resnet18 teacher (CIFAR stem), writing the cache;
#   3. replay: the same run again under another name, the teacher's logits read from the cache.
# The teacher's weights do not change its speed, so a fresh one stands in (teacher.checkpoint=null).
# A fresh teacher's init follows `seed`, so the replay keeps it; with a trained teacher
# (teacher.checkpoint=RUN) other seeds share the cache too. Each run resumes if a call was cut short.
#   scripts/gpu_cached_200ep.sh [FASHION_MNIST_DIR]   (EPOCHS, SUBSET, OUT_DIR and EXTRA override)
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's venv where it has one (as launch.sh), else the system's; PYTHON= overrides
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
OUT_DIR="${OUT_DIR:-runs/gpu_cached_200ep}"
root="${1:-/usr/share/datasets/fashion-mnist}"
common=(data.root="$root" data.train_subset="${SUBSET:-50000}" train.epochs="${EPOCHS:-200}" data.aug_seed=0
        train.mixed_precision=bf16 train.cuda_graphs=true output_dir="$OUT_DIR" train.resume=auto ${EXTRA:-})
hard=(recipes/fashion_mnist/hard_tiny.yaml "${common[@]}" teacher.checkpoint=null distill.cache=true)

"$PY" -m distill train recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" name=plain
"$PY" -m distill train "${hard[@]}" name=record
"$PY" -m distill train "${hard[@]}" name=replay
"$PY" - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
s = {k: json.loads((Path(sys.argv[1]) / k / "summary.json").read_text()) for k in ("plain", "record", "replay")}
for k, v in s.items():
    print(f"{k:7s} wall {v['wall_s']:8.1f} s  {v['train_img_per_s']:9.0f} img/s  top1 {v['final_top1']:.2f}")
# time ratios (replay takes Nx the plain run's time): training time from img/s, and wall time
print(f"replay / plain time: {s['plain']['train_img_per_s'] / s['replay']['train_img_per_s']:.3f}x (training), "
      f"{s['replay']['wall_s'] / s['plain']['wall_s']:.3f}x (wall)")
PY
