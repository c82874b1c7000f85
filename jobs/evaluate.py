"""`medlm eval` / `python -m jobs.evaluate`: evaluate a checkpoint under one step budget or the whole budget table.

Two ways in, one config: flags (``medlm eval --checkpoint DIR --task toy --mask-steps 36 --edit-steps 12``)
and a YAML file with ``key=value`` overrides for ``ray job submit``
(``python -m jobs.evaluate --config jobs/configs/evaluate.yaml checkpoint=DIR table=true``).
Flags win over overrides, which win over the file, which wins over the defaults (``jobs.config``).
``gsm8k_source`` says where GSM8K comes from (``hub`` or a JSONL / Parquet file or folder; default
``$MEDLM_GSM8K``). ``checkpoint`` and ``out_dir`` may be ``s3://`` URIs (credentials and endpoint from
the ``AWS_*`` variables); a bad URI or a missing bucket or checkpoint exits 2 before Ray starts.
Connects to ``RAY_ADDRESS`` when set, else starts a local Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field

from jobs.config import ConfigError, config_to_dict, load_config

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


@dataclass
class EvalConfig:
    checkpoint: str = ""  # a local directory or an s3:// URI
    task: Literal["toy", "gsm8k", "humaneval"] = "toy"
    split: str = "test"
    n_samples: Optional[Positive] = 32  # null: every problem of the task
    gen_len: Positive = 48  # response positions; the full budget is gen_len mask steps (one token per step)
    mask_steps: Positive = 48  # single-budget mode
    edit_steps: NonNegative = 0
    table: bool = False  # evaluate the whole budget table instead of one budget
    fractions: list[Annotated[float, Field(gt=0, le=1)]] = field(default_factory=lambda: [1, 0.5, 0.25, 0.125])
    edit_share: Annotated[float, Field(gt=0, lt=1)] = 0.25  # share of a mask+edit budget spent on edit steps
    min_edit_steps: Positive = 3  # ... but at least this many while masking keeps half (budget_table)
    threshold: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    block_size: Optional[Positive] = None
    # LLaDA's decoding options (medlm.sampling, docs/fidelity.md); the defaults keep plain greedy decoding
    temperature: Annotated[float, Field(ge=0)] = 0.0
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    cfg_scale: Annotated[float, Field(ge=0)] = 0.0
    logits_eos_inf: bool = False  # never draft an end token
    confidence_eos_eot_inf: bool = False  # commit end tokens last (ME-DLM's and LLaDA-Instruct's setting)
    stop_ids: list[NonNegative] = field(default_factory=list)  # more token ids that end an answer
    batch_size: Positive = 8
    num_actors: Positive = 1
    cpus_per_actor: Annotated[float, Field(gt=0)] = 1
    gpus_per_actor: Annotated[float, Field(ge=0)] = 0
    grade_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # humaneval on a machine with no OS sandbox boundary: grade with the in-process guards alone
    # instead of refusing (the summary then marks the scores as graded without isolation)
    allow_unisolated_code: bool = False
    seed: int = 0
    out_dir: str = "runs/eval"  # a local directory or an s3:// URI
    gsm8k_source: Optional[str] = None  # "hub", or a GSM8K JSONL / Parquet file or folder


# flag -> config key; every flag defaults to None so only flags actually given override the config
FLAGS = {
    "--checkpoint": ("checkpoint", str), "--task": ("task", str), "--split": ("split", str),
    "--n": ("n_samples", int), "--gen-len": ("gen_len", int), "--mask-steps": ("mask_steps", int),
    "--edit-steps": ("edit_steps", int), "--out": ("out_dir", str), "--num-actors": ("num_actors", int),
    "--batch-size": ("batch_size", int), "--seed": ("seed", int), "--block-size": ("block_size", int),
    "--threshold": ("threshold", float), "--temperature": ("temperature", float),
    "--remasking": ("remasking", str), "--cfg-scale": ("cfg_scale", float),
}
BOOL_FLAGS = {"--logits-eos-inf": "logits_eos_inf", "--confidence-eos-eot-inf": "confidence_eos_eot_inf",
              "--allow-unisolated-code": "allow_unisolated_code"}


def parse_args(argv: list[str]) -> EvalConfig:
    ap = argparse.ArgumentParser(prog="medlm eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="YAML config (e.g. jobs/configs/evaluate.yaml)")
    for flag, (key, typ) in FLAGS.items():
        ap.add_argument(flag, dest=key, metavar=typ.__name__.upper(), default=None)  # typed by EvalConfig
    ap.add_argument("--table", action="store_true", default=None, help="evaluate the whole budget table")
    for flag, key in BOOL_FLAGS.items():
        ap.add_argument(flag, dest=key, action="store_true", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    flags = {key: getattr(args, key) for key, _ in FLAGS.values()}
    flags["table"] = args.table
    flags.update({key: getattr(args, key) for key in BOOL_FLAGS.values()})
    return load_config(args.config, args.overrides, EvalConfig, flags=flags)


def decode_options_of(cfg: EvalConfig) -> dict:
    """The config's LLaDA decoding options (medlm.sampling.DECODE_OPTIONS) for run_eval."""
    from medlm.sampling import DECODE_OPTIONS

    return {key: getattr(cfg, key) for key in DECODE_OPTIONS}


def budgets_of(cfg: EvalConfig) -> list:
    from medlm.evaluation import Budget, budget_table

    if cfg.table:
        return [b for pair in budget_table(cfg.gen_len, cfg.fractions, cfg.edit_share, cfg.min_edit_steps) for b in pair]
    return [Budget.of(cfg.mask_steps, cfg.edit_steps, gen_len=cfg.gen_len)]


def cli(argv: list[str]) -> int:
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"medlm eval: {e}", file=sys.stderr)
        return 2
    if not cfg.checkpoint:
        print("medlm eval: no checkpoint given (--checkpoint DIR or checkpoint=DIR)", file=sys.stderr)
        return 2
    if cfg.gsm8k_source:  # medlm.tasks reads it where the samples are loaded
        os.environ["MEDLM_GSM8K"] = cfg.gsm8k_source
    from pipeline.eval import run_eval

    try:
        budgets = budgets_of(cfg)
        print(f"[eval] config {json.dumps(config_to_dict(cfg))}", flush=True)
        summary = run_eval(cfg.checkpoint, cfg.task, budgets, cfg.n_samples, cfg.split, cfg.batch_size,
                           cfg.num_actors, cfg.out_dir, cfg.seed, gen_len=cfg.gen_len, threshold=cfg.threshold,
                           block_size=cfg.block_size, cpus_per_actor=cfg.cpus_per_actor,
                           gpus_per_actor=cfg.gpus_per_actor, grade_timeout_s=cfg.grade_timeout_s,
                           decode_options=decode_options_of(cfg), allow_unisolated_code=cfg.allow_unisolated_code)
    except (ValueError, FileNotFoundError) as e:
        print(f"medlm eval: {e}", file=sys.stderr)
        return 2
    print(f"[eval] summary: {summary['out_dir'].rstrip('/')}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
