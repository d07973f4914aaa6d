#!/usr/bin/env bash
# Launch `distill train` on every visible GPU of this machine (or of several machines).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./launch.sh RECIPE [key=value ...]

Trains RECIPE with one process per visible GPU through `accelerate launch`
(DDP over NCCL). Overrides are passed on to `distill train`.

Environment:
  NPROC        processes on this machine (default: the number of visible GPUs,
               or 1 without a GPU). Without a GPU, NPROC=2 runs two CPU
               processes over gloo (torchrun), which is how the tests check
               the distributed path.
  NNODES       machines in the job (default 1, or SLURM_NNODES under SLURM)
  NODE_RANK    this machine's rank, 0..NNODES-1 (default 0, or SLURM_NODEID)
  MASTER_ADDR  address of the rank-0 machine (default 127.0.0.1, or the first
               host of SLURM_JOB_NODELIST)
  MASTER_PORT  its port (default 29500)
  PYTHON       the Python that has distill installed (default: .venv/bin/python
               next to this script if present, else python3)

Examples:
  ./launch.sh recipes/fashion_mnist/plain_tiny.yaml train.epochs=2
  NPROC=2 ./launch.sh recipes/fashion_mnist/plain_tiny.yaml data.batch_size=64
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 ./launch.sh recipes/cifar10/hard_tiny.yaml
  sbatch scripts/slurm.sbatch recipes/cifar10/hard_tiny.yaml
EOF
}

die() { echo "error: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
[[ "$1" == "-h" || "$1" == "--help" ]] && { usage; exit 0; }
[[ -f "$1" ]] || die "recipe $1 not found; pass a YAML file such as recipes/fashion_mnist/plain_tiny.yaml"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

# SLURM: one launch.sh per node (srun --ntasks-per-node=1); read the job's layout.
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  NNODES="${NNODES:-${SLURM_NNODES:-1}}"
  NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
  if [[ -z "${MASTER_ADDR:-}" && -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
    MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  fi
fi
NNODES="${NNODES:-1}"; NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"; MASTER_PORT="${MASTER_PORT:-29500}"

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
gpus="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" \
  || die "cannot import torch with $PYTHON; run 'make setup' or set PYTHON"
# A driver older than torch's CUDA build: nvidia-smi lists the GPUs, torch sees none. Refuse rather than
# train on the CPU unasked; CUDA_VISIBLE_DEVICES (set, even empty) says which GPUs are meant.
if (( gpus == 0 )) && [[ -z "${CUDA_VISIBLE_DEVICES+set}" ]] && command -v nvidia-smi >/dev/null \
    && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  cuda="$("$PYTHON" -c 'import torch; print(torch.version.cuda)' 2>/dev/null || true)"
  die "nvidia-smi lists $(nvidia-smi -L | grep -c '^GPU ') GPU(s) but torch (CUDA $cuda) sees none: the driver is likely older than that CUDA; update the driver or install torch for the driver's CUDA, or run CUDA_VISIBLE_DEVICES= ./launch.sh ... to train on the CPU"
fi
NPROC="${NPROC:-$(( gpus > 0 ? gpus : 1 ))}"
is_count "$NPROC" || die "NPROC=$NPROC is not a positive whole number"
is_count "$NNODES" || die "NNODES=$NNODES is not a positive whole number"
[[ "$NODE_RANK" =~ ^[0-9]+$ && "$NODE_RANK" -lt "$NNODES" ]] || die "NODE_RANK=$NODE_RANK must be in 0..$((NNODES - 1))"
[[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || die "MASTER_PORT=$MASTER_PORT is not a port number"
(( gpus == 0 || NPROC <= gpus )) || die "NPROC=$NPROC but only $gpus GPU(s) are visible"

if (( NPROC == 1 && NNODES == 1 )); then
  exec "$PYTHON" -m distill train "$@"
fi
# Several processes: torchrun or `accelerate launch` runs inside `python -m distill.runs.peers`,
# which ends a failed job in one line (who ended first, the checkpoint to resume from) instead of
# their failure table; a user error is the training process's own one line, and no resume hint.
run_job() {
  local status child
  # The launcher runs in the background of this script so that Ctrl-C goes to the training
  # processes themselves (its children), which stop at the next step they all agree on and exit
  # cleanly; torchrun is told not to handle SIGINT (it would end the job with a traceback of its
  # own). The training processes die with the launcher (distill/runs/launcher.py), and the
  # launcher with this script.
  export PET_SIGNALS_TO_HANDLE="SIGTERM,SIGHUP,SIGQUIT"
  "$PYTHON" -m distill.runs.peers "$@" &
  child=$!
  trap 'pkill -INT -P "$child" 2>/dev/null' INT
  trap 'kill -TERM "$child" 2>/dev/null' TERM
  while true; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
  done
  if (( status == 128 + 9 )); then  # the launcher itself was killed (SIGKILL): nobody else can say so
    "$PYTHON" -m distill.runs.peers killed "${args[@]}" || true
  fi
  exit "$status"
}
args=("$@")
if (( gpus > 0 )); then
  run_job accelerate --multi_gpu \
    --num_processes $(( NPROC * NNODES )) --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
    --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    -m distill train "$@"
fi
# No GPU: torchrun starts the CPU processes; Accelerate reads its environment and, told to stay
# on the CPU, runs them as MULTI_CPU over gloo.
export ACCELERATE_USE_CPU=1
# One process per core share, unless told otherwise: more threads than cores thrash.
cores="$(nproc 2>/dev/null || echo 1)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / NPROC > 0 ? cores / NPROC : 1 ))}"
run_job torchrun --nproc_per_node "$NPROC" --nnodes "$NNODES" \
  --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m distill train "$@"
