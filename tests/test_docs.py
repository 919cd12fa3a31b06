"""The docs agree with the code: a short README, every page in the site, a current configuration reference,
tables that list the names the code has, and a site that builds strictly."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from audiotokens import config
from audiotokens.data import sources
from audiotokens.features import spectrogram
from audiotokens.model import parts
from audiotokens.pipeline import stages
from audiotokens.tokens import quantizer_kinds

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts/config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_reference = load_generator()


# ---------------------------------------------------------------- the front door and the site


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def nav_pages(nav) -> list[str]:
    """Every page named in an mkdocs nav, however deeply nested."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def test_every_page_is_in_the_site_navigation():
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(site["nav"])
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(listed) == len(set(listed)), "a page is listed twice"


def test_readme_links_into_docs_point_at_pages():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links into docs/"
    assert [target for target in targets if not (ROOT / target).is_file()] == []


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "configuration.html").is_file()


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


# ---------------------------------------------------------------- the docs' tables list the code's names
# One function per kind of thing: where the code keeps its names today.


def tokenizer_names() -> list[str]:
    return list(quantizer_kinds.KINDS)


def frame_kind_names() -> list[str]:
    return list(spectrogram.FRAME_KINDS)


def data_source_names() -> list[str]:
    return list(sources.SOURCES)


def stage_names() -> list[str]:
    return list(stages.NAMES)


def input_names() -> list[str]:
    return list(parts.INPUTS)


def token_embedding_names() -> list[str]:
    return list(parts.TOKEN_EMBEDDINGS)


def encoder_names() -> list[str]:
    return list(parts.ENCODERS)


def pooling_names() -> list[str]:
    return list(parts.POOLINGS)


def head_names() -> list[str]:
    return list(parts.HEADS)


TABLES = {  # the name after `<!-- names: ... -->` above a table in docs/ -> the code's names
    "tokenizers": tokenizer_names,
    "frame kinds": frame_kind_names,
    "data sources": data_source_names,
    "stages": stage_names,
    "inputs": input_names,
    "token embeddings": token_embedding_names,
    "encoders": encoder_names,
    "poolings": pooling_names,
    "heads": head_names,
}
MARKER = re.compile(r"<!-- names: (.+?) -->\n((?:\|.*\n?)+)")


def table_names(text: str) -> dict[str, list[str]]:
    """Each marked table's names: the first code span of the first cell of every row below the header."""
    found: dict[str, list[str]] = {}
    for kind, table in MARKER.findall(text):
        assert kind not in found, f"two tables of {kind}"
        rows = table.strip().splitlines()[2:]
        found[kind] = [re.search(r"`([^`]+)`", row.split("|")[1]).group(1) for row in rows]
    return found


def documented_tables() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        tables = table_names(page.read_text(encoding="utf-8"))
        assert not set(tables) & set(found), f"{page.name} repeats a table of {set(tables) & set(found)}"
        found.update(tables)
    return found


def test_every_kind_of_thing_has_one_table():
    assert sorted(documented_tables()) == sorted(TABLES)


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_a_docs_table_lists_the_names_the_code_has(kind):
    assert documented_tables()[kind] == TABLES[kind]()


def test_the_table_reader_sees_every_row():
    """The reader finds each row's name, so the comparisons above can fail."""
    text = ("<!-- names: things -->\n| thing | what |\n|---|---|\n| `a` (default) | x |\n| `b` | `c` |\n\n"
            "| `not` | marked |\n")
    assert table_names(text) == {"things": ["a", "b"]}
