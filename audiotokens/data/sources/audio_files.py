"""Which files count as audio: the extensions of the formats libsndfile (soundfile) can read here."""
from __future__ import annotations

import os
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


def missing_reason(path: str | Path) -> str:
    """Why `path` is not a readable file, in words a user can act on."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"dangling symbolic link: {path} points to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return f"is a directory, not an audio file: {path}"
    return f"file not found: {path}"


def scan_audio(folder: Path) -> tuple[list[Path], dict[str, int]]:
    """Audio files under `folder` (recursive, hidden entries skipped) and counts of what was passed over."""
    files, passed = [], {"dangling symbolic links": 0, "files with no audio extension": 0}
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_symlink() and not path.exists():
            passed["dangling symbolic links"] += 1
        elif path.is_file():
            if is_audio_file(path):
                files.append(path)
            else:
                passed["files with no audio extension"] += 1
    return files, {what: n for what, n in passed.items() if n}


def describe_passed(folder: Path, passed: dict[str, int]) -> str:
    return f"{folder}: skipped " + ", ".join(f"{n} {what}" for what, n in passed.items())
