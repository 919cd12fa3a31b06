"""Configuration: the one place that knows defaults.

Defaults live in the dataclasses below (configs/default.toml mirrors them, a test keeps the two equal).
A TOML file overrides them section by section, then `--set section.key=value` overrides the file.
Unknown sections or keys and values of the wrong type are rejected with the list of valid keys.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import UserError


@dataclass
class DataConfig:
    source: str = "manifest"  # manifest | folder | audioset | hf_parquet
    manifest: str = ""  # CSV with columns path,label[,group]; labels separated by label_delimiter
    folder: str = ""  # folder-per-class tree: <folder>/<class>/<audio files>
    label_delimiter: str = ";"
    audio_root: str = ""  # AudioSet audio root (any layout under it)
    segments: str = ""  # AudioSet segments CSV (e.g. balanced_train_segments.csv)
    eval_segments: str = ""  # AudioSet eval segments CSV, the validation side of split.strategy=official
    class_labels: str = ""  # AudioSet class_labels_indices.csv
    ontology: str = ""  # AudioSet ontology.json (names when class_labels is absent)
    parquet: str = ""  # glob of Hugging Face AudioSet parquet shards
    eval_parquet: str = ""  # glob of parquet shards for the validation side of strategy=official


@dataclass
class SplitConfig:
    strategy: str = "prefix"  # prefix | random | group | stratified | official
    validation_prefixes: str = "ABCDEF"  # prefix: ids whose FIRST character is one of these
    validation_ratio: float = 0.1  # random | group | stratified
    validation_list: str = ""  # official: file of validation ids (one per line) or a segments CSV
    seed: int = 0


@dataclass
class SpectrogramConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 0.0  # 0 = sample_rate / 2
    db: bool = True
    top_db: float = 80.0  # floor this many dB below the clip's peak; 0 = no floor
    normalize: bool = True  # each spectrogram linearly scaled to [0, 1]
    dtype: str = "float32"  # float32 | float16
    max_duration: float = 0.0  # seconds kept per clip; 0 = whole clip
    workers: int = 0  # 0 = number of cores


@dataclass
class ClusterConfig:
    n_clusters: int = 50
    niter: int = 20
    seed: int = 0
    max_frames: int = 0  # 0 = all training frames that fit memory_budget_gb, else a uniform sample
    memory_budget_gb: float = 4.0
    spherical: bool = False
    gpu: bool = False


@dataclass
class TokenizeConfig:
    batch_frames: int = 262144


@dataclass
class TrainConfig:
    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    grad_accum: int = 1
    max_length: int = 0  # frames per clip fed to the model; 0 = longest clip
    amp: bool = True  # bf16 where supported, else fp16 with a grad scaler (CUDA only)
    patience: int = 0  # early stopping on the validation score; 0 = off
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"  # auto | cuda | mps | cpu
    num_workers: int = 2
    input: str = "tokens"  # tokens | frames (the stored mel frames, through a linear projection)
    token_embedding: str = "learned"  # learned | decoded | decoded+learned (tokens input)
    codebook_fusion: str = "sum"  # sum | attention: how learned embeddings of several codebooks combine
    encoder: str = "bert"  # bert | conformer | cnn (cnn: frames input)
    pooling: str = "cls"  # cls | mean | attention
    head: str = "linear"  # linear | am_softmax (single-label)
    margin: float = 0.2  # am_softmax additive margin
    scale: float = 30.0  # am_softmax logit scale


@dataclass
class EvaluateConfig:
    threshold: float = -1.0  # < 0: the bundle's decision threshold (train.threshold); set to override


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    workdir: Path = Path(".")

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: self.section(name) for name in SECTIONS}


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "workdir"]


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(name: str):
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "workdir"}[name]


def _field_type(section: str, key: str) -> type:
    default = getattr(_section_type(section)(), key)
    return type(default)


def _check_key(section: str, key: str) -> None:
    if section not in SECTIONS:
        raise UserError(f"unknown config section '{section}'; valid sections: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(_section_type(section))]
    if key not in names:
        raise UserError(
            f"unknown config key '{section}.{key}'; valid keys in [{section}]: {', '.join(names)}"
        )


def _coerce(section: str, key: str, value: Any, from_text: bool) -> Any:
    """Convert a TOML value or a `--set` string to the field's type, or explain what is wrong.

    Only `--set` text is parsed; a TOML file already has types, and a quoted number there is an error.
    """
    want = _field_type(section, key)
    where = f"'{section}.{key}'"
    if from_text and isinstance(value, str) and want is not str:
        text = value.strip()
        if want is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise UserError(f"{where} must be true or false, got '{value}'")
        try:
            return want(text)
        except ValueError:
            raise UserError(f"{where} must be {want.__name__}, got '{value}'") from None
    if want is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, bool):
        raise UserError(f"{where} must be int, got {value!r}")
    if not isinstance(value, want):
        raise UserError(f"{where} must be {want.__name__}, got {value!r}")
    return value


def _apply(config: Config, section: str, key: str, value: Any, from_text: bool = False) -> None:
    _check_key(section, key)
    setattr(getattr(config, section), key, _coerce(section, key, value, from_text))


def parse_override(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value, got '{text}'; valid keys: {', '.join(valid_keys())}")
    dotted, value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section, key, value


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    workdir: str | Path = ".",
) -> Config:
    """Defaults, then the TOML file, then `section.key=value` overrides."""
    config = Config(workdir=Path(workdir))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from None
        for section, values in table.items():
            if not isinstance(values, dict):
                raise UserError(f"{path}: top-level key '{section}' must be a [section]; valid: {', '.join(SECTIONS)}")
            for key, value in values.items():
                _apply(config, section, key, value)
    for text in overrides:
        _apply(config, *parse_override(text), from_text=True)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    """Cross-field checks that a wrong value would otherwise turn into a deep traceback."""
    spec = config.spectrogram
    positive = {
        "spectrogram.sample_rate": spec.sample_rate,
        "spectrogram.n_fft": spec.n_fft,
        "spectrogram.hop_length": spec.hop_length,
        "spectrogram.n_mels": spec.n_mels,
        "cluster.n_clusters": config.cluster.n_clusters,
        "cluster.niter": config.cluster.niter,
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.num_layers": config.train.num_layers,
        "train.hidden_size": config.train.hidden_size,
        "train.num_heads": config.train.num_heads,
        "train.intermediate_size": config.train.intermediate_size,
        "train.grad_accum": config.train.grad_accum,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"'{key}' must be positive, got {value}")
    if spec.dtype not in ("float32", "float16"):
        raise UserError(f"'spectrogram.dtype' must be float32 or float16, got '{spec.dtype}'")
    if config.train.hidden_size % config.train.num_heads:
        raise UserError(
            f"'train.hidden_size' ({config.train.hidden_size}) must be a multiple of "
            f"'train.num_heads' ({config.train.num_heads})"
        )
    strategies = ("prefix", "random", "group", "stratified", "official")
    if config.split.strategy not in strategies:
        raise UserError(f"'split.strategy' must be one of {', '.join(strategies)}, got '{config.split.strategy}'")
    sources = ("manifest", "folder", "audioset", "hf_parquet")
    if config.data.source not in sources:
        raise UserError(f"'data.source' must be one of {', '.join(sources)}, got '{config.data.source}'")
