import dataclasses
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

from audiotokens.config import (
    FILE,
    RUNTIME,
    STORAGE,
    Config,
    frame_keys,
    keys_with_role,
    load_config,
    valid_keys,
)
from audiotokens.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_default_toml_mirrors_dataclass_defaults():
    table = tomllib.loads((ROOT / "configs" / "default.toml").read_text())
    defaults = Config().to_dict()
    assert table == defaults


def test_seed_toml_states_every_key_with_the_seeds_values():
    """configs/seed.toml stays the seed's configuration whatever the defaults become: every key is stated."""
    table = tomllib.loads((ROOT / "configs" / "seed.toml").read_text())
    assert {section: set(keys) for section, keys in table.items()} == \
        {section: set(keys) for section, keys in Config().to_dict().items()}
    config = load_config(ROOT / "configs" / "seed.toml")
    assert (config.spectrogram.sample_rate, config.spectrogram.n_fft, config.spectrogram.hop_length,
            config.spectrogram.n_mels, config.spectrogram.normalize) == (22050, 1024, 512, 64, "clip")
    assert (config.cluster.quantizer, config.cluster.n_clusters, config.cluster.niter) == ("frame", 50, 20)
    assert (config.model.num_layers, config.model.hidden_size, config.model.num_heads,
            config.model.intermediate_size, config.model.pooling) == (12, 768, 12, 3072, "cls")
    assert (config.train.epochs, config.train.batch_size, config.train.learning_rate) == (20, 16, 5e-5)


def test_presets_only_name_known_keys():
    for preset in ("small_data", "large_data", "demo", "bench_small"):
        load_config(ROOT / "configs" / f"{preset}.toml")


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\nn_clusters = 7\n[train]\nlearning_rate = 1\n")
    config = load_config(path, ["cluster.n_clusters=9", "spectrogram.db=false"], tmp_path)
    assert config.cluster.n_clusters == 9
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.spectrogram.db is False
    assert config.workdir == tmp_path


@pytest.mark.parametrize("override, pattern", [
    ("cluster.n_clusterz=3", r"valid keys in \[cluster\]: .*\bn_clusters\b"),
    ("nosection.x=1", "valid sections"),
    ("train.epochs=ten", "'train.epochs' must be int"),
    ("spectrogram.db=maybe", "true or false"),
    ("no_equals_sign", r"section\.key=value"),
    ("cluster.n_clusters=0", r"'cluster\.n_clusters' must be >= 2, got 0"),
    ("split.strategy=alphabetical", r"'split\.strategy' must be one of auto, .*got 'alphabetical'"),
])
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(UserError, match=pattern):
        load_config(overrides=[override])


def test_normalize_is_a_choice_and_its_old_true_and_false_mean_clip_and_none(tmp_path):
    path = tmp_path / "old.toml"
    for old, meaning in ((True, "clip"), (False, "none")):
        path.write_text(f"[spectrogram]\nnormalize = {str(old).lower()}\n")
        assert load_config(path).spectrogram.normalize == meaning
        override = f"spectrogram.normalize={str(old).lower()}"
        assert load_config(overrides=[override]).spectrogram.normalize == meaning
    assert load_config().spectrogram.normalize == "clip"
    assert load_config(overrides=["spectrogram.normalize=pcen"]).spectrogram.normalize == "pcen"
    with pytest.raises(UserError, match=r"'spectrogram\.normalize' must be one of clip, fixed, pcen, none, "
                                        r"got 'loud'"):
        load_config(overrides=["spectrogram.normalize=loud"])


@pytest.mark.parametrize("overrides, pattern", [
    (["spectrogram.normalize=fixed", "spectrogram.db=false"], r"normalize' = fixed scales a fixed dB range"),
    (["spectrogram.normalize=fixed", "spectrogram.floor_db=0", "spectrogram.ceiling_db=-10"],
     r"'spectrogram\.floor_db' \(0\.0\) must be below 'spectrogram\.ceiling_db' \(-10\.0\)"),
])
def test_a_fixed_range_needs_db_and_a_floor_below_its_ceiling(overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        load_config(overrides=overrides)
    load_config(overrides=overrides[1:])  # the same values mean nothing without normalize = fixed


NETWORK_KEYS = ("input", "encoder", "num_layers", "hidden_size", "num_heads", "intermediate_size", "dropout",
                "max_length", "token_embedding", "codebook_fusion", "pooling", "head", "margin", "scale")


def test_the_network_is_the_model_section_and_how_it_trains_the_train_section():
    config = load_config()
    assert {f.name for f in dataclasses.fields(config.model)} == set(NETWORK_KEYS)
    assert not {f.name for f in dataclasses.fields(config.train)} & set(NETWORK_KEYS)
    assert {"epochs", "learning_rate", "objective", "init", "freeze", "crop_frames", "sampler"} <= {
        f.name for f in dataclasses.fields(config.train)}


@pytest.mark.parametrize("key", NETWORK_KEYS)
def test_a_network_key_under_train_names_its_new_place_from_set_and_from_a_file(tmp_path, key):
    expected = f"'train.{key}' is now 'model.{key}': the network's settings moved to [model]"
    with pytest.raises(UserError) as caught:
        load_config(overrides=[f"train.{key}=1"])
    assert str(caught.value) == expected
    path = tmp_path / "old.toml"
    path.write_text(f"[train]\nepochs = 3\n{key} = 1\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert str(caught.value) == expected


def test_the_tokenizer_key_names_its_new_name_from_set_and_from_a_file(tmp_path):
    expected = ("'cluster.tokenizer' is now 'cluster.quantizer': a quantizer is the kind of codebook the "
                "vocabulary is made of")
    with pytest.raises(UserError) as caught:
        load_config(overrides=["cluster.tokenizer=subband"])
    assert str(caught.value) == expected
    path = tmp_path / "old.toml"
    path.write_text('[cluster]\ntokenizer = "subband"\n')
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert str(caught.value) == expected
    assert load_config(overrides=["cluster.quantizer=subband"]).cluster.quantizer == "subband"


def test_the_network_keys_load_from_the_model_section(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nencoder = "conformer"\nnum_layers = 3\n[train]\nepochs = 4\n')
    config = load_config(path, ["model.pooling=mean"])
    assert (config.model.encoder, config.model.num_layers, config.model.pooling) == ("conformer", 3, "mean")
    assert config.train.epochs == 4


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "c.toml"
    for text in ('[train]\nepochs = "many"\n', '[train]\nepochs = "8"\n', '[cluster]\nspherical = "yes"\n'):
        path.write_text(text)
        with pytest.raises(UserError, match="must be"):
            load_config(path)


def test_every_key_is_listed():
    keys = valid_keys()
    for section in dataclasses.fields(Config):
        if section.name != "workdir":
            assert any(k.startswith(section.name + ".") for k in keys)


@pytest.mark.parametrize("overrides, pattern", [
    (["model.num_heads=0"], r"'model\.num_heads' must be positive, got 0"),
    (["cluster.n_clusters=1"], r"'cluster\.n_clusters' must be >= 2, got 1"),
    (["split.test_ratio=1.0"], r"'split\.test_ratio' must be in \[0, 1\), got 1\.0"),
    (["split.official_side=train"], r"'split\.official_side' must be one of validation, test"),
    (["model.hidden_size=30", "model.num_heads=4"], r"'model\.hidden_size' \(30\) must be a multiple of"),
    (["spectrogram.hop_length=2048", "spectrogram.n_fft=1024"], r"'spectrogram\.hop_length' \(2048\) is larger"),
    (["spectrogram.sample_rate=16000", "spectrogram.fmax=9000"], r"fmax.*sample_rate / 2 \(8000\)"),
    (["spectrogram.fmin=5000", "spectrogram.fmax=4000"], r"0 <= fmin < fmax"),
    (["spectrogram.n_fft=64", "spectrogram.hop_length=32"], r"'spectrogram\.n_mels' \(64\) is more than the 33"),
    (["split.validation_ratio=0.6", "split.test_ratio=0.5"],
     r"'split\.validation_ratio' \(0\.6\) \+ 'split\.test_ratio' \(0\.5\) = 1\.1 leaves no clip for training"),
    (["split.validation_ratio=0.5", "split.test_ratio=0.5"], r"= 1 leaves no clip for training"),
    (["train.eval_window=100", "train.eval_hop=150"],
     r"'train\.eval_hop' \(150\) is larger than the evaluation window \(100 frames"),
    (["train.crop_frames=64", "train.eval_hop=65"], r"'train\.eval_hop' \(65\) is larger than the evaluation window \(64"),
])
def test_values_that_would_fail_deep_inside_a_stage_are_one_line_errors_at_load(overrides, pattern):
    """Caught when the config is read (before any stage runs), as one line naming the key."""
    with pytest.raises(UserError, match=pattern) as caught:
        load_config(overrides=overrides)
    assert "\n" not in str(caught.value)


def test_shares_and_windows_that_fit_are_accepted():
    load_config(overrides=["split.validation_ratio=0.5", "split.test_ratio=0.49"])
    load_config(overrides=["split.validation_ratio=0.95", "split.test_list=ids.txt"])  # the list replaces the ratio
    load_config(overrides=["train.eval_window=100", "train.eval_hop=100"])
    load_config(overrides=["train.eval_hop=500"])  # no window: whole clips, the hop is unused


def test_checks_apply_to_values_from_a_file_too(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[spectrogram]\nsample_rate = 16000\nfmax = 8001.0\n")
    with pytest.raises(UserError, match="fmax"):
        load_config(path)
    path.write_text("[spectrogram]\nsample_rate = 16000\nfmax = 8000.0\n")
    assert load_config(path).spectrogram.fmax == 8000.0  # Nyquist itself is allowed


def test_roles_separate_what_a_frame_is_from_storage_and_speed():
    frame = set(frame_keys())
    assert {"sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "db", "top_db", "normalize",
            "max_duration"} <= frame
    assert not {"dtype", "workers"} & frame  # precision and speed do not change what a frame means
    assert "spectrogram.dtype" in keys_with_role(STORAGE)
    runtime = keys_with_role(RUNTIME)
    assert {"spectrogram.workers", "tokenize.batch_frames", "cluster.gpu", "train.device"} <= runtime
    assert not runtime & {"cluster.n_clusters", "split.seed", "train.epochs"}
    assert {"data.manifest", "split.test_list", "split.validation_list"} <= keys_with_role(FILE)


FLOAT_KEYS = [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) if s.name != "workdir"
              for f in dataclasses.fields(s.default_factory) if f.type in (float, "float")]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_non_finite_values_from_set_and_from_a_file(tmp_path, key, value):
    with pytest.raises(UserError) as caught:
        load_config(overrides=[f"{key}={value}"])
    assert str(caught.value) == f"'{key}' must be a finite number, got {float(value)}"
    section, name = key.split(".")
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{name} = {value}\n")  # TOML's own nan and inf
    with pytest.raises(UserError, match=f"'{key}' must be a finite number"):
        load_config(path)


def test_the_float_keys_include_those_that_passed_their_range_when_infinite():
    assert {"evaluate.threshold", "train.learning_rate", "cluster.memory_budget_gb", "train.mixup_alpha",
            "model.margin", "model.scale", "train.weight_decay"} <= set(FLOAT_KEYS)


SEED_KEYS = [key for key in valid_keys() if key.endswith(".seed")]


@pytest.mark.parametrize("value", [-1, 2**31, 2**32])
@pytest.mark.parametrize("key", SEED_KEYS)
def test_seeds_outside_what_every_random_generator_takes_are_refused(key, value):
    with pytest.raises(UserError) as caught:
        load_config(overrides=[f"{key}={value}"])
    assert str(caught.value) == f"'{key}' must be in [0, 2**31 - 1], got {value}"


def test_the_largest_seed_is_accepted_and_every_stage_has_one():
    assert {"split.seed", "cluster.seed", "train.seed", "pretrain.seed", "baseline.seed"} <= set(SEED_KEYS)
    assert load_config(overrides=[f"{key}={2**31 - 1}" for key in SEED_KEYS]).cluster.seed == 2**31 - 1
