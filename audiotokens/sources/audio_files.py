"""Which files count as audio: the extensions of the formats libsndfile (soundfile) can read here."""
from __future__ import annotations

from pathlib import Path

import soundfile

# libsndfile format name -> file extensions used for it. RAW is left out: it needs the caller to know
# the sample format, so a stray .raw file is not audio we can decode.
_FORMAT_EXTENSIONS = {
    "WAV": ("wav", "wave"),
    "WAVEX": ("wav",),
    "FLAC": ("flac",),
    "OGG": ("ogg", "oga", "opus"),
    "MP3": ("mp3",),
    "AIFF": ("aif", "aiff", "aifc"),
    "AU": ("au", "snd"),
    "CAF": ("caf",),
    "W64": ("w64",),
    "RF64": ("rf64",),
    "NIST": ("nist", "sph"),
    "IRCAM": ("sf",),
    "VOC": ("voc",),
    "SVX": ("svx", "8svx", "iff"),
    "PAF": ("paf",),
    "AVR": ("avr",),
    "HTK": ("htk",),
    "SD2": ("sd2",),
    "WVE": ("wve",),
    "MPC2K": ("mpc2k",),
    "XI": ("xi",),
}

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    ext for name in soundfile.available_formats() for ext in _FORMAT_EXTENSIONS.get(name, ())
)


def is_audio_file(path: str | Path) -> bool:
    """True for a non-hidden file whose extension names a format libsndfile reads."""
    name = Path(path).name
    return not name.startswith(".") and name.rpartition(".")[2].lower() in AUDIO_EXTENSIONS and "." in name
