"""`medlm init --preset tiny --out DIR`: a random checkpoint plus the default tokenizer (tests, smoke runs)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pydantic import Field

from jobs.config import ConfigError, build
from medlm.checkpoint import UNTRAINED_HEADS, new_model, save_checkpoint
from medlm.modeling import count_parameters
from medlm.tokenizer import DEFAULT_VOCAB_SIZE, build_default_tokenizer, load_tokenizer


@dataclass
class InitConfig:
    out: str
    preset: Literal["tiny", "small"] = "tiny"  # llada-8b is config-only: download and `medlm convert` it
    tokenizer: Optional[str] = None  # reuse a saved tokenizer instead of training one
    vocab_size: Annotated[int, Field(ge=262)] = DEFAULT_VOCAB_SIZE  # 256 bytes + 6 special tokens at least
    seed: int = 0
    tokenizer_only: bool = False


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm init", description=__doc__)
    ap.add_argument("--preset", default=None, help="tiny | small")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="reuse a saved tokenizer instead of training one")
    ap.add_argument("--vocab-size", dest="vocab_size", metavar="INT", default=None)
    ap.add_argument("--seed", metavar="INT", default=None)
    ap.add_argument("--tokenizer-only", dest="tokenizer_only", action="store_true", help=argparse.SUPPRESS)
    flags = {k: v for k, v in vars(ap.parse_args(argv)).items() if v is not None}
    try:
        args = build(InitConfig, flags)  # typed and range-checked (jobs.config)
    except ConfigError as e:
        print(f"medlm init: {e}", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else build_default_tokenizer(vocab_size=args.vocab_size)
    if args.tokenizer_only:
        tok.save_pretrained(args.out)
        print(f"tokenizer ({len(tok)} tokens) written to {args.out}")
        return 0
    model = new_model(args.preset, tok, seed=args.seed)
    save_checkpoint(model, tok, args.out, extra={"preset": args.preset, "seed": args.seed, "trained_steps": 0, **UNTRAINED_HEADS})
    print(f"{args.preset} model ({count_parameters(model):,} parameters, vocab {len(tok)}) written to {args.out}")
    return 0
