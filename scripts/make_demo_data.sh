#!/usr/bin/env bash
# Build the small demo set: N (default 200) clips of 5 s, 8 classes (piano, organ, guitar, violin, cello,
# flute, trumpet, drums), 1-3 per clip, rendered with fluidsynth from music21 scores when those can be
# installed, else a loudly announced numpy-synthesised fallback. Same manifest format as the benchmark set.
#
#   scripts/make_demo_data.sh OUT [N]        DEMO_SYNTH=auto|fluidsynth|numpy (default auto)
#
# Idempotent: when OUT/manifest.csv is complete for the same request nothing is installed or rendered.
set -euo pipefail

out=${1:-demo_data}
n=${2:-200}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=render_deps.sh
. "$here/render_deps.sh"
py=$(render_python)
synth=${DEMO_SYNTH:-auto}
args=("$out" "$n" --preset demo --duration 5 --max-instruments 3 --synth "$synth")

if "$py" "$here/render_bench.py" "${args[@]}" --check; then
  exit 0
fi
if [ "$synth" != numpy ]; then
  # failures are fine here: render_bench.py falls back to the numpy synthesiser and says so
  install_render_apt || true
  install_render_pip "$py" || true
fi
"$py" "$here/render_bench.py" "${args[@]}"
