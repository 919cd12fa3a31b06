"""Complete configuration files: a trial's (the base configuration with the trial's values) and best.toml.

A trial's configuration is written out in full and then loaded back as `audiotokens run --config` loads a
file, so what a trial ran with, what `status` in its workdir judges against and what best.toml hands on are
one and the same file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..pipeline.files import atomic_path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def render_config(table: dict[str, dict[str, Any]], header: str = "", marked: dict[str, str] | None = None) -> str:
    """TOML text of a full configuration; `marked` puts a comment after the named section.key lines."""
    marked = marked or {}
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in table.items():
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            note = marked.get(f"{section}.{key}")
            lines.append(f"{key} = {toml_value(value)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines).lstrip("\n") + "\n"


def with_values(base: Config, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The base configuration's table with `section.key` values set (unknown keys kept, for load to refuse)."""
    table = base.to_dict()
    for name, value in values.items():
        section, _, key = name.partition(".")
        table.setdefault(section, {})[key] = value
    return table


def config_with(base: Config, values: dict[str, Any], path: Path, workdir: str | Path,
                header: str = "", fixed: dict[str, Any] | None = None) -> Config:
    """Write the base configuration with `values` (marked tuned) and `fixed` (unmarked: a k-fold trial's
    split.fold) to `path` and load it back, checked as any config file."""
    table = with_values(base, {**values, **(fixed or {})})
    text = render_config(table, header, marked={key: "tuned" for key in values})
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return load_config(path, workdir=workdir)
