"""Configuration: the one place that knows defaults, the role of each key and its valid values.

Defaults live in the dataclasses below (configs/default.toml mirrors them, a test keeps the two equal).
A TOML file overrides them section by section, then `--set section.key=value` overrides the file.
Unknown sections or keys and values of the wrong type are rejected with the list of valid keys.

Each key may carry, beside its default:
  role     RUNTIME   changes how fast a stage runs, never what it writes (left out of fingerprints)
           STORAGE   changes how an artifact is stored, not what it means (part of the fingerprint, not of
                     the frame spec)
           FILE      names a file whose content is part of the stage's identity (hashed into the fingerprint)
           RESUMABLE may change between a training run and its --resume
  check    a range ("positive", "non_negative", "unit", "fraction", "seed") or a tuple of allowed choices;
           every float key must also be finite (no nan or inf), whatever its check
  also_defines  a stage outside the key's own section whose output the key defines too (that stage's
           `keys`): the network a pre-training hands on, the unlabelled audio the split catalogues

Keys that moved to another section are refused in one line naming their new place (MOVED), never aliased.
A key that became a choice reads its old values as the choice they meant (OLD_VALUES: spectrogram.normalize
true and false are clip and none), in config files, --set and recorded frame specs alike.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import UserError

RUNTIME, STORAGE, FILE, RESUMABLE = "runtime", "storage", "file", "resumable"

TRACKERS = ("tensorboard", "mlflow")  # train.tracking's names (training/tracking.py)


def tracker_names(value: str) -> list[str]:
    """The trackers a train.tracking value names: comma-separated, or none."""
    names = [name.strip() for name in value.split(",")]
    return [] if names == ["none"] else names


# check name -> (predicate, wording for the error message)
RANGES = {
    "positive": (lambda v: v > 0, "positive"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "at_least_2": (lambda v: v >= 2, ">= 2"),
    # numpy's legacy seeding and scikit-learn take [0, 2**32); faiss's k-means seed is a C int
    "seed": (lambda v: 0 <= v < 2**31, "in [0, 2**31 - 1]"),
    "trackers": (lambda v: (names := tracker_names(v)) == list(dict.fromkeys(names)) and set(names) <= set(TRACKERS),
                 "tensorboard, mlflow, both comma-separated, or none"),
}


def setting(default: Any, *, role: str = "", check: str | tuple = (), also_defines: str = "") -> Any:
    """A config key: its default, its role, its valid values and what else it defines (module docstring)."""
    return field(default=default, metadata={"role": role, "check": check, "also_defines": also_defines})


# the stages that read keys of another section (also_defines)
PRETRAIN, SPLIT, SPECTROGRAM = "pretrain", "split", "spectrogram"


@dataclass
class DataConfig:
    source: str = setting("manifest", check=("manifest", "folder", "audioset", "hf_parquet", "hf_dataset",
                                              "lhotse", "kaldi"))
    manifest: str = setting("", role=FILE)  # CSV with columns path,label[,group]; labels split by label_delimiter
    folder: str = ""  # folder-per-class tree: <folder>/<class>/<audio files>
    label_delimiter: str = ";"
    audio_root: str = ""  # AudioSet audio root (any layout under it)
    segments: str = setting("", role=FILE)  # AudioSet segments CSV (e.g. balanced_train_segments.csv)
    eval_segments: str = setting("", role=FILE)  # AudioSet eval segments CSV (the official side)
    class_labels: str = setting("", role=FILE)  # AudioSet class_labels_indices.csv
    ontology: str = setting("", role=FILE)  # AudioSet ontology.json (names when class_labels is absent)
    parquet: str = ""  # glob of Hugging Face AudioSet parquet shards
    eval_parquet: str = ""  # glob of parquet shards for the official side
    hf_dataset: str = ""  # Hugging Face datasets: a save_to_disk folder or an audiofolder tree
    hf_audio_column: str = "audio"  # hf_dataset: an Audio feature or a column of file paths
    hf_label_column: str = "label"  # hf_dataset: ClassLabel (its names), strings, or lists of either
    hf_group_column: str = ""  # hf_dataset: the groups of the split stage (e.g. a speaker id); "" = none
    hf_split: str = "train"  # hf_dataset: the split whose rows are the clips
    hf_eval_split: str = ""  # hf_dataset: the split that is the official side (e.g. "validation")
    hf_test_split: str = ""  # hf_dataset: the split that is the test split (e.g. "test")
    lhotse_recordings: str = setting("", role=FILE)  # lhotse RecordingSet manifest (jsonl or jsonl.gz)
    lhotse_supervisions: str = setting("", role=FILE)  # lhotse SupervisionSet: one clip per segment
    lhotse_cuts: str = setting("", role=FILE)  # lhotse CutSet, instead of recordings + supervisions
    lhotse_label: str = "speaker"  # lhotse: a supervision field (speaker, language, gender, text) or custom key
    lhotse_group: str = "recording_id"  # lhotse: the field or custom key that groups clips; "" = none
    kaldi_dir: str = ""  # Kaldi/ESPnet data directory: wav.scp, optional segments, the label file
    kaldi_labels: str = "utt2label"  # kaldi: the label file in kaldi_dir (utt2spk, utt2lang, any utt2<name>)
    keep_unused_classes: bool = False  # keep classes without a training clip as model outputs


SPLIT_STRATEGIES = ("auto", "prefix", "random", "group", "stratified", "official", "kfold", "column")


@dataclass
class SplitConfig:
    strategy: str = setting("auto", check=SPLIT_STRATEGIES)  # see split.py
    validation_prefixes: str = "ABCDEF"  # prefix: ids whose FIRST character is one of these
    validation_ratio: float = setting(0.1, check="fraction")  # random | group | stratified
    validation_list: str = setting("", role=FILE)  # official: file of ids (one per line) or a segments CSV
    official_side: str = setting("validation", check=("validation", "test"))  # official: what the list is
    test_ratio: float = setting(0.1, check="fraction")  # share of the clips held out as the test split
    test_list: str = setting("", role=FILE)  # file of test ids (one per line) or a segments CSV
    folds: int = setting(5, check="at_least_2")  # kfold: number of folds
    fold: int = setting(0, check="non_negative")  # kfold, column: the fold used as validation (counted from 0)
    column: str = "fold"  # column: the manifest column giving each clip's side (train/validation/test) or fold
    test_fold: str = ""  # column of folds: the fold held out as the test split ("": no test split)
    seed: int = setting(0, check="seed")


NORMALIZE = ("clip", "fixed", "pcen", "none")  # spectrogram.normalize: how frame values are scaled


@dataclass
class SpectrogramConfig:
    sample_rate: int = setting(22050, check="positive")
    n_fft: int = setting(1024, check="positive")
    hop_length: int = setting(512, check="positive")
    n_mels: int = setting(64, check="positive")
    fmin: float = setting(0.0, check="non_negative")
    fmax: float = setting(0.0, check="non_negative")  # 0 = sample_rate / 2
    db: bool = True
    top_db: float = setting(80.0, check="non_negative")  # floor this many dB below the peak; 0 = no floor
    # clip: each spectrogram scaled to [0, 1] from its own range | fixed: the absolute dB range floor_db ..
    # ceiling_db scaled to [0, 1], no per-clip peak or top_db | pcen: librosa's PCEN of the mel magnitude
    # (instead of dB and top_db) | none: as computed. true and false (before the choices) mean clip and none
    normalize: str = setting("clip", check=NORMALIZE)
    floor_db: float = -80.0  # fixed: dB (ref 1, samples in [-1, 1]) mapped to 0; lower values are clipped
    ceiling_db: float = 40.0  # fixed: dB mapped to 1 (a full-scale sine peaks near 30); higher ones clipped
    dtype: str = setting("float32", role=STORAGE, check=("float32", "float16"))
    max_duration: float = setting(0.0, check="non_negative")  # seconds kept per clip; 0 = whole clip
    workers: int = setting(0, role=RUNTIME, check="non_negative")  # 0 = one per usable CPU
    # ssl: hidden states of a local speech model; waveform: its input (rows of samples at its rate and
    # stride), for fine-tuning it end to end (model.input = waveform, model.encoder = ssl); codec: rows of
    # hop_length samples at sample_rate, one per frame of a neural codec (cluster.quantizer = codec)
    features: str = setting("mel", check=("mel", "ssl", "waveform", "codec"))
    # ssl, waveform: local Hugging Face directory (wav2vec2 / HuBERT / WavLM); never downloaded. The one
    # place the speech model is named: the frame spec records it (path and digest), and a fine-tuned model
    # starts from the model its waveform rows were cut for, so the two can never disagree
    ssl_model: str = ""
    ssl_layer: int = -1  # ssl: hidden state index (0 = the feature projection, -1 = the last layer)


@dataclass
class AugmentConfig:
    """Corrupted copies of the training clips (data/corrupt.py): the spectrogram stage stores `copies` of each
    training clip beside its frames, each a chain of the corruptions below drawn from (seed, copy, clip);
    tokenize gives them tokens with the same vocabulary, and training reads, per epoch and clip, the clean
    clip or one of its copies. Validation and test stay clean."""

    copies: int = setting(0, check="non_negative", also_defines=SPECTROGRAM)  # per training clip; 0 = off
    seed: int = setting(0, check="seed", also_defines=SPECTROGRAM)  # with the copy number and clip id, seeds each copy
    # additive noise at an SNR drawn from [snr_low, snr_high] dB, of a kind drawn from noise_kinds and the
    # recordings in noise_dir
    noise_probability: float = setting(0.8, check="unit", also_defines=SPECTROGRAM)  # share of copies
    snr_low: float = setting(5.0, also_defines=SPECTROGRAM)
    snr_high: float = setting(30.0, also_defines=SPECTROGRAM)
    noise_kinds: str = setting("white,pink,brown", also_defines=SPECTROGRAM)  # comma-separated; "" = none
    noise_dir: str = setting("", also_defines=SPECTROGRAM)  # folder of noise recordings (looped or cropped)
    # reverberation: a synthetic room of RT60 drawn from [rt60_low, rt60_high] s, or a recorded response
    reverb_probability: float = setting(0.3, check="unit", also_defines=SPECTROGRAM)  # share of copies
    rt60_low: float = setting(0.2, check="positive", also_defines=SPECTROGRAM)
    rt60_high: float = setting(1.0, check="positive", also_defines=SPECTROGRAM)
    ir_dir: str = setting("", also_defines=SPECTROGRAM)  # folder of impulse responses (replaces the room)
    # level: gain drawn from [gain_low, gain_high] dB
    gain_probability: float = setting(0.5, check="unit", also_defines=SPECTROGRAM)  # share of copies
    gain_low: float = setting(-6.0, also_defines=SPECTROGRAM)
    gain_high: float = setting(6.0, also_defines=SPECTROGRAM)
    # colour: spectral tilt drawn from [tilt_low, tilt_high] dB per octave around 1 kHz, mean power kept
    eq_probability: float = setting(0.3, check="unit", also_defines=SPECTROGRAM)  # share of copies
    tilt_low: float = setting(-2.0, also_defines=SPECTROGRAM)
    tilt_high: float = setting(2.0, also_defines=SPECTROGRAM)


QUANTIZERS = ("frame", "stacked", "subband", "residual", "scalar", "codec")


@dataclass
class ClusterConfig:
    quantizer: str = setting("subband", check=QUANTIZERS)  # the kind of codebook (tokens/quantizer_kinds.py)
    n_clusters: int = setting(256, check="at_least_2")  # per codebook
    niter: int = setting(20, check="positive")
    seed: int = setting(0, check="seed")
    max_frames: int = setting(0, check="non_negative")  # 0 = all training frames within memory_budget_gb
    memory_budget_gb: float = setting(4.0, check="positive")
    spherical: bool = False
    stack: int = setting(4, check="positive")  # stacked: frames per token
    stack_stride: int = setting(0, check="non_negative")  # stacked: hop in frames; 0 = stack
    bands: int = setting(8, check="positive")  # subband: contiguous mel bands, one codebook each
    stages: int = setting(4, check="positive")  # residual: rounds of k-means on the residual
    levels: int = setting(16, check="at_least_2")  # scalar: uniform levels per mel bin
    # codec: local Hugging Face folder of a neural codec (EnCodec, DAC, Mimi, X-Codec); never downloaded
    codec_model: str = ""
    codec_codebooks: int = setting(0, check="non_negative")  # codec: codebooks (ids per frame); 0 = all it has
    fit_on_copies: bool = False  # also fit on the training clips' corrupted copies (augment.copies)
    gpu: bool = setting(False, role=RUNTIME)


@dataclass
class TokenizeConfig:
    batch_frames: int = setting(262144, role=RUNTIME, check="positive")


@dataclass
class ModelConfig:
    """What the network is: its input, parts and sizes. Keys that also define a pre-training's network say so;
    the input (pre-training picks its own), pooling and head are the classifier's alone."""

    input: str = setting("tokens", check=("tokens", "frames", "waveform"))  # what the model reads
    # the model's parts (model/parts.py checks the names against its registries)
    # learned | decoded | decoded+learned (tokens input)
    token_embedding: str = setting("learned", also_defines=PRETRAIN)
    # sum | attention: how learned embeddings of several codebooks combine
    codebook_fusion: str = setting("sum", also_defines=PRETRAIN)
    # bert | conformer | cnn (cnn: frames input) | ssl (waveform input: spectrogram.ssl_model)
    encoder: str = setting("bert", also_defines=PRETRAIN)
    num_layers: int = setting(2, check="positive", also_defines=PRETRAIN)
    # encoder ssl: the layer after pooling (the model has its own)
    hidden_size: int = setting(128, check="positive", also_defines=PRETRAIN)
    num_heads: int = setting(4, check="positive", also_defines=PRETRAIN)
    intermediate_size: int = setting(512, check="positive", also_defines=PRETRAIN)
    dropout: float = setting(0.1, check="fraction", also_defines=PRETRAIN)
    # frames per clip fed to the model; 0 = longest clip
    max_length: int = setting(0, check="non_negative", also_defines=PRETRAIN)
    pooling: str = "mean"  # cls | mean | attention
    head: str = "linear"  # linear | am_softmax (single-label)
    margin: float = setting(0.2, check="non_negative")  # am_softmax additive margin
    scale: float = setting(30.0, check="positive")  # am_softmax logit scale


@dataclass
class TrainConfig:
    """How the network is trained. `objective` is here: it picks the loss and the trainer; the class-mean head
    that contrastive training classifies with has no weights of its own, its means are fitted by training."""

    epochs: int = setting(20, role=RESUMABLE, check="positive")
    batch_size: int = setting(32, check="positive")  # clips per batch (the cap when batch_frames is set)
    batch_frames: int = setting(0, check="non_negative")  # padded positions per batch; 0 = batch_size clips
    crop_frames: int = setting(0, check="non_negative")  # training: random crops of this many frames; 0 = off
    eval_window: int = setting(0, check="non_negative")  # evaluation windows in frames; 0 = crop_frames
    eval_hop: int = setting(0, check="non_negative")  # frames between windows; 0 = half of eval_window
    # augmentation, each off unless set (training/augment.py)
    mask_time: float = setting(0.0, check="fraction")  # share of content positions masked, in spans
    mask_span: int = setting(4, check="positive")  # positions per masked span
    mask_freq: int = setting(0, check="non_negative")  # frames input: mel bands zeroed per clip
    mask_freq_width: int = setting(8, check="positive")  # widest band, in mel channels
    mixup_alpha: float = setting(0.0, check="non_negative")  # frames input, multi-label: Beta(alpha, alpha)
    sampler: str = setting("shuffle", check=("shuffle", "balanced"))  # balanced: class-balanced draws
    learning_rate: float = setting(1e-3, check="non_negative")  # 0: weights never move (a control run)
    # the optimiser's decay and warm-up serve a pre-training too (its learning rate and epochs are its own)
    weight_decay: float = setting(0.01, check="non_negative", also_defines=PRETRAIN)
    warmup_ratio: float = setting(0.1, check="unit", also_defines=PRETRAIN)
    grad_clip: float = setting(0.0, check="non_negative")  # 0 = off
    grad_accum: int = setting(1, check="positive")
    # CUDA: bf16 where supported, else fp16 with a grad scaler; CPU: bf16 where the CPU has it (AVX512-BF16,
    # AMX), else fp32
    amp: bool = True
    patience: int = setting(0, role=RESUMABLE, check="non_negative")  # early stopping; 0 = off
    threshold: float = setting(0.5, check="unit")
    seed: int = setting(0, check="seed")
    device: str = setting("auto", role=RUNTIME, check=("auto", "cuda", "mps", "cpu"))
    num_workers: int = setting(2, role=RUNTIME, check="non_negative")
    # run tracking of train and pretrain beside metrics.jsonl: tensorboard (output/tensorboard/; skipped with a
    # note when not installed), mlflow (MLFLOW_TRACKING_URI, else the local store output/mlflow/), both, or none
    tracking: str = setting("tensorboard", role=RUNTIME, check="trackers")
    # intra-op threads; 0 = the usable cores (affinity, cgroup quota) less what other processes keep busy, or
    # torch's own setting where OMP_NUM_THREADS is set (torchrun: 1 per process)
    threads: int = setting(0, role=RUNTIME, check="non_negative")
    compile: bool = setting(False, role=RUNTIME)  # torch.compile the model (compiles at the first steps)
    objective: str = setting("classify", check=("classify", "contrastive"))  # contrastive: training/contrastive.py
    init: str = ""  # start embedder and encoder from a pre-training (output/pretrain) or a bundle folder
    # "": the encoder's default (ssl: feature_encoder, else none) | none | feature_encoder (ssl) |
    # N: the embeddings and the lowest N encoder layers stay fixed
    freeze: str = ""
    unfreeze_after: int = setting(0, check="non_negative")  # epochs before frozen parts train too; 0 = never


@dataclass
class PretrainConfig:
    # unlabelled audio, listed in the split's catalogue: CSV with a path column (sources/unlabelled.py)
    manifest: str = setting("", role=FILE, also_defines=SPLIT)
    folder: str = setting("", also_defines=SPLIT)  # unlabelled audio: a folder tree of audio files
    objective: str = setting("mlm", check=("mlm", "masked_frames"))  # see training/pretrain.py
    mask_prob: float = setting(0.15, check="fraction")  # share of each clip's positions masked (in spans)
    span: int = setting(3, check="positive")  # positions per masked span
    epochs: int = setting(10, check="positive")
    batch_size: int = setting(16, check="positive")
    learning_rate: float = setting(1e-4, check="positive")
    heldout: float = setting(0.1, check="fraction")  # clips held out to report loss and masked accuracy
    seed: int = setting(0, check="seed")


@dataclass
class BaselineConfig:
    models: str = "svm,logreg"  # comma-separated: svm, logreg; or all
    n_mfcc: int = setting(0, check="non_negative")  # 0 = min(40, spectrogram.n_mels)
    seed: int = setting(0, check="seed")
    workers: int = setting(0, role=RUNTIME, check="non_negative")  # 0 = one per usable CPU


@dataclass
class EvaluateConfig:
    threshold: float = -1.0  # < 0: the bundle's decision threshold (train.threshold); set to override


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    workdir: Path = Path(".")

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: self.section(name) for name in SECTIONS}


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "workdir"]


def _section_type(name: str):
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "workdir"}[name]


def _fields(section: str) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(_section_type(section))


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in SECTIONS for f in _fields(s)]


def keys_with_role(role: str, sections: Iterable[str] = SECTIONS) -> set[str]:
    """`section.key` names of every key declared with `role`."""
    return {f"{s}.{f.name}" for s in sections for f in _fields(s) if f.metadata.get("role") == role}


def keys_also_defining(stage: str) -> tuple[str, ...]:
    """`section.key` names of every key declared to define `stage`'s output from outside its sections."""
    return tuple(f"{s}.{f.name}" for s in SECTIONS for f in _fields(s) if f.metadata.get("also_defines") == stage)


# old `section.key` -> (new `section.key`, why it moved)
MOVED = {f"train.{f.name}": (f"model.{f.name}", "the network's settings moved to [model]")
         for f in dataclasses.fields(ModelConfig)}
MOVED["cluster.tokenizer"] = ("cluster.quantizer", "a quantizer is the kind of codebook the vocabulary is made of")

# `section.key` -> {value it took before it became a choice: the choice that means the same}, so old configs,
# frame specs and bundles keep their meaning
OLD_VALUES = {"spectrogram.normalize": {True: "clip", False: "none"}}


def current_value(name: str, value: Any, from_text: bool = False) -> Any:
    """What an old value of key `name` (OLD_VALUES) means today; any other value as it is."""
    meanings = OLD_VALUES.get(name)
    if not meanings:
        return value
    if from_text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    return meanings[value] if isinstance(value, bool) else value


def frame_keys() -> tuple[str, ...]:
    """The spectrogram keys that define what a frame is (neither storage nor speed)."""
    return tuple(f.name for f in _fields("spectrogram") if not f.metadata.get("role"))


def _field_type(section: str, key: str) -> type:
    default = getattr(_section_type(section)(), key)
    return type(default)


def _check_key(section: str, key: str) -> None:
    if f"{section}.{key}" in MOVED:
        new, why = MOVED[f"{section}.{key}"]
        raise UserError(f"'{section}.{key}' is now '{new}': {why}")
    if section not in SECTIONS:
        raise UserError(f"unknown config section '{section}'; valid sections: {', '.join(SECTIONS)}")
    names = [f.name for f in _fields(section)]
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
    value = current_value(f"{section}.{key}", value, from_text)
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
    validate(config)
    return config


def check_value(name: str, value: Any, check: str | tuple) -> None:
    """Raise a one-line UserError when `value` of key `name` breaks its declared check."""
    if isinstance(check, tuple):
        if check and value not in check:
            raise UserError(f"'{name}' must be one of {', '.join(map(str, check))}, got {value!r}")
        return
    valid, wording = RANGES[check]
    if not valid(value):
        raise UserError(f"'{name}' must be {wording}, got {value}")


def check_finite(name: str, value: Any) -> None:
    """Refuse nan and inf for every float key, from a file (TOML's nan, inf) or from --set alike: inf passes
    the open-ended ranges and nan any key without a range, and either ends deep inside a stage."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"'{name}' must be a finite number, got {value}")


def validate(config: Config) -> None:
    """Every declared check, then the cross-field ones a wrong value would turn into a deep traceback."""
    for section in SECTIONS:
        for f in _fields(section):
            check_finite(f"{section}.{f.name}", getattr(getattr(config, section), f.name))
            check_value(f"{section}.{f.name}", getattr(getattr(config, section), f.name), f.metadata.get("check", ()))
    model = config.model
    if model.hidden_size % model.num_heads:
        raise UserError(f"'model.hidden_size' ({model.hidden_size}) must be a multiple of "
                        f"'model.num_heads' ({model.num_heads})")
    check_spectrogram(config.spectrogram)
    if config.baseline.n_mfcc > config.spectrogram.n_mels:
        raise UserError(f"'baseline.n_mfcc' ({config.baseline.n_mfcc}) is more than 'spectrogram.n_mels' "
                        f"({config.spectrogram.n_mels}) the MFCCs are computed from; lower baseline.n_mfcc, or "
                        "set it to 0 for min(40, n_mels)")
    _check_split_shares(config.split)
    _check_evaluation_windows(config.train)
    check_ranges(config.augment)


def _check_split_shares(split: SplitConfig) -> None:
    """Validation and test shares of the same clips must leave some for training (test_ratio applies unless a
    list or the official side names the test split)."""
    draws_test = not split.test_list and not (split.strategy == "official" and split.official_side == "test") \
        and split.strategy != "column"
    if draws_test and split.validation_ratio + split.test_ratio >= 1:
        raise UserError(f"'split.validation_ratio' ({split.validation_ratio:g}) + 'split.test_ratio' "
                        f"({split.test_ratio:g}) = {split.validation_ratio + split.test_ratio:g} leaves no clip "
                        "for training; keep their sum below 1")


def _check_evaluation_windows(train: TrainConfig) -> None:
    """Windows further apart than their length would leave frames between them unscored."""
    window = train.eval_window or train.crop_frames
    if window and train.eval_hop > window:
        raise UserError(f"'train.eval_hop' ({train.eval_hop}) is larger than the evaluation window ({window} "
                        "frames: train.eval_window, or train.crop_frames when it is 0): frames between windows "
                        "would never be scored; use eval_hop <= the window")


def check_ranges(augment: AugmentConfig) -> None:
    """Each [augment] range must have its low end at or below its high end."""
    for low, high in (("snr_low", "snr_high"), ("rt60_low", "rt60_high"), ("gain_low", "gain_high"),
                      ("tilt_low", "tilt_high")):
        if getattr(augment, low) > getattr(augment, high):
            raise UserError(f"'augment.{low}' ({getattr(augment, low)}) must be <= 'augment.{high}' "
                            f"({getattr(augment, high)})")


def check_spectrogram(spec: SpectrogramConfig) -> None:
    """Frame settings that only make sense together (also checked for a bundle's recorded settings)."""
    if spec.features == "codec":  # rows of samples: no window, no mel bands (a codec frame may exceed n_fft)
        return
    nyquist = spec.sample_rate / 2
    fmax = spec.fmax or nyquist
    if spec.fmax > nyquist or spec.fmin >= fmax:
        raise UserError(f"'spectrogram.fmin' ({spec.fmin}) and 'spectrogram.fmax' ({spec.fmax}) must satisfy "
                        f"0 <= fmin < fmax <= sample_rate / 2 ({nyquist:g}); fmax = 0 means sample_rate / 2")
    if spec.hop_length > spec.n_fft:
        raise UserError(f"'spectrogram.hop_length' ({spec.hop_length}) is larger than 'spectrogram.n_fft' "
                        f"({spec.n_fft}): samples between windows would be skipped; use hop_length <= n_fft")
    if spec.normalize == "fixed" and not spec.db:
        raise UserError("'spectrogram.normalize' = fixed scales a fixed dB range: set 'spectrogram.db' = "
                        "true, or choose another normalize")
    if spec.normalize == "fixed" and not spec.floor_db < spec.ceiling_db:
        raise UserError(f"'spectrogram.floor_db' ({spec.floor_db}) must be below 'spectrogram.ceiling_db' "
                        f"({spec.ceiling_db})")
    if spec.n_mels > spec.n_fft // 2 + 1:
        raise UserError(f"'spectrogram.n_mels' ({spec.n_mels}) is more than the {spec.n_fft // 2 + 1} frequency "
                        f"bins of n_fft = {spec.n_fft}: some mel bands would be empty; lower n_mels or raise n_fft")
