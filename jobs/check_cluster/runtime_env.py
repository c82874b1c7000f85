"""``runtime_env`` files for ``ray job submit --runtime-env``, checked by Ray's own ``RuntimeEnv``.

On top of Ray's parse: no unknown top-level field (Ray would take it for a plugin), no ``ray`` in the
pip list (Ray comes from the cluster image), and no cluster-wide ``DS_ACCELERATOR``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ._common import err, join, load_yaml
from .ray_pins import installed_ray_version


def validate_runtime_env(env: Mapping | str | Path, source: Any = None, *, prefix: str = "") -> dict:
    """Validate a Ray runtime_env (file path or dict); return it as a dict."""
    from ray.runtime_env import RuntimeEnv

    if isinstance(env, (str, Path)):
        source = source or env
        env = load_yaml(env)
    source = source or "<runtime_env>"
    if not isinstance(env, Mapping):
        raise err(source, prefix, f"runtime_env must be a mapping, got {type(env).__name__}")
    unknown = sorted(k for k in env if k not in RuntimeEnv.known_fields)
    if unknown:
        raise err(source, join(prefix, unknown[0]), "unknown runtime_env field (Ray would treat it as a plugin)")
    try:
        RuntimeEnv(**env)
    except Exception as e:  # Ray raises TypeError / ValueError / its own errors
        raise err(source, prefix or "runtime_env", f"{type(e).__name__}: {e}") from e
    pip = env.get("pip")
    packages = pip.get("packages", []) if isinstance(pip, Mapping) else pip if isinstance(pip, list) else []
    for i, req in enumerate(packages if isinstance(packages, list) else []):
        name = re.split(r"[\[<>=!~;@ ]", str(req).strip(), maxsplit=1)[0].lower()
        if name == "ray":
            raise err(
                source,
                join(prefix, f"pip.packages[{i}]"),
                f"{req!r}: Ray must come from the cluster image; a per-job Ray install can differ from the "
                f"running cluster's {installed_ray_version()}",
            )
    if "DS_ACCELERATOR" in (env.get("env_vars") or {}):
        raise err(
            source,
            join(prefix, "env_vars.DS_ACCELERATOR"),
            "must not be set cluster-wide; DeepSpeed detects each node's accelerator",
        )
    return dict(env)
