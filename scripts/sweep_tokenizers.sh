#!/usr/bin/env bash
# Tokenizer sweep: one split and one set of spectrograms, shared by every tokenizer, then one table.
#
#   scripts/sweep_tokenizers.sh CONFIG SWEEP_DIR [SPEC ...]
#
# A SPEC is NAME or NAME:key=value,key=value. NAME is a tokenizer kind (frame, stacked, subband,
# residual, scalar, or any other cluster.quantizer), `frames`, the control that feeds the stored frames to
# the same model (no tokens), or `units`, discrete speech-model units: k-means (frame) over hidden state
# ssl_layer of the local speech model ssl_model (spectrogram.features = ssl; SSL_MODEL gives the folder to
# units specs that name none), e.g. `units:ssl_layer=3 units:ssl_layer=6` sweeps the layer; or `codec`,
# a neural codec's own codes (codec:codec_model=FOLDER[,codec_codebooks=N]; its frames are rows of samples
# at the codec's rate and hop, read from the folder). A key without a
# section is a [cluster] key (n_clusters, bands, stages, levels, stack, ...; ssl_model and ssl_layer are
# [spectrogram] keys); a dotted key is taken as is (e.g. model.token_embedding=decoded). With
# TOKEN_EMBEDDINGS set (e.g. "learned decoded"), every tokenizer spec runs once per embedding. Each spec gets
# SWEEP_DIR/<spec>/, whose processed/ links to SWEEP_DIR/base/processed (nothing recomputed) — unless the
# spec sets a spectrogram key (units do): such a spec makes its own frames in its processed/, over base's
# split (the same clips on every side). The MFCC baselines run once, in base. Then `audiotokens compare`
# writes SWEEP_DIR/compare/: compare.md/.csv (each run's family, tokenizer settings, bits per frame and per
# second, validation reconstruction MSE, validation and test metrics, train time),
# compare.png and compare_bits.png (metric against bits per frame).
# Robustness mode: with CORRUPT set to corruption specs (e.g. "noise:snr=20 noise:snr=10 noise:snr=5"), every
# run and the baselines are also scored on ROBUSTNESS_SPLIT (default test) clean and under each corruption
# (`audiotokens evaluate --corrupt`), and compare adds compare_robustness.md/.csv (model x corruption: the
# metric, token change and frame change) and compare_snr.png (the metric against SNR per model).
# A run that fails (a bad key, a tokenizer that cannot fit these frames) is reported and the sweep goes on;
# the table holds the runs that finished, and the sweep then exits 1 naming the failed ones.
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
python=${PYTHON:-$(sed -n '1s/^#!//p' "$(command -v audiotokens)" 2>/dev/null || true)}
python=${python:-python3}  # the interpreter that imports audiotokens (codec specs read their folder with it)
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

codec_frames() {  # KEY=VALUE,... -> the --set options of the codec_model folder's sample rate and hop
  local model="" pair
  IFS=, read -r -a pairs <<< "$1"
  for pair in "${pairs[@]}"; do [ "${pair%%=*}" != codec_model ] || model=${pair#*=}; done
  "$python" -c 'import sys
from audiotokens.errors import UserError
from audiotokens.tokens.codec import codec_record
try:
    record = codec_record(sys.argv[1], 0)
except UserError as error:
    sys.exit(f"codec spec: {error}")
print(f"--set spectrogram.sample_rate={record.sample_rate}")
print(f"--set spectrogram.hop_length={record.hop_length}")' "$model"
}

settings_of() {  # SPEC -> --set options
  local name=${1%%:*} rest="" key
  [[ $1 == *:* ]] && rest=${1#*:}
  case $name in
    frames) echo "--set model.input=frames" ;;
    units)
      echo "--set spectrogram.features=ssl"
      echo "--set cluster.quantizer=frame"
      [[ ,$rest, == *,ssl_model=* || -z ${SSL_MODEL:-} ]] || echo "--set spectrogram.ssl_model=$SSL_MODEL" ;;
    codec)  # the codec's own rate and hop (its frames are rows of its input samples)
      echo "--set cluster.quantizer=codec"
      echo "--set spectrogram.features=codec"
      codec_frames "$rest" || exit 1 ;;
    *) echo "--set cluster.quantizer=$name" ;;
  esac
  IFS=, read -r -a pairs <<< "$rest"
  for key in "${pairs[@]}"; do
    [ -n "$key" ] || continue
    if [[ ${key%%=*} == *.* ]]; then
      echo "--set $key"
    elif [ "$name" = units ] && [[ ${key%%=*} == ssl_* ]]; then
      echo "--set spectrogram.$key"
    else
      echo "--set cluster.$key"
    fi
  done
}

run_name() {  # SPEC [EMBEDDING] -> the run's folder name (a path value stands as its last part)
  local name=${1%%:*} rest="" pair parts=()
  [[ $1 == *:* ]] && rest=${1#*:}
  IFS=, read -r -a pairs <<< "$rest"
  for pair in "${pairs[@]}"; do
    [[ $pair == */* ]] && pair="${pair%%=*}=$(basename "${pair#*=}")"
    parts+=("$pair")
  done
  [ -z "${2:-}" ] || parts+=("token_embedding=$2")
  (IFS=_; echo "$name${parts[*]:+_${parts[*]}}") | sed 's/train\.//g; s/model\.//g'
}

own_frames() {  # WORKDIR: a processed/ of its own that holds base's split (the same clips on every side)
  local processed="$1/processed" name
  [ ! -L "$processed" ] || rm "$processed"  # linked to base by an earlier sweep with other settings
  mkdir -p "$processed"
  for name in split.json split_report.json split.meta.json; do
    [ -e "$base/processed/$name" ] || continue
    ln -f "$base/processed/$name" "$processed/$name" 2>/dev/null ||
      cp -p "$base/processed/$name" "$processed/$name"
  done
}

runs=("$base")
failed=()  # runs (or specs) that stopped with an error: reported at the end, the others go on
for spec in "${specs[@]}"; do
  variants=("")
  if [ "${spec%%:*}" != frames ] && [ ${#embeddings[@]} -gt 0 ]; then
    variants=("${embeddings[@]}")
  fi
  if ! settings=$(settings_of "$spec"); then
    echo "sweep: spec $spec cannot be run (above); going on with the other specs" >&2
    failed+=("$spec")
    continue
  fi
  read -r -a options <<< "$(echo "$settings" | tr '\n' ' ')"
  frames_home=$base  # whose processed/ the spec's runs read: base's, or the first variant's own frames
  [[ " ${options[*]} " != *" spectrogram."* ]] || frames_home=""
  for embedding in "${variants[@]}"; do
    name=$(run_name "$spec" "$embedding")
    dir="$sweep/$name"
    mkdir -p "$dir"
    from=cluster
    [ "${spec%%:*}" != frames ] || from=train  # the frames control needs no vocabulary
    run_options=("${options[@]}")
    [ -z "$embedding" ] || run_options+=(--set "model.token_embedding=$embedding")
    echo "== $name: ${run_options[*]}"
    set +e  # one run's error stops that run, not the sweep: its subshell stops at the first failing command
    (
      set -e
      if [ -z "$frames_home" ]; then
        own_frames "$dir"
        audiotokens run --config "$config" --workdir "$dir" --from spectrogram --to spectrogram \
          "${run_options[@]}" "${extra[@]}"
      elif [ ! -e "$dir/processed" ]; then
        ln -s "$(cd "$frames_home" && pwd)/processed" "$dir/processed"
      fi
      audiotokens run --config "$config" --workdir "$dir" --from "$from" --to evaluate "${run_options[@]}" \
        "${extra[@]}"
      robust "$dir" "${run_options[@]}"
    )
    status=$?
    set -e
    if [ $status -ne 0 ]; then
      echo "sweep: $name failed (exit $status; its logs: $dir/logs); going on with the other specs" >&2
      failed+=("$name")
      continue
    fi
    [ -n "$frames_home" ] || frames_home=$dir  # the spec's other variants read the frames this run made
    runs+=("$dir")
  done
done
audiotokens compare "${runs[@]}" --out "$sweep/compare"
if [ ${#failed[@]} -gt 0 ]; then
  echo "sweep: ${#failed[@]} run(s) failed and are not in $sweep/compare: ${failed[*]}" >&2
  exit 1
fi
