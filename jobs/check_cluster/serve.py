"""``serve deploy`` configs, checked by Ray Serve's own pydantic models.

``ServeDeploySchema`` ignores unknown keys, so a typo (``max_ongoing_request``) would deploy the
default silently; this module refuses keys the models do not declare, validates each
``autoscaling_config`` with ``AutoscalingConfig`` (the schema accepts any dict there) and, on request,
imports every application's ``import_path``.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import pydantic

from ._common import REPO_ROOT, err, join, load_yaml, pydantic_error


def import_path_target(import_path: str) -> tuple[str, str]:
    """Split a Serve import path (``pkg.mod:attr`` or ``pkg.mod.attr``) into (module, attribute)."""
    if ":" in str(import_path):
        module, _, attr = import_path.partition(":")
    else:
        module, _, attr = str(import_path).rpartition(".")
    if not module or not attr or not re.fullmatch(r"[A-Za-z_][\w.]*", module) or not attr.isidentifier():
        raise ValueError(f"malformed import path {import_path!r}; expected 'package.module:attribute'")
    return module, attr


def _unknown_keys(d: Any, model: type[pydantic.BaseModel], source: Any, field: str) -> None:
    if not isinstance(d, Mapping):
        return
    allowed = set()
    for name, f in model.model_fields.items():
        allowed.add(name)
        if f.alias:
            allowed.add(f.alias)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise err(
            source,
            join(field, str(unknown[0])),
            f"unknown key (Ray would silently ignore it); allowed keys: {', '.join(sorted(allowed))}",
        )


def _check_import(module: str, attr: str, source: Any, field: str) -> Any:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise err(source, field, f"module {module!r} not found (import path {module}:{attr})") from e
        raise err(source, field, f"importing {module!r} failed: missing dependency {e.name!r} ({e})") from e
    except Exception as e:
        raise err(source, field, f"importing {module!r} failed: {type(e).__name__}: {e}") from e
    if not hasattr(mod, attr):
        raise err(source, field, f"module {module!r} has no attribute {attr!r}")
    return getattr(mod, attr)


def validate_serve_dict(cfg: Any, source: Any = "<serve config>", *, check_imports: bool = False, prefix: str = ""):
    """Validate a parsed ``serve deploy`` config; return the ``ServeDeploySchema`` object."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    if not isinstance(cfg, Mapping):
        raise err(source, prefix, f"expected a mapping, got {type(cfg).__name__}")
    if "applications" not in cfg:
        raise err(source, join(prefix, "applications"), "required field is missing (a multi-application config)")
    try:
        schema = ServeDeploySchema.model_validate(dict(cfg))
    except pydantic.ValidationError as e:
        raise pydantic_error(e, source, prefix) from e

    _unknown_keys(cfg, ServeDeploySchema, source, prefix)
    _unknown_keys(cfg.get("http_options"), HTTPOptionsSchema, source, join(prefix, "http_options"))
    apps = cfg.get("applications") or []
    if not apps:
        raise err(source, join(prefix, "applications"), "at least one application is required")
    for i, app in enumerate(apps):
        a_field = join(prefix, f"applications[{i}]")
        _unknown_keys(app, ServeApplicationSchema, source, a_field)
        for j, dep in enumerate(app.get("deployments") or []):
            d_field = join(a_field, f"deployments[{j}]")
            _unknown_keys(dep, DeploymentSchema, source, d_field)
            _unknown_keys(dep.get("ray_actor_options"), RayActorOptionsSchema, source, join(d_field, "ray_actor_options"))
            auto = dep.get("autoscaling_config")
            if isinstance(auto, Mapping):
                a_cfg = join(d_field, "autoscaling_config")
                _unknown_keys(auto, AutoscalingConfig, source, a_cfg)
                try:
                    AutoscalingConfig(**auto)
                except pydantic.ValidationError as e:
                    raise pydantic_error(e, source, a_cfg) from e
                if dep.get("num_replicas") not in (None, "auto"):
                    raise err(source, join(d_field, "num_replicas"), "cannot be set together with autoscaling_config")
        try:
            module, attr = import_path_target(app.get("import_path"))
        except ValueError as e:
            raise err(source, join(a_field, "import_path"), str(e)) from None
        if check_imports:
            _check_import(module, attr, source, join(a_field, "import_path"))
    return schema


def validate_serve_config(path: str | Path, *, check_imports: bool = False):
    """Validate a ``serve deploy`` YAML file; return the parsed ``ServeDeploySchema``.

    ``check_imports=True`` also imports every application's ``import_path`` (module and attribute).
    """
    return validate_serve_dict(load_yaml(path), Path(path), check_imports=check_imports)
