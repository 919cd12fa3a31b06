"""The search space of `audiotokens tune`: a TOML file whose [space] table gives config keys their candidates.

    [space]
    "cluster.n_clusters" = [128, 256, 512]                          # choices
    "train.learning_rate" = {low = 1e-4, high = 3e-3, log = true}   # a range; `step = …` optional
    "model.num_layers" = {low = 2, high = 6}                        # an int key draws ints

`[space.cluster]` tables (or unquoted dotted keys) name keys too. Every candidate (each choice, both ends of
a range) is checked against the base configuration exactly as a config file is, so a bad space fails in
one line, naming the file and the key, before any trial runs. Keys of [data], [split], [evaluate] and
[baseline] are refused: every trial is scored on the same validation clips by the train stage.
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..config import SECTIONS, Config
from ..errors import UserError
from .configs import config_with

TUNABLE = ("spectrogram", "cluster", "tokenize", "pretrain", "model", "train")  # sections a trial may change
RANGE_FIELDS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class Choice:
    key: str
    values: tuple[Any, ...]

    def suggest(self, trial) -> Any:
        return trial.suggest_categorical(self.key, list(self.values))

    def describe(self) -> str:
        return f"{self.key} in {list(self.values)}"

    def holds(self, value: Any) -> bool:
        return any(isinstance(value, bool) == isinstance(choice, bool) and value == choice for choice in self.values)


@dataclass(frozen=True)
class Range:
    key: str
    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None
    integer: bool = False  # the key is an int key: ints are drawn

    def suggest(self, trial) -> int | float:
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        scale = ", log" if self.log else f", step {self.step}" if self.step else ""
        return f"{self.key} in [{self.low}, {self.high}{scale}]"

    def holds(self, value: Any) -> bool:
        """Whether the range can draw `value` (within its ends and, with a step, on its grid)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return math.isclose(steps, round(steps), abs_tol=1e-9)


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Choice | Range, ...]

    def suggest(self, trial) -> dict[str, Any]:
        """The values of one trial, drawn by the study's sampler."""
        return {param.key: param.suggest(trial) for param in self.params}

    @property
    def keys(self) -> list[str]:
        return [param.key for param in self.params]

    def point_of(self, config: Config) -> tuple[dict[str, Any], list[str]]:
        """The configuration's own values of the space's keys, and those of them the space cannot draw (each
        as `key = value`): a configuration is a point of the space when the second list is empty."""
        values, outside = {}, []
        for param in self.params:
            section, _, name = param.key.partition(".")
            values[param.key] = value = getattr(getattr(config, section), name)
            if not param.holds(value):
                outside.append(f"{param.key} = {value!r}")
        return values, outside

    def digest(self) -> str:
        """Identifies the space a study was started with (a resumed study must keep it)."""
        blob = json.dumps([{"kind": type(p).__name__, **asdict(p)} for p in self.params], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_space(path: str | Path, base: Config) -> SearchSpace:
    """Read and check a space file against the base configuration; one-line UserError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path} does not exist")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"search space {path} is not valid TOML: {exc}") from None
    others = [name for name in table if name != "space"]
    if others:
        raise UserError(f"{path}: unexpected table or key '{others[0]}'; put the keys to tune under [space]")
    entries = _entries(path, table.get("space", {}))
    if not entries:
        raise UserError(f'{path}: [space] names no keys; add e.g. "train.learning_rate" = {{low = 1e-4, '
                        'high = 3e-3, log = true}')
    with tempfile.TemporaryDirectory() as scratch:
        params = tuple(_param(path, key, spec, base, Path(scratch) / "check.toml") for key, spec in entries)
    return SearchSpace(path, params)


def _entries(path: Path, space: Any) -> list[tuple[str, Any]]:
    """(section.key, spec) pairs from quoted "section.key" entries and [space.section] tables alike."""
    if not isinstance(space, dict):
        raise UserError(f"{path}: 'space' must be a table ([space])")
    entries: list[tuple[str, Any]] = []
    for name, spec in space.items():
        if "." in name:
            entries.append((name, spec))
        elif isinstance(spec, dict) and not set(spec) & set(RANGE_FIELDS):
            entries += [(f"{name}.{key}", value) for key, value in spec.items()]
        else:
            raise UserError(f"{path}: '{name}' is not a config key; name keys as \"section.key\" "
                            "(e.g. \"cluster.n_clusters\")")
    seen: set[str] = set()
    for key, _ in entries:
        if key in seen:
            raise UserError(f"{path}: '{key}' is given twice")
        seen.add(key)
    return entries


def _param(path: Path, key: str, spec: Any, base: Config, scratch: Path) -> Choice | Range:
    section = key.split(".", 1)[0]
    if section in SECTIONS and section not in TUNABLE:
        raise UserError(f"{path}: '{key}' cannot be tuned: every trial is trained and scored on the same split "
                        f"by the train stage; tune keys of {', '.join(f'[{s}]' for s in TUNABLE)}")
    if isinstance(spec, list):
        param: Choice | Range = _choice(path, key, spec)
    elif isinstance(spec, dict):
        param = _range(path, key, spec, base, scratch)
    else:
        raise UserError(f"{path}: '{key}' = {spec!r}: give a list of choices ([a, b]) or a range "
                        "({low = …, high = …})")
    candidates = param.values if isinstance(param, Choice) else (param.low, param.high)
    for value in candidates:
        _check_value(path, key, value, base, scratch)
    return param


def _choice(path: Path, key: str, values: list[Any]) -> Choice:
    if not values:
        raise UserError(f"{path}: '{key}' has no choices; list at least one value")
    for value in values:
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{path}: '{key}': choice {value!r} is not a single value (string, number or boolean)")
    return Choice(key, tuple(values))


def _range(path: Path, key: str, spec: dict[str, Any], base: Config, scratch: Path) -> Range:
    where = f"{path}: '{key}'"
    unknown = [name for name in spec if name not in RANGE_FIELDS]
    if unknown:
        raise UserError(f"{where}: unknown field '{unknown[0]}' in its range; a range has {', '.join(RANGE_FIELDS)}")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    section, _, name = key.partition(".")
    if section not in SECTIONS or not hasattr(getattr(base, section), name):
        _check_value(path, key, low, base, scratch)  # an unknown or moved key: refused in config's words
    kind = type(getattr(getattr(base, section), name))
    if kind not in (int, float):
        raise UserError(f"{where} is a {kind.__name__} key: list its choices instead of a range")
    numbers = [value for value in (low, high, step) if value is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
        raise UserError(f"{where}: low, high and step must be finite numbers, got {spec}")
    if kind is int and not all(isinstance(value, int) for value in numbers):
        raise UserError(f"{where} is an int key: give low, high (and step) as integers, got {spec}")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (log or step <= 0):
        raise UserError(f"{where}: step must be positive and cannot go with log = true, got step = {step}")
    return Range(key, low, high, log, step, integer=kind is int)


def _check_value(path: Path, key: str, value: Any, base: Config, scratch: Path) -> None:
    """The base configuration with this one value, loaded as a config file is (types, checks, cross-checks)."""
    try:
        config_with(base, {key: value}, scratch, base.workdir)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
