"""The JSON helpers every artifact is written and read with: numpy values, damaged files, cut lines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audiotokens.errors import UserError
from audiotokens.pipeline.files import (
    append_jsonl,
    read_json,
    read_json_or_none,
    read_jsonl,
    write_json,
    write_jsonl,
)


def test_numpy_values_and_paths_are_written_as_json_values(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"n": np.int64(3), "x": np.float32(0.5), "yes": np.bool_(True), "v": np.arange(2),
                      "where": Path("out/model")})
    assert path.read_text() == '{\n "n": 3,\n "x": 0.5,\n "yes": true,\n "v": [\n  0,\n  1\n ],\n "where": "out/model"\n}\n'
    assert read_json(path) == {"n": 3, "x": 0.5, "yes": True, "v": [0, 1], "where": "out/model"}


def test_a_damaged_or_missing_file_is_one_line_or_none(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"cut": ')
    with pytest.raises(UserError, match="a.json is not valid JSON .*; run it again") as caught:
        read_json(path, fix="run it again")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="b.json not found \\(the report\\)"):
        read_json(tmp_path / "b.json", "the report")
    assert read_json_or_none(path) is None and read_json_or_none(tmp_path / "b.json") is None


def test_json_lines_skip_a_cut_line_or_name_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    append_jsonl(path, {"epoch": 3, "loss": np.float64(0.25)})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "loss": 0.25}\n'
    with open(path, "a") as handle:
        handle.write('\n{"epoch": 4, "lo')  # a blank line, then a line cut by a killed writer
    assert [row["epoch"] for row in read_jsonl(path)] == [1, 2, 3]
    with pytest.raises(UserError, match="metrics.jsonl line 5 is not valid JSON; train again"):
        read_jsonl(path, fix="train again")
    assert read_jsonl(tmp_path / "absent.jsonl") == []
