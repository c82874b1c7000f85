"""`medlm demo [--quick] [key=value ...]`: the whole ME-DLM pipeline on the embedded default.

Also `python -m jobs.demo` for `ray job submit`. Finished stages are reused on a rerun; pass
`--fresh` to start over.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from jobs.config import ConfigError, build, merge, parse_overrides, read_yaml
from pipeline.demo import REPO, DemoConfig, run_demo


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm demo", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3-minute smoke version (tiny model, few steps)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first instead of reusing stages")
    ap.add_argument("--config", type=Path, default=None, help="YAML with DemoConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of DemoConfig")
    args = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"medlm demo: {e}", file=sys.stderr)
        return 2
    if args.fresh:
        work = Path(cfg.out) if Path(cfg.out).is_absolute() else REPO / cfg.out
        shutil.rmtree(work, ignore_errors=True)
    run_demo(cfg)
    return 0


def build_config(args) -> DemoConfig:
    """Defaults (``--quick``: the smoke preset's) < --config YAML < key=value overrides, typed (jobs.config)."""
    data = merge(read_yaml(args.config), parse_overrides(args.overrides))
    if args.quick:
        data = merge(dataclasses.asdict(DemoConfig.quick_preset()), data)
    return build(DemoConfig, data)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
