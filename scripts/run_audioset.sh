#!/usr/bin/env bash
# AudioSet balanced-train end to end with the recommended recipe for its size (configs/large_data.toml).
# Usage: scripts/run_audioset.sh AUDIO_ROOT [METADATA_DIR] [WORKDIR]
#   AUDIO_ROOT    audio in any supported layout: {bal_train,eval}/{ytid[:2]}/{ytid}.flac, Y{ytid}*.wav, ...
#   METADATA_DIR  holds balanced_train_segments.csv, eval_segments.csv, class_labels_indices.csv
# The official split: balanced_train is the training side, eval_segments the validation side.
# Extra options (e.g. --set train.batch_size=32) go in AUDIOTOKENS_ARGS; CONFIG names another config file.
set -euo pipefail
root=${1:?usage: run_audioset.sh AUDIO_ROOT [METADATA_DIR] [WORKDIR]}
meta=${2:-$root}
workdir=${3:-runs/audioset}
extra=(${AUDIOTOKENS_ARGS:-})
config=${CONFIG:-$(dirname "$0")/../configs/large_data.toml}

settings=(
  --config "$config"
  --set data.source=audioset
  --set "data.audio_root=$root"
  --set "data.segments=$meta/balanced_train_segments.csv"
  --set "data.eval_segments=$meta/eval_segments.csv"
  --set "data.class_labels=$meta/class_labels_indices.csv"
  --set split.strategy=official
)
audiotokens run --workdir "$workdir" "${settings[@]}" "${extra[@]}"
audiotokens status --workdir "$workdir" "${settings[@]}" "${extra[@]}"
