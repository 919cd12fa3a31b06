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
echo "the token model (picked on validation) and the MFCC baselines, validation and test:"
python3 - "$workdir" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
keys = ("clips", "mAP", "accuracy", "micro_f1", "macro_f1")
def line(name, path):
    if path.is_file():
        metrics = json.loads(path.read_text())
        print(f"  {name:<24}" + "  ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else
                                          f"{k} {metrics[k]}" for k in keys if k in metrics))
for split in ("validation", "test"):
    line(f"tokens, {split}", work / "output/eval" / split / "metrics.json")
    for model in sorted(p.name for p in (work / "output/baselines").glob("*") if p.is_dir()):
        line(f"{model}, {split}", work / "output/baselines" / model / split / "metrics.json")
PY
audiotokens report --workdir "$workdir"
echo "per-class table:  $workdir/output/eval/test/per_class.md"
echo "one-page report:  $workdir/output/report.html"
echo "model bundle:     $workdir/output/model   (try: audiotokens predict --model $workdir/output/model FILE.wav)"
