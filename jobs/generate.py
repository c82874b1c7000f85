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
import dataclasses
import sys

from jobs.config import ConfigError, build, load_config, merge, parse_overrides
from pipeline.common import connect_ray
from pipeline.drafts import GenerateConfig, GenerateError, config_from_run, plan_run, run_plan

PREFIX = "[medlm generate]"


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def _flags(args) -> dict:
    """Command-line flags by config key (they win over overrides, the config file and the defaults)."""
    flags = {key: getattr(args, key) for key in ("checkpoint", "output", "run_id", "seed")}
    if args.source:
        flags["source"] = args.source if len(args.source) > 1 else args.source[0]
    flags["force"] = True if args.force else None
    return {k: v for k, v in flags.items() if v is not None}


def build_config(args) -> GenerateConfig:
    """Defaults < --config YAML < key=value overrides < flags, typed by GenerateConfig (jobs.config)."""
    from_run = args.from_run
    if from_run and args.config:
        raise ConfigError("--from-run takes its sources and recipe from the old run; do not combine it with --config")
    if not from_run:
        cfg = load_config(args.config, args.overrides, GenerateConfig, flags=_flags(args))
        if not cfg.from_run:
            return cfg
        from_run = cfg.from_run  # from_run=... given as an override (e.g. under `ray job submit`)
    # the old run's sources and recipe, then what this command line says explicitly
    explicit = merge(parse_overrides([o for o in args.overrides if not o.startswith("from_run=")]), _flags(args))
    build(GenerateConfig, explicit)  # type-check what was given before combining it with the old run
    cfg = config_from_run(from_run, explicit)
    return build(GenerateConfig, dataclasses.asdict(cfg))


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (jobs/configs/generate.yaml, generate_cluster.yaml)")
    ap.add_argument("--source", action="append", help="JSONL/Parquet file or directory (repeatable)")
    ap.add_argument("--checkpoint", help="medlm checkpoint directory")
    ap.add_argument("--output", help="output directory (holds runs/ and CURRENT)")
    ap.add_argument("--run-id", dest="run_id", help="default: a hash of sources, checkpoint and recipe")
    ap.add_argument("--seed", metavar="INT")  # typed by GenerateConfig
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
