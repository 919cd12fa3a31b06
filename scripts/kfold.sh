#!/usr/bin/env bash
# k-fold cross-validation of one configuration: every fold, then mean ± standard deviation per metric.
# Usage: scripts/kfold.sh CONFIG DIR [FOLDS=5]
# Fold K (0 … FOLDS-1) runs in DIR/fold_K with split.strategy=kfold, split.folds=FOLDS, split.fold=K
# (whole groups per fold, stratified by class); `audiotokens run` runs every stage of it, the token model
# and the baselines. The frames are computed once, in DIR/base, and every fold links to them: a fold's
# split differs, its spectrogram stage is fresh. The per-metric summary is printed and written to DIR/kfold_summary.json, which
# `audiotokens compare DIR ...` shows as one run. Extra `audiotokens` options go in AUDIOTOKENS_ARGS;
# PYTHON names an interpreter that imports audiotokens (default: the one the audiotokens command uses).
set -euo pipefail
usage="usage: kfold.sh CONFIG DIR [FOLDS=5]"
config=${1:?$usage}
dir=${2:?$usage}
folds=${3:-5}
extra=(${AUDIOTOKENS_ARGS:-})

kfold=(--set split.strategy=kfold --set "split.folds=$folds")
audiotokens run --config "$config" --workdir "$dir/base" --to spectrogram "${kfold[@]}" "${extra[@]}"
base=$(cd "$dir/base/processed" && pwd)
for ((k = 0; k < folds; k++)); do
  echo "── fold $k of $folds"
  mkdir -p "$dir/fold_$k/processed"
  for shared in frames spectrogram.meta.json; do
    [ -e "$dir/fold_$k/processed/$shared" ] || ln -s "$base/$shared" "$dir/fold_$k/processed/$shared"
  done
  audiotokens run --config "$config" --workdir "$dir/fold_$k" --set split.strategy=kfold \
    --set "split.folds=$folds" --set "split.fold=$k" "${extra[@]}"
done

py=${PYTHON:-$(sed -n '1s/^#!//p' "$(command -v audiotokens)")}
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
