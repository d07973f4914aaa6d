#!/usr/bin/env bash
# The CUDA paths no CPU test runs, on one GPU in about ten minutes: one line per check, exit 1 if any
# failed. Offline: the data are made here. What each line means: docs/gpu_check.md.
#   scripts/gpu_check.sh                    # every check, from the repo root
#   scripts/gpu_check.sh resume cmyk        # only those (names as printed)
# Environment: PYTHON (default .venv/bin/python, else python3), WORK (default /tmp/gpu_check: data, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
WORK="${WORK:-/tmp/gpu_check}"
ALL=(device data cuda_tests graphed_syncs resume cmyk_decode bench_device bench_workers deit_e2e)
if (( $# )); then wanted=("$@"); else wanted=("${ALL[@]}"); fi
for w in "${wanted[@]}"; do
  [[ " ${ALL[*]} " == *" $w "* ]] || { echo "error: no check named $w; checks: ${ALL[*]}" >&2; exit 2; }
done
mkdir -p "$WORK" || { echo "error: cannot create WORK=$WORK" >&2; exit 2; }
failed=0

wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

# check NAME SECONDS COMMAND...: run it under `timeout`, its output in $WORK/NAME.log; print its own
# "ok ..." / "FAIL ..." line, or one made from its exit status and last line.
check() {
  local name="$1" limit="$2" log="$WORK/$1.log" status line
  shift 2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  status=$?
  line="$(grep -E '^(ok  |FAIL) ' "$log" | tail -n 1)"
  if (( status == 124 || status == 137 )); then
    printf 'FAIL %-14s timed out after %ss (log: %s)\n' "$name" "$limit" "$log"
  elif [[ -n "$line" ]]; then
    echo "$line"
  elif (( status == 0 )); then
    printf 'ok   %-14s %s\n' "$name" "$(tail -n 1 "$log")"
  else
    printf 'FAIL %-14s exit %s: %s (log: %s)\n' "$name" "$status" "$(tail -n 1 "$log")" "$log"
  fi
  (( status == 0 )) || failed=1
}

check device 60 "$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    print(f"FAIL device         torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"); sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f"ok   device         {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
      f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s)")'
if (( failed )); then exit 1; fi

if wants data || wants graphed_syncs || wants resume || wants bench_device || wants bench_workers || wants deit_e2e; then
  check data 180 bash -c "'$PY' scripts/gpu_check.py small '$WORK/small' && '$PY' scripts/gpu_check.py jpegs '$WORK/jpegs'"
fi
if wants cuda_tests; then
  check cuda_tests 300 env DISTILL_TEST_CUDA=1 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/
fi
wants graphed_syncs && check graphed_syncs 150 "$PY" scripts/gpu_check.py syncs "$WORK/small" "$WORK/runs_syncs"
if wants resume; then
  rm -rf "$WORK/runs_resume"
  check resume 240 "$PY" scripts/gpu_check.py resume "$WORK/small" "$WORK/runs_resume"
fi
wants cmyk_decode && check cmyk_decode 60 "$PY" scripts/gpu_check.py cmyk "$WORK"
wants bench_device && check bench_device 180 "$PY" scripts/gpu_check.py bench "$WORK/jpegs" device
wants bench_workers && check bench_workers 180 "$PY" scripts/gpu_check.py bench "$WORK/jpegs" workers
wants deit_e2e && check deit_e2e 240 "$PY" scripts/gpu_check.py deit "$WORK/jpegs"
exit "$failed"
