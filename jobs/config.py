"""YAML job configs as dataclasses: unknown keys are errors, overrides come as ``a.b=value``.

Every job (`generate`, `train`, `serve`, `evaluate`, `demo`) describes its settings with a
dataclass; ``load_config`` fills it from a YAML file and command-line overrides so that a typo in a
config stops the job before any work, naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.common import deep_merge

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]!r}; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: list[str] | None, cls: type[T]) -> T:
    """Read ``path`` (optional), apply ``overrides`` and build ``cls``; unknown keys raise ConfigError."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = deep_merge(data, parse_overrides(overrides or []))
    return _build(cls, data, "")


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
