#!/usr/bin/env bash
# Tokenizer sweep: one split and one set of spectrograms, shared by every tokenizer, then one table.
#
#   scripts/sweep_tokenizers.sh CONFIG SWEEP_DIR [SPEC ...]
#
# A SPEC is NAME or NAME:key=value,key=value. NAME is a tokenizer kind (frame, stacked, subband,
# residual, scalar) or `frames`, the control that feeds the stored frames to the same model (no
# tokens). A key without a section is a [cluster] key (n_clusters, bands, stages, levels, stack, ...);
# a dotted key is taken as is (e.g. model.token_embedding=decoded). With TOKEN_EMBEDDINGS set (e.g.
# "learned decoded"), every tokenizer spec runs once per embedding. Each spec gets SWEEP_DIR/<spec>/,
# whose processed/ links to SWEEP_DIR/base/processed (nothing recomputed). The MFCC baselines run once,
# in base. Then `audiotokens compare` writes SWEEP_DIR/compare/: compare.md/.csv (tokenizer settings,
# bits per frame, validation reconstruction MSE, validation and test metrics, train time),
# compare.png and compare_bits.png (metric against bits per frame).
# Robustness mode: with CORRUPT set to corruption specs (e.g. "noise:snr=20 noise:snr=10 noise:snr=5"), every
# run and the baselines are also scored on ROBUSTNESS_SPLIT (default test) clean and under each corruption
# (`audiotokens evaluate --corrupt`), and compare adds compare_robustness.md/.csv (model x corruption: the
# metric, token change and frame change) and compare_snr.png (the metric against SNR per model).
# Extra `audiotokens` options go in the AUDIOTOKENS_ARGS variable.
set -euo pipefail
config=${1:?usage: sweep_tokenizers.sh CONFIG SWEEP_DIR [SPEC ...]}
sweep=${2:?usage: sweep_tokenizers.sh CONFIG SWEEP_DIR [SPEC ...]}
shift 2
default_specs=(
  frames frames:model.encoder=cnn,model.pooling=mean
  frame:n_clusters=50 frame:n_clusters=500
  stacked:stack=2,n_clusters=500 stacked:stack=4,n_clusters=500
  subband:bands=4,n_clusters=64 subband:bands=8,n_clusters=256
  residual:stages=2,n_clusters=256 residual:stages=4,n_clusters=256
  scalar:levels=4 scalar:levels=16
)
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=("${default_specs[@]}")
embeddings=(${TOKEN_EMBEDDINGS:-})
extra=(${AUDIOTOKENS_ARGS:-})
corrupt=()
for spec in ${CORRUPT:-}; do corrupt+=(--corrupt "$spec"); done
robust() {  # WORKDIR [OPTIONS...]: in robustness mode, the tables of the workdir's model and baselines
  local dir=$1
  shift
  [ ${#corrupt[@]} -eq 0 ] || audiotokens evaluate --config "$config" --workdir "$dir" \
    --split "${ROBUSTNESS_SPLIT:-test}" "${corrupt[@]}" "$@" "${extra[@]}"
}

base="$sweep/base"
audiotokens run --config "$config" --workdir "$base" --to spectrogram "${extra[@]}"
audiotokens run --config "$config" --workdir "$base" --from baseline --to baseline "${extra[@]}"
robust "$base"

settings_of() {  # SPEC -> --set options
  local name=${1%%:*} rest="" key
  [[ $1 == *:* ]] && rest=${1#*:}
  if [ "$name" = frames ]; then
    echo "--set model.input=frames"
  else
    echo "--set cluster.quantizer=$name"
  fi
  IFS=, read -r -a pairs <<< "$rest"
  for key in "${pairs[@]}"; do
    [ -n "$key" ] || continue
    [[ ${key%%=*} == *.* ]] && echo "--set $key" || echo "--set cluster.$key"
  done
}

runs=("$base")
for spec in "${specs[@]}"; do
  variants=("")
  if [ "${spec%%:*}" != frames ] && [ ${#embeddings[@]} -gt 0 ]; then
    variants=("${embeddings[@]}")
  fi
  for embedding in "${variants[@]}"; do
    name=$(echo "$spec${embedding:+_token_embedding=$embedding}" | sed 's/:/_/; s/,/_/g; s/train\.//g; s/model\.//g')
    dir="$sweep/$name"
    mkdir -p "$dir"
    [ -e "$dir/processed" ] || ln -s "$(cd "$base" && pwd)/processed" "$dir/processed"
    read -r -a options <<< "$(settings_of "$spec" | tr '\n' ' ')"
    [ -z "$embedding" ] || options+=(--set "model.token_embedding=$embedding")
    echo "== $name: ${options[*]}"
    from=cluster
    [ "${spec%%:*}" != frames ] || from=train  # the frames control needs no vocabulary
    audiotokens run --config "$config" --workdir "$dir" --from "$from" --to evaluate "${options[@]}" "${extra[@]}"
    robust "$dir" "${options[@]}"
    runs+=("$dir")
  done
done
audiotokens compare "${runs[@]}" --out "$sweep/compare"
