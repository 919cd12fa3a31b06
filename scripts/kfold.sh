#!/usr/bin/env bash
# k-fold cross-validation of one configuration: every fold, then mean ± standard deviation per metric.
# Usage: scripts/kfold.sh CONFIG DIR [FOLDS=5 | column]
# Fold K (0 … FOLDS-1) runs in DIR/fold_K with split.strategy=kfold, split.folds=FOLDS, split.fold=K
# (whole groups per fold, stratified by class). With `column` the folds are the data set's own: those of
# the manifest column split.column (default `fold`) besides split.test_fold, with split.strategy=column
# (set split.column / split.test_fold in CONFIG or AUDIOTOKENS_ARGS), fold K = the K-th in natural order.
# `audiotokens run` runs every stage of each fold, the token model and the baselines. The frames are computed once, in DIR/base, and every fold links to them: a fold's
# split differs, its spectrogram stage is fresh. The per-metric summary is printed and written to DIR/kfold_summary.json, which
# `audiotokens compare DIR ...` shows as one run. Extra `audiotokens` options go in AUDIOTOKENS_ARGS;
# PYTHON names an interpreter that imports audiotokens (default: the one the audiotokens command uses).
set -euo pipefail
usage="usage: kfold.sh CONFIG DIR [FOLDS=5 | column]"
config=${1:?$usage}
dir=${2:?$usage}
folds=${3:-5}
extra=(${AUDIOTOKENS_ARGS:-})
py=${PYTHON:-$(sed -n '1s/^#!//p' "$(command -v audiotokens)")}

if [ "$folds" = column ]; then
  kfold=(--set split.strategy=column)
else
  kfold=(--set split.strategy=kfold --set "split.folds=$folds")
fi
audiotokens run --config "$config" --workdir "$dir/base" --to spectrogram "${kfold[@]}" "${extra[@]}"
base=$(cd "$dir/base/processed" && pwd)
if [ "$folds" = column ]; then  # as many folds as the column has besides the test fold
  folds=$("${py:-python3}" - "$dir/base" <<'PY'
import json
import sys

from audiotokens.pipeline.layout import Layout

folds = json.loads(Layout(sys.argv[1]).split_report.read_text()).get("folds")
if folds is None:
    sys.exit("kfold.sh: the column names sides (train/validation/test), not folds: there is nothing to rotate")
print(len(folds))
PY
)
fi
for ((k = 0; k < folds; k++)); do
  echo "── fold $k of $folds"
  mkdir -p "$dir/fold_$k/processed"
  for shared in frames spectrogram.meta.json; do
    [ -e "$dir/fold_$k/processed/$shared" ] || ln -s "$base/$shared" "$dir/fold_$k/processed/$shared"
  done
  audiotokens run --config "$config" --workdir "$dir/fold_$k" "${kfold[@]}" --set "split.fold=$k" "${extra[@]}"
done

"${py:-python3}" - "$dir" "$folds" <<'PY'
import sys
from pathlib import Path

from audiotokens.evaluation.compare import format_kfold, write_kfold_summary
from audiotokens.pipeline.layout import KFOLD_SUMMARY

directory, folds = Path(sys.argv[1]), int(sys.argv[2])
summary = write_kfold_summary(directory, [directory / f"fold_{k}" for k in range(folds)])
print(format_kfold(summary))
print(f"written to {directory / KFOLD_SUMMARY}")
PY
