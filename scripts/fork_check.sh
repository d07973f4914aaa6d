#!/usr/bin/env bash
# Cooldown forks against cosine runs (docs/ladder.md): per seed, one long warmup-stable-decay run of
# LONG epochs, forks into LONG/2 and LONG/4 epochs from its last epoch checkpoint at or before each
# one's cooldown start, and full cosine runs of those two budgets; then the table
# (python -m distill.report.ladder). The student is the scaling study's smallest (w64d2,
# recipes/studies/scaling_cpu.yaml) on its 5,000-image subset, no augmentation, 39 steps an epoch.
# Seeds run side by side, one thread each.
#   bash scripts/fork_check.sh OUT_DIR [SEEDS] [LONG] [COOLDOWN]   # docs/ladder.md: OUT_DIR "0 1 2" 16 0.25
set -euo pipefail
out=${1:?usage: fork_check.sh OUT_DIR [SEEDS] [LONG] [COOLDOWN]}
seeds=${2:-0 1 2}
long=${3:-16}
cooldown=${4:-0.25}
py=${PYTHON:-python}
export OMP_NUM_THREADS=1
recipe=recipes/fashion_mnist/plain_tiny.yaml
steps=$((5000 / 128))  # steps an epoch (the last partial batch is dropped)
common=(output_dir="$out" student.embed_dim=64 student.depth=2 student.num_heads=2
        data.train_subset=5000 data.cutmix_alpha=0 data.crop_padding=0 data.hflip=false data.label_smoothing=0.1
        data.aug_seed=0 train.lr=1e-3 train.warmup_epochs=0.1 train.mixed_precision=auto train.log_every=100
        train.eval_every=1000 train.cooldown=$cooldown train.log_with=[])
train() { local name=$1; shift; $py -m distill train "$recipe" "${common[@]}" name="$name" "$@" > "$out/logs/$name.log" 2>&1; }
fork_epoch() {  # the last epoch at or before the cooldown start of an $1-epoch run
  $py -c "from distill.schedule import cooldown_start as c; print(c($1 * $steps, $cooldown) // $steps)"
}
lane() {  # one seed's runs, in order: the long run first, since the forks start from its checkpoints
  local s=$1 e at
  train wsd_e${long}_s$s seed=$s train.epochs=$long train.schedule=wsd train.checkpoint_every=1 \
      train.keep_checkpoints=$long
  for e in $((long / 2)) $((long / 4)); do
    at=$(fork_epoch $e)
    train fork_e${e}_s$s seed=$s train.epochs=$e train.schedule=wsd train.checkpoint_every=1000 \
        train.resume="$out/wsd_e${long}_s$s/checkpoints/$(printf 'step_%09d' $((at * steps)))"
  done
  for e in $((long / 2)) $((long / 4)); do
    train cosine_e${e}_s$s seed=$s train.epochs=$e train.schedule=cosine train.checkpoint_every=1000
  done
}
mkdir -p "$out/logs"
t0=$(date +%s)
for s in $seeds; do lane "$s" & done
wait
echo "wall $(( $(date +%s) - t0 )) s; CPU of this shell, then of the runs (user, sys):"; times
$py -m distill.report.ladder "$out"
