import dataclasses
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

from audiotokens.config import Config, load_config, valid_keys
from audiotokens.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_default_toml_mirrors_dataclass_defaults():
    table = tomllib.loads((ROOT / "configs" / "default.toml").read_text())
    defaults = Config().to_dict()
    assert table == defaults


def test_seed_hyperparameters():
    config = load_config()
    assert (config.spectrogram.sample_rate, config.spectrogram.n_fft, config.spectrogram.hop_length,
            config.spectrogram.n_mels) == (22050, 1024, 512, 64)
    assert (config.cluster.n_clusters, config.cluster.niter) == (50, 20)
    assert (config.train.num_layers, config.train.epochs, config.train.batch_size) == (12, 20, 16)
    assert config.train.learning_rate == 5e-5


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\nn_clusters = 7\n[train]\nlearning_rate = 1\n")
    config = load_config(path, ["cluster.n_clusters=9", "spectrogram.db=false"], tmp_path)
    assert config.cluster.n_clusters == 9
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.spectrogram.db is False
    assert config.workdir == tmp_path


@pytest.mark.parametrize("override, fragment", [
    ("cluster.n_clusterz=3", "valid keys in [cluster]: n_clusters"),
    ("nosection.x=1", "valid sections"),
    ("train.epochs=ten", "'train.epochs' must be int"),
    ("spectrogram.db=maybe", "true or false"),
    ("no_equals_sign", "section.key=value"),
    ("cluster.n_clusters=0", "must be positive"),
    ("split.strategy=alphabetical", "split.strategy"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides=[override])


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
