"""``ray up`` cluster-launcher YAML, checked against the schema Ray ships (``ray-schema.json``).

Ray's own launcher validates with ``jsonschema`` against that file; so does this module, then adds the
node-type consistency and the Ray version pin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from ._common import err, fmt_path, join, load_yaml
from .ray_pins import check_ray_version


def ray_launcher_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _jsonschema_errors(instance: Any, schema: Mapping, source: Any) -> None:
    """Raise one ValueError listing every schema violation with its field path."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    lines: list[str] = []
    for e in errors:
        field = fmt_path(e.absolute_path)
        if e.validator == "required" and isinstance(e.instance, dict):
            lines += [f"{join(field, m)}: required field is missing" for m in e.validator_value if m not in e.instance]
            continue
        problem = e.message if len(e.message) <= 300 else e.message[:300] + "..."
        lines.append(f"{field or '<top level>'}: {problem}")
    if lines:
        lines = list(dict.fromkeys(lines))
        raise ValueError(f"{source}: " + f"\n{source}: ".join(lines))


def validate_launcher_yaml(path: str | Path) -> dict:
    """Validate a ``ray up`` cluster YAML; return it."""
    p = Path(path)
    cfg = load_yaml(p)
    _jsonschema_errors(cfg, ray_launcher_schema(), p)
    types = cfg.get("available_node_types") or {}
    if types:
        head = cfg.get("head_node_type")
        if head is None:
            raise err(p, "head_node_type", "required when available_node_types is set")
        if head not in types:
            raise err(p, "head_node_type", f"{head!r} is not one of available_node_types {sorted(types)}")
        total_max = cfg.get("max_workers")
        for name, nt in types.items():
            lo, hi = nt.get("min_workers", 0), nt.get("max_workers")
            if hi is not None and lo > hi:
                raise err(p, f"available_node_types.{name}.min_workers", f"{lo} > max_workers {hi}")
            if total_max is not None and hi is not None and hi > total_max and name != head:
                raise err(p, f"available_node_types.{name}.max_workers", f"{hi} > cluster max_workers {total_max}")
    check_ray_version(cfg, p)
    return cfg
