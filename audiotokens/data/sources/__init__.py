"""Data sources -> one catalog of labelled clips (`Dataset`), whatever the metadata format.

`load(config.data)` looks `data.source` up in SOURCES, one registered class per format (source.py says
what a source provides): manifest | folder (manifest.py), audioset (audioset.py), hf_parquet
(hf_parquet.py), hf_dataset (hf_dataset.py), lhotse (lhotse_manifests.py), kaldi (kaldi_dir.py). With
`with_eval=True` a source with a validation side of its own (AudioSet's data.eval_segments or
data.eval_parquet, a Hugging Face dataset's data.hf_eval_split) also loads it into `Dataset.eval_clips`,
with the same class list and audio lookup.
"""
from __future__ import annotations

from ...config import DataConfig
from ...errors import UserError
from .audio_files import AUDIO_EXTENSIONS, is_audio_file
from .audioset import AudioSetSource
from .hf_dataset import HfDatasetSource
from .hf_parquet import HfParquetSource, parquet_location, split_location
from .kaldi_dir import KaldiSource
from .lhotse_manifests import LhotseSource
from .manifest import FolderSource, ManifestRow, ManifestSource, load_folder, load_manifest, read_manifest
from .records import MULTILABEL, SINGLELABEL, Clip, Dataset, Missing, detect_task
from .source import Source

__all__ = [
    "AUDIO_EXTENSIONS", "MULTILABEL", "SINGLELABEL", "SOURCES", "Clip", "Dataset", "ManifestRow", "Missing",
    "Source", "detect_task", "is_audio_file", "load", "load_folder", "load_manifest", "parquet_location",
    "read_manifest", "source_of", "split_location",
]

# data.source -> its source; config's check on data.source lists the same names
SOURCES: dict[str, type[Source]] = {
    source.name: source for source in (ManifestSource, FolderSource, AudioSetSource, HfParquetSource, HfDatasetSource,
                                       LhotseSource, KaldiSource)}


def source_of(data: DataConfig) -> Source:
    """The source data.source names, bound to the [data] section."""
    if data.source not in SOURCES:
        raise UserError(f"'data.source' must be one of {', '.join(SOURCES)}, got '{data.source}'")
    return SOURCES[data.source](data)


def load(data: DataConfig, with_eval: bool = False) -> Dataset:
    """The catalog of the configured source; `with_eval` also loads its own validation side."""
    return source_of(data).load(with_eval)
