# Sourced by make_bench_data.sh, make_demo_data.sh and make_speech_data.sh: finds the Python to use and
# installs what the renderer needs when it is missing (Debian packages through apt-get as root or
# password-less sudo, Python packages through pip into the active Python).

RENDER_SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2

render_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif command -v python >/dev/null 2>&1; then command -v python
  else command -v python3
  fi
}

_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

# apt-get install of the given Debian packages (as root or through password-less sudo); says why not.
_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get not found: cannot install $*" >&2
    return 1
  fi
  echo "installing $* with apt-get" >&2
  _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    && _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { echo "could not install $* (needs root or password-less sudo, and network)" >&2; return 1; }
}

# Installs fluidsynth, the FluidR3 General MIDI soundfont and espeak-ng (speech class) when missing.
# Returns non-zero when fluidsynth or the soundfont is still unavailable afterwards.
install_render_apt() {
  local missing=()
  command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth)
  [ -f "$RENDER_SOUNDFONT" ] || missing+=(fluid-soundfont-gm)
  command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
  [ ${#missing[@]} -eq 0 ] || _apt_install "${missing[@]}" || true
  command -v fluidsynth >/dev/null 2>&1 && [ -f "$RENDER_SOUNDFONT" ]
}

# Installs espeak-ng when missing; non-zero when it is still unavailable afterwards.
install_speech_apt() {
  command -v espeak-ng >/dev/null 2>&1 || _apt_install espeak-ng || true
  command -v espeak-ng >/dev/null 2>&1
}

# Installs music21 and mido (and the numeric packages, when absent) into the given Python.
install_render_pip() {
  local py=$1
  "$py" -c "import numpy, scipy, soundfile, soxr" 2>/dev/null \
    || "$py" -m pip install -q numpy scipy soundfile soxr || return 1
  "$py" -c "import music21, mido" 2>/dev/null && return 0
  echo "installing music21 and mido with pip into $py" >&2
  "$py" -m pip install -q music21 mido
}
