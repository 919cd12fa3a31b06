"""One list of names per kind of thing: what the config offers is what the registry holds.

config.py sits below every registry and cannot import them, so it states its choices itself; these tests
keep the two lists equal. Registering a quantizer kind, frame kind, data source or model part without
offering it in the config (or the reverse), or a stage table entry whose runner or keys do not exist,
fails here with the names missing on each side.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from audiotokens import config
from audiotokens.data.sources import SOURCES
from audiotokens.features.spectrogram import FRAME_KINDS, params_to_dict
from audiotokens.model import parts
from audiotokens.model.frames_graph import GRAPHS
from audiotokens.pipeline import stages
from audiotokens.tokens.quantizer_kinds import KINDS

SECTION_TYPES = {f.name: f.default_factory for f in dataclasses.fields(config.Config) if f.name != "workdir"}


def config_field(section: str, key: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(SECTION_TYPES[section])}[key]


def assert_same_names(offered, registered, offered_by: str, registry: str) -> None:
    not_offered = [name for name in registered if name not in offered]
    not_registered = [name for name in offered if name not in registered]
    assert not not_offered, f"{registry} registers {not_offered}, which {offered_by} does not offer"
    assert not not_registered, f"{offered_by} offers {not_registered}, which {registry} does not register"


@pytest.mark.parametrize(("key", "registry", "registry_name"), [
    ("cluster.quantizer", KINDS, "tokens.quantizer_kinds.KINDS"),
    ("spectrogram.features", FRAME_KINDS, "features.spectrogram.FRAME_KINDS"),
    ("data.source", SOURCES, "data.sources.SOURCES"),
], ids=["quantizer kinds", "frame kinds", "data sources"])
def test_the_config_offers_exactly_the_registered_kinds(key, registry, registry_name):
    section, name = key.split(".")
    check = config_field(section, name).metadata["check"]
    assert isinstance(check, tuple) and check, f"{key} declares no choices to check against {registry_name}"
    assert_same_names(check, registry, f"the check of {key}", registry_name)
    assert getattr(SECTION_TYPES[section](), name) in registry, f"the default {key} is not registered"
    for registered, kind in registry.items():
        assert kind.name == registered, f"{registry_name} files {kind.__name__} ({kind.name!r}) as {registered!r}"


def test_tokenizers_is_the_quantizer_registry():
    assert_same_names(config.QUANTIZERS, KINDS, "config.QUANTIZERS", "tokens.quantizer_kinds.KINDS")


def test_every_quantizer_kind_has_a_frames_graph():
    assert_same_names(GRAPHS, KINDS, "model.frames_graph.GRAPHS", "tokens.quantizer_kinds.KINDS")


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_each_quantizer_kind_reads_cluster_keys_with_the_config_defaults(kind):
    cluster = config.ClusterConfig()
    for f in dataclasses.fields(kind):
        assert hasattr(cluster, f.name), (
            f"the {kind.name} quantizer reads cluster.{f.name}, which [cluster] does not have")
        assert f.default == getattr(cluster, f.name), (
            f"the {kind.name} quantizer's default {f.name} = {f.default} is not cluster.{f.name} = "
            f"{getattr(cluster, f.name)}")


def test_the_mel_frame_spec_names_its_kind():
    assert params_to_dict(config.SpectrogramConfig())["features"] == config.SpectrogramConfig().features


@pytest.mark.parametrize("source", SOURCES.values(), ids=list(SOURCES))
def test_each_sources_eval_side_is_a_data_key(source):
    if source.eval_key:
        assert hasattr(config.DataConfig(), source.eval_key), (
            f"data.source={source.name} reads its validation side from data.{source.eval_key}, which [data] "
            "does not have")
        assert source.eval_hint, f"data.source={source.name} says nothing about what data.{source.eval_key} names"
    if source.test_key:
        assert hasattr(config.DataConfig(), source.test_key), (
            f"data.source={source.name} reads its test split from data.{source.test_key}, which [data] does not have")


# ---------------------------------------------------------------- stages


def test_stage_names_are_unique_and_each_runner_is_a_class_with_run():
    assert len(set(stages.NAMES)) == len(stages.NAMES), f"a stage name repeats in {stages.NAMES}"
    for stage in stages.STAGES:
        module_name, class_name = stage.runner.split(":")
        module = importlib.import_module(f"audiotokens.{module_name}")
        runner = getattr(module, class_name, None)
        assert inspect.isclass(runner), f"stage {stage.name}: audiotokens.{module_name} has no class {class_name}"
        assert callable(getattr(runner, "run", None)), f"stage {stage.name}: {class_name} has no run()"
        assert stage.runner_class() is runner
        # a runner module that names its stage (shard locks, messages) names this one
        assert getattr(module, "STAGE", stage.name) == stage.name, (
            f"audiotokens.{module_name}.STAGE = {module.STAGE!r}, but the stage table runs it as {stage.name!r}")


def test_the_four_runner_names_users_know():
    runners = {stage.name: stage.runner.split(":")[1] for stage in stages.STAGES}
    assert {name: runners[name] for name in ("spectrogram", "cluster", "tokenize", "train")} == {
        "spectrogram": "SpectrogramProcessor", "cluster": "ClusterCreator", "tokenize": "SpecTokenizer",
        "train": "ModelBuilder"}


def test_the_stage_table_names_only_config_sections_and_keys():
    keys = set(config.valid_keys())
    for stage in stages.STAGES:
        unknown_sections = [s for s in stage.sections if s not in SECTION_TYPES]
        assert not unknown_sections, f"stage {stage.name} reads sections {unknown_sections} the config lacks"
        unknown = [key for key in (*stage.flags.values(), *stage.keys) if key not in keys]
        assert not unknown, f"stage {stage.name} names config keys {unknown} that do not exist"


# ---------------------------------------------------------------- model parts


def part_key(key: str) -> str:
    """`section.key` of a model-part choice, in whichever config section holds it."""
    found = [section for section, kind in SECTION_TYPES.items() if key in {f.name for f in dataclasses.fields(kind)}]
    assert len(found) == 1, f"model/parts.py checks the choice {key!r}, found in config sections {found}"
    return f"{found[0]}.{key}"


@pytest.mark.parametrize("key", list(parts.CHOICES))
def test_each_model_part_choice_is_a_config_key_whose_default_is_registered(key):
    section, name = part_key(key).split(".")
    names = parts.CHOICES[key]
    default = getattr(SECTION_TYPES[section](), name)
    assert default in names, f"the default {section}.{name} = {default!r} is not one of {names}"
    check = config_field(section, name).metadata.get("check", ())
    if isinstance(check, tuple) and check:  # where the config states the choices too, they are the same
        assert_same_names(check, names, f"the check of {section}.{name}", f"model/parts.py CHOICES[{key!r}]")


@pytest.mark.parametrize(("key", "registry"), [
    ("encoder", parts.ENCODERS), ("pooling", parts.POOLINGS), ("head", parts.HEADS)])
def test_model_part_choices_are_their_registries(key, registry):
    assert tuple(parts.CHOICES[key]) == tuple(registry)
