"""Share of an edit step's time spent outside the model forward (bookkeeping).

``small`` preset, a packed batch of 16 drafts of ~64 tokens behind ~24-token prompts. The model's
forward is wrapped with a timer; the rest of ``medlm.sampling.edit_step`` (packing, softmax/argmax,
proposals, applying edits) is bookkeeping. Goal: at most 10%.

    python benchmarks/bench_sampling.py          # 105 edit steps of batch 16: 5-15 min on 2 cores
    python benchmarks/bench_sampling.py --quick  # smoke run (tiny preset), bench_sampling.smoke.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import add_quick_flag, median, start, write_result
from medlm.checkpoint import new_model
from medlm.sampling import DecodeConfig, EditState, edit_step
from medlm.tokenizer import special_ids, stdlib_corpus, train_tokenizer


class TimedModel(torch.nn.Module):
    """Forwards to the model and accumulates the time spent inside it, read on ``clock`` (wall time by
    default; ``time.process_time`` gives CPU time, which a busy machine distorts less)."""

    def __init__(self, model, clock=time.perf_counter):
        super().__init__()
        self.model = model
        self.config = model.config
        self.clock = clock
        self.seconds = 0.0

    def forward(self, *args, **kwargs):
        t = self.clock()
        out = self.model(*args, **kwargs)
        self.seconds += self.clock() - t
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--draft-len", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="small")
    add_quick_flag(ap)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats, args.preset = 4, 3, 2, "tiny"
    started = start("bench_sampling")
    tok = train_tokenizer(stdlib_corpus(max_files=20), vocab_size=1024)
    sp = special_ids(tok)
    model = new_model(args.preset, tok, seed=0).eval()
    timed = TimedModel(model)
    rng = random.Random(0)
    cfg = DecodeConfig(gen_len=args.draft_len + 16, mask_steps=1, edit_steps=10**6)

    def fresh_states():
        return [
            EditState([sp.im_start] + [rng.randrange(6, 1024) for _ in range(args.prompt_len - 1)],
                      [rng.randrange(6, 1024) for _ in range(args.draft_len)], cfg)
            for _ in range(args.batch)
        ]

    edit_step(timed, fresh_states(), sp)  # warm-up
    shares, step_ms = [], []
    for r in range(args.repeats):
        states = fresh_states()
        timed.seconds = 0.0
        t = time.perf_counter()
        for _ in range(args.steps):
            for s in states:
                s.done = False
            edit_step(timed, states, sp)
        total = time.perf_counter() - t
        shares.append(1 - timed.seconds / total)
        step_ms.append(1000 * total / args.steps)
        print(f"repeat {r + 1}/{args.repeats}: {step_ms[-1]:.1f} ms/step, bookkeeping {shares[-1]:.1%}", flush=True)
    share = median(shares)
    write_result("bench_sampling", {
        "preset": args.preset, "batch": args.batch, "draft_len": args.draft_len, "prompt_len": args.prompt_len,
        "steps_per_repeat": args.steps, "repeats": args.repeats,
        "edit_step_ms_median": median(step_ms), "bookkeeping_share_median": share, "bookkeeping_share_all": shares,
        "goal": "bookkeeping <= 10% of an edit step", "goal_met": share <= 0.10,
    }, started=started, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
