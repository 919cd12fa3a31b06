#!/usr/bin/env bash
# The whole chain on a small real-audio set, on CPU, in a few minutes: the recommended recipe's token model,
# then on the same frames the controls (the same BERT fed the frames, and a CNN), and the MFCC baselines,
# ending in one table, validation and test.
# Usage: scripts/demo.sh [DATA_DIR=demo_data] [WORKDIR=runs/demo]
#   WORKDIR          the token model and the baselines (every stage)
#   WORKDIR-frames   model.input = frames (what tokenising costs); its processed/ links to WORKDIR's
#   WORKDIR-cnn      a CNN on the frames; processed/ linked the same way
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-demo_data}
workdir=${2:-runs/demo}
common=(--config configs/demo.toml --set "data.manifest=$data/manifest.csv")

bash scripts/make_demo_data.sh "$data"
audiotokens run "${common[@]}" --workdir "$workdir"
audiotokens status "${common[@]}" --workdir "$workdir"

declare -A controls=([frames]="--set model.input=frames"
                     [cnn]="--set model.input=frames --set model.encoder=cnn --set model.num_layers=4")
for name in frames cnn; do
  control="$workdir-$name"
  mkdir -p "$control"
  [ -e "$control/processed" ] || ln -s "$(cd "$workdir" && pwd)/processed" "$control/processed"
  echo "── control: $name"
  # shellcheck disable=SC2086  # the settings are words
  audiotokens run "${common[@]}" --workdir "$control" --from train --to evaluate ${controls[$name]}
done

echo
echo "every model picked on validation (best epoch, or C by cross-validation on train); test reported once:"
python3 - "$workdir" <<'PY'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows = [("tokens (recommended recipe)", work / "output/eval"),
        ("frames -> the same BERT", Path(f"{work}-frames/output/eval")),
        ("frames -> CNN", Path(f"{work}-cnn/output/eval"))]
rows += [(f"MFCC + {p.name}", p) for p in sorted((work / "output/baselines").glob("*")) if p.is_dir()]
metric = "mAP"
print(f"  {'model':<28}{'validation ' + metric:>16}{'test ' + metric:>12}   clips (validation / test)")
for name, where in rows:
    figures = {split: json.loads((where / split / "metrics.json").read_text()) for split in ("validation", "test")}
    print(f"  {name:<28}{figures['validation'][metric]:>16.4f}{figures['test'][metric]:>12.4f}   "
          f"{figures['validation']['clips']} / {figures['test']['clips']}")
PY
audiotokens report --workdir "$workdir" --compare "$workdir-frames" --compare "$workdir-cnn"
echo "per-class table:  $workdir/output/eval/test/per_class.md"
echo "one-page report:  $workdir/output/report.html"
echo "model bundle:     $workdir/output/model   (try: audiotokens predict --model $workdir/output/model FILE.wav)"
