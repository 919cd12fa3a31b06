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
eval_dir="$workdir/output/eval/validation"
echo
echo "validation metrics ($eval_dir/metrics.json):"
python3 - "$eval_dir/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
keys = ("clips", "mAP", "accuracy", "micro_f1", "macro_f1", "hamming", "classes_excluded")
print("  " + "  ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                       for k in keys if k in metrics))
PY
echo "per-class table:  $eval_dir/per_class.md"
echo "plots:            $workdir/output/curves.png, $eval_dir/per_class_ap.png, $eval_dir/pr_curves.png"
echo "model bundle:     $workdir/output/model   (try: audiotokens predict --model $workdir/output/model FILE.wav)"
