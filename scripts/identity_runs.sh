#!/usr/bin/env bash
# Fixed short runs whose weights must not change when code is only moved (issue 19): a plain
# student with CutMix, a hard-distilled student with a live teacher, a KD student replaying the
# logit cache the hard run recorded, and a feature-distilled student (live teacher). Prints one sha256 per run of its student's tensors (names,
# dtypes, shapes and bytes, in name order), so two commits can be compared line by line.
# With OLD_OUT, the OUT_DIR of an earlier commit's run of this script, two more lines show that this
# code reads what the earlier one wrote: `kd_old_cache` replays OLD_OUT's logit cache (its hash must
# equal kd_replay's), and `plain_old_resume` resumes a copy of OLD_OUT's plain run from its epoch-1
# checkpoint (its hash must equal plain_cutmix's).
#   bash scripts/identity_runs.sh OUT_DIR [OLD_OUT]
set -euo pipefail
out=${1:?usage: identity_runs.sh OUT_DIR [OLD_OUT]}
old=${2:-}
py=${PYTHON:-python}
common=(output_dir="$out" seed=0 data.train_subset=1024 data.test_subset=500 data.batch_size=64
        train.epochs=2 train.warmup_epochs=0.5 train.lr=1e-3 train.mixed_precision=no)
$py -m distill train recipes/fashion_mnist/teacher_resnet18.yaml "${common[@]}" name=teacher \
    student.model=resnet10t train.epochs=1 >/dev/null
$py -m distill train recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" name=plain_cutmix \
    data.cutmix_alpha=1.0 >/dev/null
$py -m distill train recipes/fashion_mnist/hard_tiny.yaml "${common[@]}" name=hard_live \
    teacher.model=resnet10t teacher.checkpoint="$out/teacher" distill.cache=true >/dev/null
$py -m distill train recipes/fashion_mnist/kd_tiny.yaml "${common[@]}" name=kd_replay \
    teacher.model=resnet10t teacher.checkpoint="$out/teacher" distill.cache=true >/dev/null
$py -m distill train recipes/fashion_mnist/feature_tiny.yaml "${common[@]}" name=feature_live \
    teacher.model=resnet10t teacher.checkpoint="$out/teacher" >/dev/null
runs=(teacher plain_cutmix hard_live kd_replay feature_live)
if [ -n "$old" ]; then
  $py -m distill train recipes/fashion_mnist/kd_tiny.yaml "${common[@]}" name=kd_old_cache \
      teacher.model=resnet10t teacher.checkpoint="$old/teacher" distill.cache=true >/dev/null
  mkdir -p "$out/old_resume" && cp -r "$old/plain_cutmix" "$out/old_resume/"
  rm "$out/old_resume/plain_cutmix/summary.json" "$out/old_resume/plain_cutmix/student.safetensors"
  rm -r "$(ls -d "$out"/old_resume/plain_cutmix/checkpoints/step_* | tail -1)"  # resume from epoch 1's checkpoint
  $py -m distill train recipes/fashion_mnist/plain_tiny.yaml "${common[@]}" output_dir="$out/old_resume" \
      name=plain_cutmix data.cutmix_alpha=1.0 train.resume=auto >/dev/null
  ln -s old_resume/plain_cutmix "$out/plain_old_resume"
  runs+=(kd_old_cache plain_old_resume)
fi
for run in "${runs[@]}"; do
  $py - "$out/$run/student.safetensors" "$run" <<'PY'
import hashlib, sys
from safetensors.torch import load_file
state, h = load_file(sys.argv[1]), hashlib.sha256()
for name in sorted(state):
    t = state[name].contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
print(f"{sys.argv[2]:14s} {h.hexdigest()}")
PY
done
