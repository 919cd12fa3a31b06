"""Find AudioSet audio by YouTube id under one root, whatever the layout.

The root is walked once. Every audio file (any extension libsndfile reads, any subfolder) whose stem is
`{ytid}`, `Y{ytid}`, `Y{ytid}_{start}_{end}` or `{ytid}_{start}_{end}` is indexed under its YouTube id
(11 characters of [A-Za-z0-9_-]). This covers `{set}/{ytid[:2]}/{ytid}.flac`, PANNs-style
`Y{ytid}_{start}_{end}.wav` and flat `{ytid}.wav` copies. When a stem can be read two ways (an id may
itself start with 'Y' or contain '_'), it is indexed under both: only ids listed in the metadata are
ever looked up, so a spurious reading costs nothing.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tqdm import tqdm

from ...errors import UserError
from .audio_files import is_audio_file

log = logging.getLogger("audiotokens")

_YTID = r"[A-Za-z0-9_-]{11}"
_TIME = r"\d+(?:\.\d+)?"
_STEM_PATTERNS = [
    re.compile(rf"^({_YTID})$"),
    re.compile(rf"^Y({_YTID})$"),
    re.compile(rf"^Y({_YTID})_{_TIME}_{_TIME}$"),
    re.compile(rf"^({_YTID})_{_TIME}_{_TIME}$"),
]


def ytids_of_stem(stem: str) -> list[str]:
    """Every YouTube id a file stem can stand for (usually one, none for unrelated files)."""
    found: list[str] = []
    for pattern in _STEM_PATTERNS:
        match = pattern.match(stem)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


class AudioIndex:
    """YouTube id -> absolute audio path for every matching file under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root)) if str(root) else Path()
        if not str(root) or not self.root.is_dir():
            raise UserError(f"data.audio_root {root!r} is not a directory; set it to the folder holding the "
                            "AudioSet audio (any layout: {set}/{ytid[:2]}/{ytid}.flac, Y{ytid}*.wav, ...)")
        self.paths: dict[str, str] = {}
        self.files = 0
        self.duplicates = 0
        self._walk()

    def _walk(self) -> None:
        with tqdm(desc=f"indexing {self.root}", unit=" files", disable=None, leave=False) as progress:
            for folder, dirs, names in os.walk(self.root, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: first copy wins, stably
                for name in sorted(names):
                    if not is_audio_file(name):
                        continue
                    self.files += 1
                    progress.update()
                    self._add(name.rpartition(".")[0], os.path.abspath(os.path.join(folder, name)))
        if self.duplicates:
            log.info("%d audio files under %s repeat an id already found; the first (in sorted order) is used",
                     self.duplicates, self.root)

    def _add(self, stem: str, path: str) -> None:
        for ytid in ytids_of_stem(stem):
            if ytid in self.paths:
                self.duplicates += 1
            else:
                self.paths[ytid] = path

    def get(self, ytid: str) -> str | None:
        return self.paths.get(ytid)
