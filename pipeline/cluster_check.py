"""Validators for the data files under ``cluster/`` (and for job start-up checks).

Every validator raises ``ValueError`` whose message reads ``<file>: <field>: <problem>``, so a broken
manifest is reported before a cluster is requested, not after a GPU node has been paid for.

- :func:`validate_serve_config`   -- ``serve deploy`` YAML: Ray's ``ServeDeploySchema`` plus a strict
  unknown-key check (Ray's pydantic models silently ignore typos) and ``AutoscalingConfig`` validation
  (the schema accepts any dict there); optionally imports every ``import_path``.
- :func:`validate_launcher_yaml`  -- ``ray up`` YAML against Ray's own ``ray/autoscaler/ray-schema.json``.
- :func:`validate_kuberay`        -- KubeRay ``ray.io/v1`` RayJob / RayService / RayCluster: a compact
  JSON schema of the fields that matter, replica bounds, GPU requests == limits, ``runtimeEnvYAML`` as a
  Ray ``RuntimeEnv``, ``serveConfigV2`` as a ``ServeDeploySchema``.
- :func:`validate_runtime_env`    -- ``runtime_env`` YAML for ``ray job submit --runtime-env``.
- :func:`validate_deepspeed_config` -- ZeRO JSON: explicit values (no ``"auto"``), stage, known keys,
  and DeepSpeed's own ``DeepSpeedConfig`` parse when DeepSpeed is installed.
- :func:`check_ray_version`       -- ``rayVersion`` and ``rayproject/ray`` image tags == ``ray.__version__``.
- :func:`check_gpu_request`       -- a config asking for GPUs on a cluster/machine without them.

``python -m pipeline.cluster_check [FILES...]`` validates the given files (default: all of ``cluster/``).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO_ROOT / "cluster"

# Images whose tag encodes the Ray version (rayproject/ray:2.60.0-py311-gpu).
RAY_IMAGE_REPOS = ("rayproject/ray", "rayproject/ray-ml", "rayproject/ray-llm")
_IMAGE_KEYS = ("image", "head_image", "worker_image")

__all__ = [
    "validate_serve_config",
    "validate_serve_dict",
    "validate_launcher_yaml",
    "validate_kuberay",
    "validate_runtime_env",
    "validate_deepspeed_config",
    "check_ray_version",
    "check_gpu_request",
    "import_path_target",
    "validate_all",
]


# --------------------------------------------------------------------------------------------------
# helpers


def _err(source: Any, field: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {field or '<top level>'}: {problem}")


def _fmt_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _join(prefix: str, field: str) -> str:
    if not prefix:
        return field
    if not field:
        return prefix
    return prefix + ("" if field.startswith("[") else ".") + field


def _load_yaml(path: str | Path, *, multi: bool = False) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise _err(p, "", f"cannot read file ({e})") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise _err(p, "", f"not valid YAML ({e})") from e
    if not docs:
        raise _err(p, "", "file is empty")
    for d in docs:
        if not isinstance(d, dict):
            raise _err(p, "", f"expected a mapping at the top level, got {type(d).__name__}")
    if multi:
        return docs
    if len(docs) > 1:
        raise _err(p, "", f"expected one YAML document, found {len(docs)}")
    return docs[0]


def _jsonschema_errors(instance: Any, schema: Mapping, source: Any, prefix: str = "") -> None:
    """Validate with jsonschema; raise one ValueError listing every problem with its field path."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return
    lines = []
    for e in errors:
        field = _fmt_path(e.absolute_path)
        if e.validator == "required" and isinstance(e.instance, dict):
            missing = [r for r in e.validator_value if r not in e.instance]
            for m in missing:
                lines.append(f"{_join(prefix, _join(field, m))}: required field is missing")
            continue
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            lines.append(f"{_join(prefix, field)}: {e.message}")
            continue
        problem = e.message
        if len(problem) > 300:
            problem = problem[:300] + "..."
        lines.append(f"{_join(prefix, field) or '<top level>'}: {problem}")
    # Deduplicate, keep order.
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    raise ValueError(f"{source}: " + f"\n{source}: ".join(seen))


def _pydantic_errors(exc: Exception, source: Any, prefix: str) -> ValueError:
    errs = getattr(exc, "errors", None)
    lines = []
    if callable(errs):
        try:
            for e in errs():
                field = _join(prefix, _fmt_path(e.get("loc", ())))
                lines.append(f"{source}: {field or '<top level>'}: {e.get('msg')} (got {e.get('input')!r})")
        except Exception:  # pragma: no cover - unexpected pydantic shape
            lines = []
    if not lines:
        lines = [f"{source}: {prefix or '<top level>'}: {exc}"]
    return ValueError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Ray version


def _installed_ray_version() -> str:
    import ray

    return ray.__version__


def _image_tag(image: str) -> tuple[str, str | None]:
    """Split ``repo[:tag][@digest]`` into (repo, tag); a registry port is not a tag."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, None


def _walk(obj: Any, path: tuple = ()):  # yields (path, key, value) for every mapping entry
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield path, k, v
            yield from _walk(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (i,))


def check_ray_version(manifest: Mapping | str | Path, source: Any = None, *, expected: str | None = None) -> str:
    """Check that every ``rayVersion`` and every ``rayproject/ray*`` image tag equals the installed Ray.

    ``manifest`` is a parsed KubeRay / launcher dict or a path to one (multi-document YAML allowed).
    Raises ``ValueError`` naming the file, the field, the found and the installed version; also when
    nothing in the manifest pins a Ray version at all, or a Ray image is unpinned (no tag / ``latest``).
    Returns the installed version.
    """
    expected = expected or _installed_ray_version()
    if isinstance(manifest, (str, Path)):
        source = source or manifest
        docs = _load_yaml(manifest, multi=True)
    else:
        docs = [manifest]
    source = source or "<manifest>"
    problems: list[str] = []
    pinned = 0
    for d_i, doc in enumerate(docs):
        for path, key, value in _walk(doc):
            field = _fmt_path(path + (key,))
            if len(docs) > 1:
                field = f"document[{d_i}].{field}"
            if key == "rayVersion":
                pinned += 1
                if str(value) != expected:
                    problems.append(
                        f"{field}: rayVersion {value!r} does not match the installed ray.__version__ {expected!r}"
                    )
            elif key in _IMAGE_KEYS and isinstance(value, str):
                repo, tag = _image_tag(value)
                if repo not in RAY_IMAGE_REPOS and not repo.endswith(tuple("/" + r for r in RAY_IMAGE_REPOS)):
                    continue  # a custom image: its Ray version cannot be read from the tag
                pinned += 1
                if tag is None or tag == "latest" or tag.startswith("nightly"):
                    problems.append(
                        f"{field}: image {value!r} is not pinned to a Ray version; use "
                        f"{repo}:{expected}-py311-gpu (installed ray.__version__ is {expected!r})"
                    )
                elif not (tag == expected or tag.startswith(expected + "-")):
                    problems.append(
                        f"{field}: image tag {tag!r} of {value!r} does not match the installed "
                        f"ray.__version__ {expected!r}"
                    )
    if pinned == 0:
        problems.append(
            f"<top level>: nothing pins the Ray version (no rayVersion, no rayproject/ray image); "
            f"installed ray.__version__ is {expected!r}"
        )
    if problems:
        raise ValueError("\n".join(f"{source}: {p}" for p in problems))
    return expected


# --------------------------------------------------------------------------------------------------
# GPUs


def check_gpu_request(num_gpus: float | int | None, source: Any = "config", *, allow_autoscaling: bool = False) -> float:
    """Raise if ``num_gpus`` > 0 but no GPU is there to run on.

    Connected to Ray (``ray.is_initialized()``): counts ``ray.cluster_resources()["GPU"]``. Not connected:
    counts ``torch.cuda.device_count()``. With ``allow_autoscaling=True`` (a cluster whose autoscaler adds
    GPU nodes on demand) a shortfall is not an error. Returns the number of GPUs found.
    """
    if num_gpus is None:
        return 0.0
    try:
        wanted = float(num_gpus)
    except (TypeError, ValueError):
        raise _err(source, "num_gpus", f"must be a number, got {num_gpus!r}") from None
    if wanted < 0:
        raise _err(source, "num_gpus", f"must be >= 0, got {num_gpus!r}")
    have = 0.0
    where = ""
    try:
        import ray

        connected = ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a hard dependency
        connected = False
    if connected:
        have = float(ray.cluster_resources().get("GPU", 0))
        where = "the connected Ray cluster (ray.cluster_resources())"
    else:
        import torch

        have = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
        where = "this machine (torch.cuda; not connected to Ray)"
    if wanted == 0 or allow_autoscaling:
        return have
    if have == 0:
        raise _err(
            source,
            "num_gpus",
            f"asks for {num_gpus:g} GPU(s) but {where} has none; set num_gpus to 0 (use_gpu: false) to run on "
            f"CPU, or start a GPU cluster (cluster/launcher/, cluster/kuberay/)",
        )
    if have < wanted:
        raise _err(
            source,
            "num_gpus",
            f"asks for {num_gpus:g} GPU(s) but {where} has only {have:g}; the job would wait forever for resources",
        )
    return have


# --------------------------------------------------------------------------------------------------
# Serve


def import_path_target(import_path: str) -> tuple[str, str]:
    """Split a Serve import path (``pkg.mod:attr`` or ``pkg.mod.attr``) into (module, attribute)."""
    if ":" in import_path:
        module, _, attr = import_path.partition(":")
    else:
        module, _, attr = import_path.rpartition(".")
    if not module or not attr or not re.fullmatch(r"[A-Za-z_][\w.]*", module) or not attr.isidentifier():
        raise ValueError(f"malformed import path {import_path!r}; expected 'package.module:attribute'")
    return module, attr


def _serve_models():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    return ServeDeploySchema, ServeApplicationSchema, DeploymentSchema, HTTPOptionsSchema, RayActorOptionsSchema, AutoscalingConfig


def _unknown_keys(d: Any, model, source, field: str) -> None:
    if not isinstance(d, Mapping):
        return
    allowed = set()
    for name, f in model.model_fields.items():
        allowed.add(name)
        if getattr(f, "alias", None):
            allowed.add(f.alias)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(
            source,
            _join(field, str(unknown[0])),
            f"unknown key (Ray would silently ignore it); allowed keys: {', '.join(sorted(allowed))}",
        )


def validate_serve_dict(cfg: Any, source: Any = "<serve config>", *, check_imports: bool = False, prefix: str = ""):
    """Validate a parsed ``serve deploy`` config; return the ``ServeDeploySchema`` object."""
    SDS, SAS, DS, HOS, RAOS, ASC = _serve_models()
    if not isinstance(cfg, Mapping):
        raise _err(source, prefix, f"expected a mapping, got {type(cfg).__name__}")
    if "applications" not in cfg:
        raise _err(source, _join(prefix, "applications"), "required field is missing (a multi-application config)")
    try:
        schema = SDS.model_validate(dict(cfg))
    except Exception as e:  # pydantic.ValidationError is a ValueError subclass
        raise _pydantic_errors(e, source, prefix) from e

    # Strict keys: ServeDeploySchema ignores unknown fields, so a typo would deploy defaults.
    _unknown_keys(cfg, SDS, source, prefix)
    _unknown_keys(cfg.get("http_options"), HOS, source, _join(prefix, "http_options"))
    apps = cfg.get("applications") or []
    if not apps:
        raise _err(source, _join(prefix, "applications"), "at least one application is required")
    for i, app in enumerate(apps):
        a_field = _join(prefix, f"applications[{i}]")
        _unknown_keys(app, SAS, source, a_field)
        for j, dep in enumerate(app.get("deployments") or []):
            d_field = _join(a_field, f"deployments[{j}]")
            _unknown_keys(dep, DS, source, d_field)
            _unknown_keys(dep.get("ray_actor_options"), RAOS, source, _join(d_field, "ray_actor_options"))
            auto = dep.get("autoscaling_config")
            if isinstance(auto, Mapping):
                _unknown_keys(auto, ASC, source, _join(d_field, "autoscaling_config"))
                try:
                    ASC(**auto)
                except Exception as e:
                    raise _pydantic_errors(e, source, _join(d_field, "autoscaling_config")) from e
                if "num_replicas" in dep and dep["num_replicas"] not in (None, "auto"):
                    raise _err(source, _join(d_field, "num_replicas"), "cannot be set together with autoscaling_config")
        ipath = app.get("import_path")
        try:
            module, attr = import_path_target(ipath)
        except ValueError as e:
            raise _err(source, _join(a_field, "import_path"), str(e)) from None
        if check_imports:
            _check_import(module, attr, source, _join(a_field, "import_path"))
    return schema


def _check_import(module: str, attr: str, source, field: str) -> Any:
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise _err(source, field, f"module {module!r} not found (import path {module}:{attr})") from e
        raise _err(source, field, f"importing {module!r} failed: missing dependency {e.name!r} ({e})") from e
    except Exception as e:
        raise _err(source, field, f"importing {module!r} failed: {type(e).__name__}: {e}") from e
    if not hasattr(mod, attr):
        raise _err(source, field, f"module {module!r} has no attribute {attr!r}")
    return getattr(mod, attr)


def validate_serve_config(path: str | Path, *, check_imports: bool = False):
    """Validate a ``serve deploy`` YAML file; return the parsed ``ServeDeploySchema``.

    ``check_imports=True`` also imports every application's ``import_path`` (module and attribute).
    """
    cfg = _load_yaml(path)
    return validate_serve_dict(cfg, Path(path), check_imports=check_imports)


# --------------------------------------------------------------------------------------------------
# runtime_env


def validate_runtime_env(env: Mapping | str | Path, source: Any = None, *, prefix: str = "") -> dict:
    """Validate a Ray runtime_env (file path or dict) with Ray's own ``RuntimeEnv``; return it as a dict."""
    from ray.runtime_env import RuntimeEnv

    if isinstance(env, (str, Path)):
        source = source or env
        env = _load_yaml(env)
    source = source or "<runtime_env>"
    if not isinstance(env, Mapping):
        raise _err(source, prefix, f"runtime_env must be a mapping, got {type(env).__name__}")
    unknown = sorted(k for k in env if k not in RuntimeEnv.known_fields)
    if unknown:
        raise _err(source, _join(prefix, unknown[0]), "unknown runtime_env field (Ray would treat it as a plugin)")
    try:
        RuntimeEnv(**env)
    except Exception as e:
        raise _err(source, prefix or "runtime_env", f"{type(e).__name__}: {e}") from e
    pip = env.get("pip")
    packages = pip.get("packages", []) if isinstance(pip, Mapping) else pip if isinstance(pip, list) else []
    for i, req in enumerate(packages if isinstance(packages, list) else []):
        name = re.split(r"[\[<>=!~;@ ]", str(req).strip(), maxsplit=1)[0].lower()
        if name == "ray":
            raise _err(
                source,
                _join(prefix, f"pip.packages[{i}]"),
                f"{req!r}: Ray must come from the cluster image; a per-job Ray install can differ from the "
                f"running cluster's {_installed_ray_version()}",
            )
    env_vars = env.get("env_vars") or {}
    if "DS_ACCELERATOR" in env_vars:
        raise _err(
            source,
            _join(prefix, "env_vars.DS_ACCELERATOR"),
            "must not be set cluster-wide; DeepSpeed detects each node's accelerator",
        )
    return dict(env)


# --------------------------------------------------------------------------------------------------
# Cluster launcher


def _ray_launcher_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def validate_launcher_yaml(path: str | Path) -> dict:
    """Validate a ``ray up`` cluster YAML against Ray's ``ray-schema.json`` and pin checks; return it."""
    p = Path(path)
    cfg = _load_yaml(p)
    _jsonschema_errors(cfg, _ray_launcher_schema(), p)
    types = cfg.get("available_node_types") or {}
    if types:
        head = cfg.get("head_node_type")
        if head is None:
            raise _err(p, "head_node_type", "required when available_node_types is set")
        if head not in types:
            raise _err(p, "head_node_type", f"{head!r} is not one of available_node_types {sorted(types)}")
        total_max = cfg.get("max_workers")
        for name, nt in types.items():
            lo, hi = nt.get("min_workers", 0), nt.get("max_workers")
            if hi is not None and lo > hi:
                raise _err(p, f"available_node_types.{name}.min_workers", f"{lo} > max_workers {hi}")
            if total_max is not None and hi is not None and hi > total_max and name != head:
                raise _err(p, f"available_node_types.{name}.max_workers", f"{hi} > cluster max_workers {total_max}")
    check_ray_version(cfg, p)
    return cfg


# --------------------------------------------------------------------------------------------------
# KubeRay

_QUANTITY = {"type": ["string", "integer", "number"]}
_RESOURCES = {
    "type": "object",
    "properties": {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "image": {"type": "string", "minLength": 1},
                            "resources": _RESOURCES,
                        },
                    },
                },
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            },
        }
    },
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_CLUSTER_SPEC = {
    "type": "object",
    "required": ["rayVersion", "headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["template"],
            "properties": {"rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE},
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "template"],
                "properties": {
                    "groupName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "numOfHosts": {"type": "integer", "minimum": 1},
                    "rayStartParams": _RAY_START_PARAMS,
                    "template": _POD_TEMPLATE,
                },
            },
        },
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}


def _kuberay_schema(kind: str) -> dict:
    base = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"enum": ["RayJob", "RayService", "RayCluster"]},
            "metadata": _METADATA,
        },
    }
    if kind == "RayJob":
        spec = {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "suspend": {"type": "boolean"},
                "rayClusterSpec": _CLUSTER_SPEC,
            },
        }
    elif kind == "RayService":
        spec = {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {"serveConfigV2": {"type": "string", "minLength": 1}, "rayClusterConfig": _CLUSTER_SPEC},
        }
    else:
        spec = _CLUSTER_SPEC
    base["properties"]["spec"] = spec
    return base


def _cluster_spec_of(doc: Mapping) -> tuple[str, Mapping]:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        return "spec.rayClusterSpec", spec.get("rayClusterSpec") or {}
    if kind == "RayService":
        return "spec.rayClusterConfig", spec.get("rayClusterConfig") or {}
    return "spec", spec


def _gpu_count(q: Any) -> float:
    try:
        return float(q)
    except (TypeError, ValueError):
        return -1.0


def _check_cluster_semantics(cspec: Mapping, source, field: str) -> None:
    groups = [("headGroupSpec", cspec.get("headGroupSpec") or {})]
    names: set[str] = set()
    for i, g in enumerate(cspec.get("workerGroupSpecs") or []):
        g_field = f"workerGroupSpecs[{i}]"
        lo, n, hi = g["minReplicas"], g["replicas"], g["maxReplicas"]
        if not lo <= n <= hi:
            raise _err(
                source,
                _join(field, f"{g_field}.replicas"),
                f"need minReplicas <= replicas <= maxReplicas, got {lo} <= {n} <= {hi}",
            )
        if g["groupName"] in names:
            raise _err(source, _join(field, f"{g_field}.groupName"), f"duplicate group name {g['groupName']!r}")
        names.add(g["groupName"])
        groups.append((g_field, g))
    for g_field, g in groups:
        for c_i, c in enumerate(g["template"]["spec"]["containers"]):
            res = c.get("resources") or {}
            req = (res.get("requests") or {}).get("nvidia.com/gpu")
            lim = (res.get("limits") or {}).get("nvidia.com/gpu")
            c_field = _join(field, f"{g_field}.template.spec.containers[{c_i}].resources")
            if req is not None and lim is None:
                raise _err(source, c_field + ".limits.nvidia.com/gpu", "GPUs must be set in limits (Kubernetes extended resource)")
            if lim is not None:
                if _gpu_count(lim) < 0 or _gpu_count(lim) != int(_gpu_count(lim)):
                    raise _err(source, c_field + ".limits.nvidia.com/gpu", f"must be a whole number, got {lim!r}")
                if req is not None and _gpu_count(req) != _gpu_count(lim):
                    raise _err(source, c_field + ".requests.nvidia.com/gpu", f"{req!r} != limits {lim!r}")


def validate_kuberay(path: str | Path) -> list[dict]:
    """Validate a KubeRay ``ray.io/v1`` manifest (RayJob / RayService / RayCluster; multi-document ok)."""
    p = Path(path)
    docs = _load_yaml(p, multi=True)
    for d_i, doc in enumerate(docs):
        src = p if len(docs) == 1 else f"{p} (document {d_i})"
        kind = doc.get("kind")
        if kind not in ("RayJob", "RayService", "RayCluster"):
            raise _err(src, "kind", f"expected RayJob, RayService or RayCluster, got {kind!r}")
        _jsonschema_errors(doc, _kuberay_schema(kind), src)
        field, cspec = _cluster_spec_of(doc)
        _check_cluster_semantics(cspec, src, field)
        spec = doc["spec"]
        if kind == "RayJob":
            if spec.get("ttlSecondsAfterFinished") is not None and not spec.get("shutdownAfterJobFinishes"):
                raise _err(
                    src, "spec.ttlSecondsAfterFinished", "has no effect unless shutdownAfterJobFinishes is true"
                )
            if "runtimeEnvYAML" in spec:
                try:
                    env = yaml.safe_load(spec["runtimeEnvYAML"])
                except yaml.YAMLError as e:
                    raise _err(src, "spec.runtimeEnvYAML", f"not valid YAML ({e})") from e
                validate_runtime_env(env or {}, src, prefix="spec.runtimeEnvYAML")
        elif kind == "RayService":
            try:
                serve_cfg = yaml.safe_load(spec["serveConfigV2"])
            except yaml.YAMLError as e:
                raise _err(src, "spec.serveConfigV2", f"not valid YAML ({e})") from e
            validate_serve_dict(serve_cfg, src, prefix="spec.serveConfigV2")
            for a_i, app in enumerate(serve_cfg.get("applications") or []):
                if app.get("runtime_env"):
                    validate_runtime_env(
                        app["runtime_env"], src, prefix=f"spec.serveConfigV2.applications[{a_i}].runtime_env"
                    )
        check_ray_version(doc, src)
    return docs


# --------------------------------------------------------------------------------------------------
# DeepSpeed

# Top-level keys DeepSpeed documents (https://www.deepspeed.ai/docs/config-json/). DeepSpeed itself does
# not reject unknown top-level keys, so a typo ("gradient_clip") would silently do nothing.
DEEPSPEED_TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
        "scheduler", "fp16", "bf16", "torch_autocast", "zero_optimization", "gradient_clipping",
        "prescale_gradients", "gradient_predivide_factor", "gradient_allreduce_op", "steps_per_print",
        "wall_clock_breakdown", "dump_state", "memory_breakdown", "activation_checkpointing", "flops_profiler",
        "comms_logger", "tensorboard", "wandb", "csv_monitor", "comet", "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer", "communication_data_type", "seq_parallel_communication_data_type",
        "data_types", "checkpoint", "aio", "data_efficiency", "dataloader_drop_last", "disable_allgather",
        "pipeline", "autotuning", "compile", "timers", "weight_quantization", "hybrid_engine",
        "use_data_before_expert_parallelism", "disable_python_gc", "managed_gradient_accumulation",
        "sequence_parallel_size", "tensor_parallel", "expert_parallel", "zenflow",
    }
)


def validate_deepspeed_config(path: str | Path, expected_stage: int | None = None, *, parse_with_deepspeed: bool = True) -> dict:
    """Validate a DeepSpeed JSON config: explicit values (no ``"auto"``), known keys, ZeRO stage.

    ``expected_stage`` defaults to the digit in a ``zeroN.json`` file name. With DeepSpeed installed the
    config is also parsed by ``deepspeed.runtime.config.DeepSpeedConfig`` (CPU is enough).
    """
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise _err(p, "", f"cannot read file ({e})") from e
    except json.JSONDecodeError as e:
        raise _err(p, "", f"not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise _err(p, "", "expected a JSON object")
    for path_, key, value in _walk(cfg):
        if isinstance(value, str) and value.strip().lower() == "auto":
            raise _err(
                p,
                _fmt_path(path_ + (key,)),
                '"auto" is only understood by the Hugging Face integration, not by deepspeed.initialize; '
                "put an explicit value (the trainer overrides it at runtime)",
            )
    unknown = sorted(set(cfg) - DEEPSPEED_TOP_LEVEL_KEYS)
    if unknown:
        raise _err(p, unknown[0], "unknown DeepSpeed config key (DeepSpeed would silently ignore it)")
    for prec in ("bf16", "fp16"):
        if prec in cfg:
            if not isinstance(cfg[prec], dict) or not isinstance(cfg[prec].get("enabled", False), bool):
                raise _err(p, f"{prec}.enabled", f"must be true or false, got {cfg[prec]!r}")
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise _err(p, "zero_optimization.stage", "required field is missing")
    stage = zero["stage"]
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise _err(p, "zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}")
    if expected_stage is None:
        m = re.fullmatch(r"zero(\d)\.json", p.name)
        expected_stage = int(m.group(1)) if m else None
    if expected_stage is not None and stage != expected_stage:
        raise _err(p, "zero_optimization.stage", f"is {stage} but the file is for stage {expected_stage}")
    opt = cfg.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict) or not isinstance(opt.get("type"), str):
            raise _err(p, "optimizer.type", "required string (e.g. AdamW)")
    if parse_with_deepspeed:
        try:
            from deepspeed.runtime.config import DeepSpeedConfig
        except Exception:  # DeepSpeed not installed / not importable here: structural checks only
            DeepSpeedConfig = None
        if DeepSpeedConfig is not None:
            try:
                ds = DeepSpeedConfig(json.loads(json.dumps(cfg)))
            except Exception as e:
                raise _err(p, "", f"rejected by deepspeed.runtime.config.DeepSpeedConfig: {type(e).__name__}: {e}") from e
            if ds.zero_optimization_stage != stage:  # pragma: no cover - sanity
                raise _err(p, "zero_optimization.stage", f"DeepSpeed parsed stage {ds.zero_optimization_stage}")
    return cfg


# --------------------------------------------------------------------------------------------------
# Everything under cluster/


def validate_all(cluster_dir: str | Path = CLUSTER_DIR, *, check_imports: bool = False) -> list[Path]:
    """Validate every known file under ``cluster/``; return the files checked."""
    d = Path(cluster_dir)
    checked: list[Path] = []
    rt = d / "runtime_env.yaml"
    if rt.exists():
        validate_runtime_env(rt)
        checked.append(rt)
    serve = d / "serve.yaml"
    if serve.exists():
        validate_serve_config(serve, check_imports=check_imports)
        checked.append(serve)
    for f in sorted((d / "deepspeed").glob("*.json")):
        validate_deepspeed_config(f)
        checked.append(f)
    for f in sorted((d / "kuberay").glob("*.yaml")):
        validate_kuberay(f)
        checked.append(f)
    for f in sorted((d / "launcher").glob("*.yaml")):
        validate_launcher_yaml(f)
        checked.append(f)
    return checked


def _validate_file(f: Path, check_imports: bool) -> None:
    if f.suffix == ".json":
        validate_deepspeed_config(f)
    elif f.name == "runtime_env.yaml":
        validate_runtime_env(f)
    elif "launcher" in f.parts:
        validate_launcher_yaml(f)
    elif "kuberay" in f.parts:
        validate_kuberay(f)
    else:
        validate_serve_config(f, check_imports=check_imports)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="files to check (default: everything in cluster/)")
    ap.add_argument("--check-imports", action="store_true", help="import each Serve import_path")
    args = ap.parse_args(argv)
    try:
        if args.files:
            for f in args.files:
                _validate_file(f, args.check_imports)
            checked = args.files
        else:
            checked = validate_all(check_imports=args.check_imports)
    except ValueError as e:
        print(f"INVALID\n{e}", file=sys.stderr)
        return 1
    for f in checked:
        print(f"ok  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
