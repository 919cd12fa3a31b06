#!/usr/bin/env bash
# Vocabulary sweep: one split and one set of spectrograms, shared by every vocabulary size.
# Usage: scripts/sweep_vocab.sh CONFIG SWEEP_DIR [K ...]   (default K: 50 100 200 500)
# Each size gets SWEEP_DIR/k<K>/ whose processed/ is a link to SWEEP_DIR/base/processed (no copies,
# nothing recomputed); extra `audiotokens` options can be passed in the AUDIOTOKENS_ARGS variable. A size whose
# run fails (e.g. more clusters than training frames) is reported and the others go on; the sweep then exits 1.
set -euo pipefail
config=${1:?usage: sweep_vocab.sh CONFIG SWEEP_DIR [K ...]}
sweep=${2:?usage: sweep_vocab.sh CONFIG SWEEP_DIR [K ...]}
shift 2
sizes=("${@:-50 100 200 500}")
read -r -a sizes <<< "${sizes[*]}"
extra=(${AUDIOTOKENS_ARGS:-})

base="$sweep/base"
audiotokens run --config "$config" --workdir "$base" --to spectrogram "${extra[@]}"
failed=()  # sizes whose run stopped with an error: reported at the end, the others go on
for k in "${sizes[@]}"; do
  dir="$sweep/k$k"
  mkdir -p "$dir"
  [ -e "$dir/processed" ] || ln -s "$(cd "$base" && pwd)/processed" "$dir/processed"
  if ! audiotokens run --config "$config" --workdir "$dir" --from cluster --set "cluster.n_clusters=$k" "${extra[@]}"; then
    echo "sweep: n_clusters=$k failed (its logs: $dir/logs); going on with the other sizes" >&2
    failed+=("$k")
  fi
done

printf '\n%-8s %-14s %-10s %-10s\n' n_clusters validation_mAP accuracy perplexity
for k in "${sizes[@]}"; do
  if [[ " ${failed[*]} " == *" $k "* ]]; then
    printf '%-8s failed\n' "$k"
    continue
  fi
  python3 - "$sweep/k$k" "$k" <<'PY'
import json, sys
from pathlib import Path
workdir, k = Path(sys.argv[1]), sys.argv[2]
metrics = json.loads((workdir / "output/eval/validation/metrics.json").read_text())
stats = json.loads((workdir / "tokenized/stats.json").read_text())["splits"]["validation"]["codebooks"][0]
fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"
print(f"{k:<8} {fmt(metrics.get('mAP')):<14} {fmt(metrics.get('accuracy')):<10} {fmt(stats.get('perplexity')):<10}")
PY
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "sweep: ${#failed[@]} size(s) failed: ${failed[*]}" >&2
  exit 1
fi
