"""`medlm convert --llada SRC --out DST`: original LLaDA checkpoint -> medlm checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from medlm.convert import convert_llada


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm convert", description=__doc__)
    ap.add_argument("--llada", required=True, type=Path, help="directory of the downloaded LLaDA checkpoint")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    out = convert_llada(args.llada, args.out)
    print(f"converted {args.llada} -> {out}")
    return 0
