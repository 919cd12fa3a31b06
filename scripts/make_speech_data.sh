#!/usr/bin/env bash
# Render a small single-label speech set with espeak-ng: speaker identification (English voice variants
# en+m1 ... en+f4) or language identification (en, de, fr, es, it, pt, nl, pl).
#
#   scripts/make_speech_data.sh OUT TASK N [render_speech.py options, e.g. --classes 4 --seed 1]
#
# TASK is speaker or language; N is the number of clips per class: sentence j (0 … N-1) is spoken once by
# every class, and the manifest's group is the sentence, so `split.strategy = "group"` keeps a sentence out
# of one side. Clips are 1.5-6 s of 16 kHz FLAC with per-clip pitch/speed jitter, silence padding, noise
# at 10-30 dB SNR and a random gain. Writes OUT/audio/*.flac, OUT/manifest.csv (path,label,group),
# OUT/clips.csv (every clip's render settings and text) and OUT/dataset.json (request, classes, counts,
# espeak-ng version). Same arguments give the same files. Installs espeak-ng (apt-get, as root) when missing.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 OUT speaker|language N [render_speech.py options]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=render_deps.sh
. "$here/render_deps.sh"
py=$(render_python)

if ! install_speech_apt; then
  echo "make_speech_data: espeak-ng is required; install it (apt-get install espeak-ng) and re-run" >&2
  exit 1
fi
"$py" -c "import numpy, scipy, soundfile, soxr" 2>/dev/null \
  || { echo "make_speech_data: $py needs numpy, scipy, soundfile and soxr (pip install -e . installs them)" >&2
       exit 1; }
"$py" "$here/render_speech.py" "$@"
