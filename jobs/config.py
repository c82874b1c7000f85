"""Typed job configs: one mechanism for every `medlm` job.

Each job describes its settings with one class (a dataclass, or a pydantic model) whose field types
say what each key holds. :func:`load_config` builds it from four layers, each later one winning:

1. the class's defaults;
2. the YAML file (``--config``), which holds only what differs from the defaults;
3. ``key=value`` overrides on the command line (``a.b=value`` reaches into a section; values are
   YAML, so ``sources=[a.jsonl,b.jsonl]`` is a list and ``export_dir=null`` is None);
4. command-line flags (``--checkpoint DIR``, ``--port 8000``, ...), the most specific way to say it.

Pydantic then converts every value to its declared type (``lr=3e-4`` is a float, ``port="8000"`` an
int) and refuses what cannot be converted, unknown keys, and values out of range (``Field(ge=...)``
annotations, then the class's own ``check()`` when it has one). Every refusal is a
:class:`ConfigError` whose message names the key, the value and what was expected, e.g.
``max_steps: expected an integer, got 'abc'``; jobs print it and exit 2 before Ray starts.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, TypeVar

import pydantic
import yaml

T = TypeVar("T")

# Unknown keys are errors; a number given for a string field (run_id=2024) stays that string.
_STRICT = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True)

_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "mapping_type": "a mapping",
    "dataclass_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}


class ConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# layers


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[x,y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values read as YAML)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself; the type check below decides
        _set_path(tree, key.strip(), value)
    return tree


def merge(base: Mapping, extra: Mapping) -> dict:
    """``extra`` over ``base``, section by section."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def read_yaml(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


# ------------------------------------------------------------------------------------------------
# typing


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += ("." if out else "") + part
        # anything else is a union member's type name in pydantic's location: not a key
    return out


def _describe(err: dict, cls: type, where: str) -> str:
    key = _field_path(err.get("loc", ())) or "<config>"
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown config key {key!r}{where}; known keys: {', '.join(known_keys(cls, key))}"
    if kind == "missing":
        return f"{key}: required{where}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{key}: expected a value {bounds[kind]} {limit}, got {value!r}{where}"
    if kind == "literal_error":
        return f"{key}: expected {ctx.get('expected')}, got {value!r}{where}"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"{key}: expected {expected}, got {value!r}{where}"
    return f"{key}: {err.get('msg')}, got {value!r}{where}"


def known_keys(cls: type, dotted: str = "") -> list[str]:
    """The keys of the section holding ``dotted`` (the top level for a plain key)."""
    import typing

    for part in dotted.split(".")[:-1]:
        hint = typing.get_type_hints(cls).get(part) if isinstance(cls, type) else None
        is_model = isinstance(hint, type) and issubclass(hint, pydantic.BaseModel)
        if hint is None or not (dataclasses.is_dataclass(hint) or is_model):
            return []
        cls = hint
    if dataclasses.is_dataclass(cls):
        return sorted(f.name for f in dataclasses.fields(cls))
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        return sorted(cls.model_fields)
    return []


def _make_strict(cls: type) -> None:
    """Give a dataclass (and the dataclasses in its fields) pydantic's strict-key config.

    Pydantic reads ``__pydantic_config__`` from a stdlib dataclass; a class that sets its own keeps it.
    """
    import typing

    if not dataclasses.is_dataclass(cls) or "__pydantic_config__" in vars(cls):
        return
    cls.__pydantic_config__ = _STRICT
    for hint in typing.get_type_hints(cls).values():
        for inner in (hint, *typing.get_args(hint)):
            if isinstance(inner, type):
                _make_strict(inner)


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    _make_strict(cls)  # a pydantic model carries its own config
    return pydantic.TypeAdapter(cls)


def build(cls: type[T], data: Mapping, where: str = "") -> T:
    """Validate ``data`` into ``cls`` (types converted, ranges checked, unknown keys refused).

    ``where`` (e.g. ``" in app"``) is appended to each message. The class's ``check()`` runs last.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config{where} must be a mapping, got {type(data).__name__}")
    try:
        cfg = _adapter(cls).validate_python(dict(data))
    except pydantic.ValidationError as e:
        raise ConfigError("\n".join(_describe(err, cls, where) for err in e.errors())) from None
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            cfg = check() or cfg
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None, cls: type[T],
                flags: Mapping[str, Any] | None = None) -> T:
    """Defaults < YAML at ``path`` < ``key=value`` ``overrides`` < ``flags``; see the module docstring."""
    data = merge(read_yaml(path), parse_overrides(list(overrides or [])))
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(data, key, value)
    return build(cls, data)


def config_to_dict(cfg) -> dict:
    if isinstance(cfg, pydantic.BaseModel):
        return cfg.model_dump()
    return dataclasses.asdict(cfg)
