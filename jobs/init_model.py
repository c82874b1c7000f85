"""`medlm init --preset tiny --out DIR`: a random checkpoint plus the default tokenizer (tests, smoke runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medlm.checkpoint import new_model, save_checkpoint
from medlm.modeling import count_parameters
from medlm.tokenizer import DEFAULT_VOCAB_SIZE, build_default_tokenizer, load_tokenizer


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm init", description=__doc__)
    ap.add_argument("--preset", default="tiny", help="tiny | small | llada-8b (config only: far too big for CPU)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tokenizer", type=Path, default=None, help="reuse a saved tokenizer instead of training one")
    ap.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else build_default_tokenizer(vocab_size=args.vocab_size)
    if args.tokenizer_only:
        tok.save_pretrained(str(args.out))
        print(f"tokenizer ({len(tok)} tokens) written to {args.out}")
        return 0
    if args.preset == "llada-8b":
        raise SystemExit("medlm init: the llada-8b preset is config-only; download and `medlm convert` the real checkpoint")
    model = new_model(args.preset, tok, seed=args.seed)
    save_checkpoint(model, tok, args.out, extra={"preset": args.preset, "seed": args.seed, "trained_steps": 0})
    print(f"{args.preset} model ({count_parameters(model):,} parameters, vocab {len(tok)}) written to {args.out}")
    return 0
