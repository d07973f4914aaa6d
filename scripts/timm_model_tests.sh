#!/usr/bin/env bash
# timm's own model test suite (tests/test_models.py of a pytorch-image-models checkout) run on the
# distill_vit_* family. Downloads nothing: give it the file.
#   scripts/timm_model_tests.sh PATH/TO/tests/test_models.py [pytest args; a -k of yours replaces ours,
#   so keep distill_vit in it: -k "distill_vit and fx"]
# PYTHON picks the interpreter (default .venv/bin/python); STD=1 first runs it without step 2 below.
#
# The file is copied to a temporary folder and changed in two declared ways, nothing else:
#   1. its model lists see only distill_vit_* (a conftest wraps timm.list_models; `import students`
#      registers the family first), and `-k distill_vit` deselects the tests not parametrised by model;
#   2. our family is classified as timm classifies its own ViTs: `distill_vit_*` joins NON_STD_FILTERS
#      (token output (B, T, D), no NCHW pool_size; timm lists vit_*, deit*, ... there) and the module
#      `vit` (students/vit.py) joins FEAT_INTER_FILTERS (models with forward_intermediates).
# Without step 2, test_model_default_cfgs (timm's CNN-shaped check: forward_features as NCHW of
# cfg pool_size) runs and fails as it would for timm's own vit_* (pool_size None there too), and
# test_model_forward_features (features_only) runs and passes: set STD=1 to run that first.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:?usage: scripts/timm_model_tests.sh PATH/TO/tests/test_models.py [pytest args]}"
shift
PY="${PYTHON:-$PWD/.venv/bin/python}"  # absolute: the tests run in a temporary folder
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$src" "$work/test_models.py"
cat > "$work/conftest.py" <<'EOF'
import fnmatch

import timm

import students  # noqa: F401  (registers distill_vit_*)

_list_models = timm.list_models


def _ours(*args, **kwargs):
    return [n for n in _list_models(*args, **kwargs) if fnmatch.fnmatch(n, "distill_vit_*")]


timm.list_models = _ours  # test_models.py does `from timm import list_models` after this runs
EOF
patch_lists() {  # $1: file; classify distill_vit_* as timm classifies its own ViTs
  "$PY" - "$1" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "NUM_NON_STD = len(NON_STD_FILTERS)"
assert text.count(anchor) == 1, f"{anchor!r} not found once: timm's test file changed, update this script"
text = text.replace(anchor, "NON_STD_FILTERS += ['distill_vit_*']  # distill: token output like vit_*\n"
                            "FEAT_INTER_FILTERS += ['vit']  # distill: students/vit.py has forward_intermediates\n"
                            + anchor)
open(path, "w").write(text)
EOF
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
if [ "${STD:-0}" = 1 ]; then
  echo "== unclassified (timm's CNN-shaped checks apply) =="
  (cd "$work" && "$PY" -m pytest test_models.py -k distill_vit -p no:cacheprovider -q -rfEs "$@") || status=$?
fi
patch_lists "$work/test_models.py"
echo "== classified as timm's own ViTs =="
(cd "$work" && "$PY" -m pytest test_models.py -k distill_vit -p no:cacheprovider -q -rfEs "$@") || status=$?
exit $status
