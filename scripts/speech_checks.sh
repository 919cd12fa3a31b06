#!/usr/bin/env bash
# Single-label speech checks: speaker and language identification on espeak-ng speech, each with a token
# model, the frames-input control and the MFCC baselines on one group split, then one table.
#
#   scripts/speech_checks.sh OUT_DIR
#
# For TASK in speaker, language:
#   OUT_DIR/data/TASK        scripts/make_speech_data.sh (SPEAKERS x SPEAKER_CLIPS, LANGUAGES x LANGUAGE_CLIPS)
#   OUT_DIR/TASK/tokens      every stage (split … evaluate, baseline) with CONFIG: the token model
#   OUT_DIR/TASK/frames      the same model on the stored frames (model.input=frames); processed/ links to
#                            tokens/processed, so split and spectrograms are shared, never recomputed
#   OUT_DIR/TASK/compare     `audiotokens compare` of the two workdirs (baselines included)
# The split is by group (the sentence: no sentence, nor its translation, on two sides) with
# VALIDATION_RATIO and TEST_RATIO of the clips. The table (printed, and OUT_DIR/speech_checks.md) gives
# validation and test accuracy and macro F1 per task and run, with the split sizes.
#
# Environment: CONFIG (configs/default.toml, the recommended recipe), SPEAKERS (10), SPEAKER_CLIPS (40), LANGUAGES (8),
# LANGUAGE_CLIPS (40), VALIDATION_RATIO (0.2), TEST_RATIO (0.2), TASKS ("speaker language"); extra
# `audiotokens` options (e.g. --set train.epochs=5) in AUDIOTOKENS_ARGS; PYTHON names an interpreter
# that imports audiotokens (default: the one the audiotokens command uses).
set -euo pipefail
out=${1:?usage: speech_checks.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config=${CONFIG:-$here/../configs/default.toml}
extra=(${AUDIOTOKENS_ARGS:-})
py=${PYTHON:-$(sed -n '1s/^#!//p' "$(command -v audiotokens)")}
export PYTHON=${py:-python3}

declare -A classes=([speaker]=${SPEAKERS:-10} [language]=${LANGUAGES:-8})
declare -A clips=([speaker]=${SPEAKER_CLIPS:-40} [language]=${LANGUAGE_CLIPS:-40})
tasks=(${TASKS:-speaker language})

for task in "${tasks[@]}"; do
  data="$out/data/$task"
  SECONDS=0
  bash "$here/make_speech_data.sh" "$data" "$task" "${clips[$task]}" --classes "${classes[$task]}"
  echo "── $task: data ready in ${SECONDS} s"
  # Every epoch is trained (patience 0; the best validation epoch is still the one kept): with the small-data
  # config's patience of 6, both language models stopped at epoch 7, still on the plateau at chance level
  # that precedes learning on these sets (it lasted 4 to 18 epochs).
  common=(--config "$config" --set "data.manifest=$data/manifest.csv" --set split.strategy=group
          --set "split.validation_ratio=${VALIDATION_RATIO:-0.2}" --set "split.test_ratio=${TEST_RATIO:-0.2}"
          --set train.patience=0 "${extra[@]}")
  tokens="$out/$task/tokens" frames="$out/$task/frames"
  SECONDS=0
  audiotokens run "${common[@]}" --workdir "$tokens"
  echo "── $task: token model and baselines in ${SECONDS} s"
  mkdir -p "$frames"
  [ -e "$frames/processed" ] || ln -s "$(cd "$tokens" && pwd)/processed" "$frames/processed"
  SECONDS=0
  audiotokens run "${common[@]}" --workdir "$frames" --from train --to evaluate --set model.input=frames
  echo "── $task: frames control in ${SECONDS} s"
  audiotokens compare "$tokens" "$frames" --out "$out/$task/compare"
done

"$PYTHON" - "$out" "${tasks[@]}" <<'PY'
"""The figure table: validation and test accuracy / macro F1 per task and run, with split sizes."""
import json
import sys
from pathlib import Path

out, tasks = Path(sys.argv[1]), sys.argv[2:]


def sizes(workdir: Path) -> str:
    split = json.loads((workdir / "processed/split.json").read_text())
    return " / ".join(f"{len(split['splits'][name])}" for name in ("train", "validation", "test"))


def runs(task_dir: Path):
    tokens = task_dir / "tokens"
    yield "tokens", tokens / "output/eval"
    yield "frames", task_dir / "frames/output/eval"
    for model in sorted(p.name for p in (tokens / "output/baselines").iterdir() if p.is_dir()):
        yield f"MFCC + {model}", tokens / "output/baselines" / model


lines = ["| task | clips train / validation / test | run | validation accuracy | validation macro F1 "
         "| test accuracy | test macro F1 |", "|---|---|---|---|---|---|---|"]
for task in tasks:
    for name, where in runs(out / task):
        figures = []
        for split in ("validation", "test"):
            metrics = json.loads((where / split / "metrics.json").read_text())
            figures += [f"{metrics['accuracy']:.3f}", f"{metrics['macro_f1']:.3f}"]
        lines.append(f"| {task} | {sizes(out / task / 'tokens')} | {name} | " + " | ".join(figures) + " |")
table = "\n".join(lines)
print(table)
(out / "speech_checks.md").write_text(table + "\n")
PY
echo "table: $out/speech_checks.md; comparisons: $out/<task>/compare/compare.md"
