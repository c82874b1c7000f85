"""Shared plumbing of the cluster validators: error messages, field paths and YAML loading.

Every validator raises ``ValueError`` whose lines read ``<file>: <field>: <problem>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import pydantic
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO_ROOT / "cluster"


def err(source: Any, field: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {field or '<top level>'}: {problem}")


def fmt_path(parts: Iterable[Any]) -> str:
    """``("spec", "groups", 0, "replicas")`` -> ``spec.groups[0].replicas``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def join(prefix: str, field: str) -> str:
    if not prefix:
        return field
    if not field:
        return prefix
    return prefix + ("" if field.startswith("[") else ".") + field


def walk(obj: Any, path: tuple = ()):
    """Yield ``(path, key, value)`` for every mapping entry, depth first."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, path + (i,))


def load_yaml(path: str | Path, *, multi: bool = False) -> Any:
    """Read a YAML file whose documents are mappings; one document unless ``multi``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise err(p, "", f"cannot read file ({e})") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise err(p, "", f"not valid YAML ({e})") from e
    if not docs:
        raise err(p, "", "file is empty")
    for d in docs:
        if not isinstance(d, dict):
            raise err(p, "", f"expected a mapping at the top level, got {type(d).__name__}")
    if multi:
        return docs
    if len(docs) > 1:
        raise err(p, "", f"expected one YAML document, found {len(docs)}")
    return docs[0]


def load_sub_yaml(text: Any, source: Any, field: str) -> Any:
    """Parse a YAML string embedded in a manifest (``runtimeEnvYAML``, ``serveConfigV2``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise err(source, field, f"not valid YAML ({e})") from e


def pydantic_error(exc: pydantic.ValidationError, source: Any, prefix: str = "") -> ValueError:
    """One ``ValueError`` with a ``<file>: <field>: <problem>`` line per pydantic error."""
    lines: list[str] = []
    for e in exc.errors():
        field = join(prefix, fmt_path(e.get("loc", ())))
        if e.get("type") == "missing":
            line = f"{source}: {field}: required field is missing"
        else:
            line = f"{source}: {field or '<top level>'}: {e.get('msg')} (got {e.get('input')!r})"
        if line not in lines:
            lines.append(line)
    return ValueError("\n".join(lines) or f"{source}: {prefix or '<top level>'}: {exc}")
