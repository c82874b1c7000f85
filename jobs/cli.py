"""The `medlm` command: one sub-command per job, each living in its own `jobs/<module>.py`.

Sub-command modules are imported lazily so that `medlm init` does not pay for importing Ray.
Each module exposes ``cli(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "init": ("jobs.init_model", "write a randomly initialised checkpoint with the default tokenizer"),
    "tokenizer": ("jobs.init_model", "build the default tokenizer only (medlm tokenizer --out DIR)"),
    "convert": ("jobs.convert", "convert an original LLaDA checkpoint to the medlm layout"),
    "generate": ("jobs.generate", "Ray Data: drafts + edit labels into Parquet shards"),
    "inspect": ("jobs.inspect_run", "summarise a draft run directory with polars"),
    "train": ("jobs.train", "Ray Train + DeepSpeed: mask / edit / mixture training"),
    "serve": ("jobs.serve", "Ray Serve HTTP app (native + OpenAI-compatible API)"),
    "eval": ("jobs.evaluate", "distributed evaluation over a step-budget table"),
    "demo": ("jobs.demo", "the whole pipeline end to end on the embedded default"),
    "check-cluster": ("jobs.check_cluster", "validate the cluster/ files (KubeRay, launcher, Serve, runtime env, DeepSpeed)"),
}


def usage() -> str:
    lines = ["usage: medlm <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"medlm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "tokenizer":
        rest = ["--tokenizer-only", *rest]
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
