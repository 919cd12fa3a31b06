"""The docs agree with the code: the configuration reference is the one the config dataclasses generate."""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from audiotokens import config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts/config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_reference = load_generator()


# ---------------------------------------------------------------- the generated configuration reference


def test_the_configuration_reference_is_current():
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_reference.render(), "run: python scripts/config_reference.py"


def test_the_reference_lists_every_key_of_every_section_with_its_default():
    text = config_reference.render()
    for name in config.SECTIONS:
        section = text.split(f"## `[{name}]`\n", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(type(getattr(config.Config(), name))):
            row = next(line for line in section.splitlines() if line.startswith(f"| `{f.name}` |"))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f"`{config_reference.toml_value(default)}`" in row


def test_check_exits_1_when_the_page_differs(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text("stale\n")
    assert config_reference.main(["--check", "--out", str(page)]) == 1
    assert config_reference.main(["--out", str(page)]) == 0
    assert config_reference.main(["--check", "--out", str(page)]) == 0


@dataclass
class Commented:
    plain: int = 1
    explained: str = "a"  # what it is
    # a group of keys
    heads_a_group: float = 0.5  # its own words
    # the comment above a key
    # over two lines
    described_above: bool = True
    multi_line: tuple = (
        1, 2)  # after the closing bracket


def test_comments_are_read_next_to_each_field():
    assert config_reference.field_comments(Commented) == {
        "plain": ("", ""),
        "explained": ("", "what it is"),
        "heads_a_group": ("a group of keys", "its own words"),
        "described_above": ("", "the comment above a key over two lines"),
        "multi_line": ("", "after the closing bracket"),
    }


def test_a_new_section_needs_no_change_to_the_generator(monkeypatch):
    @dataclass
    class ExtraConfig:
        size: int = config.setting(3, check="positive")  # how big

    @dataclass
    class Extended(config.Config):
        extra: ExtraConfig = dataclasses.field(default_factory=ExtraConfig)

    monkeypatch.setattr(config_reference.config, "Config", Extended)
    monkeypatch.setattr(config_reference.config, "SECTIONS", [*config.SECTIONS, "extra"])
    section = config_reference.render().split("## `[extra]`\n", 1)[1]
    assert "| `size` | int | `3` |  | positive | how big |" in section
