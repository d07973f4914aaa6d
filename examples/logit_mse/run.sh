#!/usr/bin/env bash
# Train the example's teacher, then a student with the plugin method, into OUT (from any folder: the
# recipes name their files relative to themselves). PYTHON picks the interpreter that has distill.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: run.sh OUT}")
cd "$(dirname "$0")"
PY=${PYTHON:-python}
"$PY" -m distill train teacher.yaml "output_dir=$OUT"
"$PY" -m distill train logit_mse.yaml "output_dir=$OUT" "teacher.checkpoint=$OUT/teacher"
