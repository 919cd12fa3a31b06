"""Audio without labels for pre-training: [pretrain] manifest (a CSV with a `path` column) or folder.

These clips join the clip catalogue of processed/split.json marked `"unlabelled": true`, with no labels
and in no split, so the spectrogram and tokenize stages give them frames and tokens of the same frame spec
and vocabulary; only the pretrain stage reads them. Their ids are "unlabelled/" + the path as written in
the manifest (relative paths are relative to the manifest's folder) or relative to the folder, so they
never collide with a labelled clip's id. Listed files that do not exist are left out with a warning.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from ...errors import UserError
from .audio_files import describe_passed, scan_audio

log = logging.getLogger("audiotokens")

ID_PREFIX = "unlabelled/"


def read_path_column(path: Path) -> list[str]:
    """The `path` cells of a CSV manifest, in order."""
    if not path.is_file():
        raise UserError(f"'pretrain.manifest' ({path}) not found; set it to a CSV with a path column")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"'pretrain.manifest' ({path}) is not a readable UTF-8 CSV ({exc})") from None
    if not rows or "path" not in {name.strip().lower() for name in rows[0]}:
        raise UserError(f"'pretrain.manifest' ({path}) needs a header with a path column and one row per clip")
    column = next(name for name in rows[0] if name.strip().lower() == "path")
    return [row[column].strip() for row in rows if (row.get(column) or "").strip()]


def unlabelled_audio(manifest: str, folder: str) -> list[tuple[str, str]]:
    """(id, absolute audio path) of every existing unlabelled file the settings name."""
    found: list[tuple[str, str]] = []
    if manifest:
        base = Path(manifest).parent
        for written in read_path_column(Path(manifest)):
            found.append((ID_PREFIX + written, str((base / written).absolute())))
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"'pretrain.folder' ({root}) is not a folder of audio files")
        files, passed = scan_audio(root)
        if passed:
            log.info(describe_passed(root, passed))
        found += [(ID_PREFIX + str(p.relative_to(root)), str(p.absolute())) for p in files]
    existing = [(clip_id, audio) for clip_id, audio in dict(found).items() if Path(audio).is_file()]
    if len(existing) < len(dict(found)):
        log.warning("%d unlabelled audio files listed in [pretrain] do not exist; left out",
                    len(dict(found)) - len(existing))
    return existing


def catalogue_entries(manifest: str, folder: str, taken: set[str], file_stat) -> list[dict[str, Any]]:
    """split.json "clips" entries of the unlabelled audio (ids already taken are left out)."""
    return [{"id": clip_id, "audio": audio, "labels": [], "group": None, "unlabelled": True,
             "stat": file_stat(audio)}
            for clip_id, audio in unlabelled_audio(manifest, folder) if clip_id not in taken]
