#!/usr/bin/env bash
# Render the benchmark set: N clips of 10 s at 44.1 kHz, 1-4 General MIDI instruments (plus drums and
# espeak-ng speech) playing excerpts of music21 corpus scores, with an exact multi-label manifest.
#
#   scripts/make_bench_data.sh OUT N [render_bench.py options, e.g. --seed 1 --workers 2]
#
# Writes OUT/audio/clipNNNNN.flac, OUT/manifest.csv (path,label,group; group = source score) and
# OUT/dataset.json (request, classes, counts, versions). Same N, seed and options give the same files.
# Installs fluidsynth, fluid-soundfont-gm and espeak-ng (apt-get, as root) and music21 + mido (pip)
# when missing. A complete OUT for the same request is left as it is.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 OUT N [render_bench.py options]" >&2
  exit 2
fi
out=$1 n=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=render_deps.sh
. "$here/render_deps.sh"
py=$(render_python)

SECONDS=0
if ! install_render_apt; then
  echo "make_bench_data: fluidsynth and fluid-soundfont-gm are required; install them (apt-get install" \
       "fluidsynth fluid-soundfont-gm) and re-run" >&2
  exit 1
fi
install_render_pip "$py" || { echo "make_bench_data: pip could not install music21 and mido" >&2; exit 1; }
echo "dependencies ready after ${SECONDS} s"
"$py" "$here/render_bench.py" "$out" "$n" --preset bench --synth fluidsynth "$@"
echo "make_bench_data: done in ${SECONDS} s; manifest: $out/manifest.csv"
