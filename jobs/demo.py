"""`medlm demo [--quick] [key=value ...]`: the whole ME-DLM pipeline on the embedded default.

Also `python -m jobs.demo` for `ray job submit`. Finished stages are reused on a rerun; pass
`--fresh` to start over. The demo starts from the shipped base model (medlm/base) when there is one;
`--from-scratch` trains the base instead and ships it (writes medlm/base with its PROVENANCE.json),
`--from-scratch --base-only` (`make base`) stops there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from jobs.config import ConfigError, build, merge, parse_overrides, read_yaml
from medlm.shipped import ShippedBaseError, package_base_dir
from pipeline.demo import REPO, DemoConfig, choose_base, run_demo


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm demo", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3-minute smoke version (tiny model, few steps)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first instead of reusing stages")
    ap.add_argument("--from-scratch", action="store_true",
                    help="train the base model with the demo's base stage instead of using the shipped one, and "
                         "write it to medlm/base (or --base-dest) with its PROVENANCE.json")
    ap.add_argument("--base-only", action="store_true", help="with --from-scratch: stop once the base is written "
                                                             "(`make base`)")
    ap.add_argument("--base-dest", type=Path, default=None,
                    help="with --from-scratch: write the base here instead of the package's medlm/base")
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
    ship_to = args.base_dest
    if (args.base_only or args.base_dest) and not args.from_scratch:
        print("medlm demo: --base-only and --base-dest go with --from-scratch", file=sys.stderr)
        return 2
    if args.from_scratch and ship_to is None:
        if cfg.quick:  # a quick run's tiny base must never replace the shipped one
            if args.base_only:
                print("medlm demo: --quick --from-scratch --base-only needs --base-dest DIR (the package's "
                      "medlm/base takes only the full recipe's base)", file=sys.stderr)
                return 2
        else:
            ship_to = package_base_dir()
    try:
        cfg.check()
        choose_base(cfg)  # a damaged or incomplete shipped base stops here, before any work
    except (ValueError, ShippedBaseError) as e:
        print(f"medlm demo: {e}", file=sys.stderr)
        return 2
    if args.fresh:
        work = Path(cfg.out) if Path(cfg.out).is_absolute() else REPO / cfg.out
        shutil.rmtree(work, ignore_errors=True)
    run_demo(cfg, ship_to=ship_to, base_only=args.base_only)
    return 0


def build_config(args) -> DemoConfig:
    """Defaults (``--quick``: the smoke preset's) < --config YAML < key=value overrides, typed (jobs.config)."""
    data = merge(read_yaml(args.config), parse_overrides(args.overrides))
    if getattr(args, "from_scratch", False):
        data = merge(data, {"from_scratch": True})
    if args.quick:
        data = merge(dataclasses.asdict(DemoConfig.quick_preset()), data)
    return build(DemoConfig, data)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
