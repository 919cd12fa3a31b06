"""One CLI convention: every command takes the common options, and each stage's command is built from its
table entry (shards, --resume) rather than written by hand."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from audiotokens.cli import main
from audiotokens.pipeline.stages import STAGES

COMMON = {"config_path", "workdir", "overrides", "verbose"}


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_takes_the_common_options(name):
    assert COMMON <= {param.name for param in main.commands[name].params}


@pytest.mark.parametrize("name", ["report", "export", "predict", "compare", "show", "status"])
def test_a_missing_config_file_is_named_by_any_command(name, tmp_path):
    arguments = [str(tmp_path)] if name in ("predict", "compare", "show") else []
    result = CliRunner().invoke(main, [name, "--config", str(tmp_path / "absent.toml"), *arguments])
    assert result.exit_code == 2
    assert f"config file {tmp_path / 'absent.toml'} does not exist" in result.output


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_stage_commands_follow_the_table(stage):
    params = {param.name for param in main.commands[stage.name].params}
    assert ("shard" in params) == stage.sharded
    assert ("resume" in params) == stage.resumable
    assert "strict" in params
