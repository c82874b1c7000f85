"""`medlm check-cluster`: validate the files under ``cluster/`` before a cluster is paid for.

    medlm check-cluster                     # every file in cluster/
    medlm check-cluster cluster/serve.yaml cluster/deepspeed/zero3.json [--check-imports]
    python -m jobs.check_cluster            # the same, without the `medlm` script

One module per kind of file, each leaning on the schema its owner maintains:

- :mod:`.kuberay`     -- KubeRay ``ray.io/v1`` RayJob / RayService / RayCluster (pydantic models)
- :mod:`.launcher`    -- ``ray up`` YAML against Ray's ``ray-schema.json``
- :mod:`.serve`       -- ``serve deploy`` YAML with Ray Serve's ``ServeDeploySchema`` and friends
- :mod:`.runtime_env` -- ``runtime_env`` YAML with Ray's ``RuntimeEnv``
- :mod:`.deepspeed`   -- ZeRO JSON with DeepSpeed's ``DeepSpeedConfig``
- :mod:`.ray_pins`    -- the Ray version pin and GPU requests, shared by the others

Every problem is reported as ``<file>: <field>: <problem>``; the exit status is 1 when a file is
refused, 0 when all pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import CLUSTER_DIR
from .deepspeed import validate_deepspeed_config
from .kuberay import validate_kuberay
from .launcher import validate_launcher_yaml
from .ray_pins import check_gpu_request, check_ray_version
from .runtime_env import validate_runtime_env
from .serve import import_path_target, validate_serve_config, validate_serve_dict

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
    "validate_file",
    "cli",
]


def validate_file(f: str | Path, *, check_imports: bool = False) -> None:
    """Validate one file, choosing the validator by its name and folder."""
    f = Path(f)
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


def validate_all(cluster_dir: str | Path = CLUSTER_DIR, *, check_imports: bool = False) -> list[Path]:
    """Validate every known file under ``cluster_dir``; return the files checked."""
    d = Path(cluster_dir)
    files = [d / "runtime_env.yaml", d / "serve.yaml"]
    files = [f for f in files if f.exists()]
    for sub, pattern in (("deepspeed", "*.json"), ("kuberay", "*.yaml"), ("launcher", "*.yaml")):
        files += sorted((d / sub).glob(pattern))
    for f in files:
        validate_file(f, check_imports=check_imports)
    return files


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm check-cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="files to check (default: everything in cluster/)")
    ap.add_argument("--check-imports", action="store_true", help="import each Serve import_path")
    args = ap.parse_args(argv)
    try:
        if args.files:
            for f in args.files:
                validate_file(f, check_imports=args.check_imports)
            checked = args.files
        else:
            checked = validate_all(check_imports=args.check_imports)
    except ValueError as e:
        print(f"INVALID\n{e}", file=sys.stderr)
        return 1
    for f in checked:
        print(f"ok  {f}")
    return 0


main = cli
