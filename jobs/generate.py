"""`medlm generate` / `python -m jobs.generate`: drafts + edit labels into a Parquet run with Ray Data.

    medlm generate --source data.jsonl --checkpoint CKPT --output OUT [--run-id ID] [--seed N]
                   [--config FILE] [--force] [key=value ...]
    medlm generate --from-run OUT/runs/<id> --checkpoint NEWER_CKPT [key=value ...]
    ray job submit --working-dir . -- python -m jobs.generate --config jobs/configs/generate_cluster.yaml \\
                   source=... checkpoint=... output=...

Connects to the cluster named by RAY_ADDRESS when it is set (as under `ray job submit`), otherwise
starts a local Ray. Configuration problems, a missing checkpoint, an unreadable source or an
unwritable output are reported before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.config import ConfigError, load_config, parse_overrides
from pipeline.common import connect_ray
from pipeline.drafts import GenerateConfig, GenerateError, config_from_run, plan_run, run_plan

PREFIX = "[medlm generate]"


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def _flag_overrides(args) -> list[str]:
    """Command-line flags as key=value overrides (they win over the config file)."""
    out = []
    if args.source:
        out.append(f"source={json.dumps(args.source if len(args.source) > 1 else args.source[0])}")
    for key in ("checkpoint", "output", "run_id", "seed"):
        value = getattr(args, key)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")  # quoted: a path like "2024" stays a string
    if args.force:
        out.append("force=true")
    return out


def build_config(args) -> GenerateConfig:
    overrides = _flag_overrides(args) + list(args.overrides)
    if args.from_run:
        if args.config:
            raise ConfigError("--from-run takes its sources and recipe from the old run; do not combine it with --config")
        return config_from_run(args.from_run, parse_overrides(overrides))
    cfg = load_config(args.config, overrides, GenerateConfig)
    if cfg.from_run:  # from_run=... given as an override (e.g. under `ray job submit`)
        explicit = parse_overrides([o for o in overrides if not o.startswith("from_run=")])
        return config_from_run(cfg.from_run, explicit)
    return cfg


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (jobs/configs/generate.yaml, generate_cluster.yaml)")
    ap.add_argument("--source", action="append", help="JSONL/Parquet file or directory (repeatable)")
    ap.add_argument("--checkpoint", help="medlm checkpoint directory")
    ap.add_argument("--output", help="output directory (holds runs/ and CURRENT)")
    ap.add_argument("--run-id", dest="run_id", help="default: a hash of sources, checkpoint and recipe")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--from-run", dest="from_run", help="rebuild this run's sources and recipe with --checkpoint")
    ap.add_argument("--force", action="store_true", help="regenerate even if a complete run with this id exists")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. num_actors=2 gen_len=128)")
    args = ap.parse_args(argv)
    try:
        cfg = build_config(args)
        plan = plan_run(cfg)  # fail fast, before Ray starts
    except (ConfigError, GenerateError) as e:
        print(f"medlm generate: error: {e}", file=sys.stderr)
        return 2
    if cfg.force or not plan.layout.is_complete(plan.run_id):  # a complete run is reused without Ray
        said = connect_ray()
        if said:
            _say(said)
    summary = run_plan(plan, say=_say)
    for line in summary.lines():
        _say(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
