#!/usr/bin/env bash
# The whole chain on a small real-audio set, on CPU, in a few minutes.
# Usage: scripts/demo.sh [DATA_DIR=demo_data] [WORKDIR=runs/demo]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-demo_data}
workdir=${2:-runs/demo}

bash scripts/make_demo_data.sh "$data"
audiotokens run --config configs/demo.toml --set "data.manifest=$data/manifest.csv" --workdir "$workdir"
audiotokens status --config configs/demo.toml --set "data.manifest=$data/manifest.csv" --workdir "$workdir"
echo
echo "validation metrics: $workdir/output/eval/validation/metrics.json"
echo "per-class table:    $workdir/output/eval/validation/per_class.md"
echo "training curves:    $workdir/output/curves.png"
echo "model bundle:       $workdir/output/model  (try: audiotokens predict --model $workdir/output/model FILE.wav)"
