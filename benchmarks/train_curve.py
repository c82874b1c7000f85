"""Quality of the base model against training minutes, in one process (no Ray): the recipe finder.

Why: a training recipe for the toy task is found with short in-process runs, not with the whole
demo. This script trains a preset with the masked-diffusion objective on generated toy problems
(a random valid phrasing per example), and every ``--probe-every`` seconds records the loss, the
number probe (copy / arithmetic / word accuracy, ``medlm.probe``) and, less often, mask-only
decoding at the full budget and at 1/8 on validation problems (right, whole-answer valid,
phrasing valid). Writes ``benchmarks/results/train_curve_<name>.json`` and a plot.

    python benchmarks/train_curve.py --minutes 12 --lr 1e-3 --name lr1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medlm.evaluation import Budget, evaluate_samples, summarise
from medlm.modeling import MedlmConfig, MedlmForEditing
from medlm.packing import collate, mask_example
from medlm.probe import number_probe
from medlm.tasks.toy import generate_problems
from medlm.tokenizer import build_default_tokenizer, chat_prompt_ids, response_ids, special_ids
from medlm.trainer import train_local

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="default")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time; the cosine schedule ends there")
    ap.add_argument("--tokens-per-s", type=float, default=8000.0, help="expected speed, to size the schedule in steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=3e-5)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--step-tokens", type=int, default=2048, help="tokens per optimizer step (packed)")
    ap.add_argument("--problems", type=int, default=20000)
    ap.add_argument("--gen-len", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--probe-every", type=float, default=60.0, help="seconds between probes")
    ap.add_argument("--decode-every", type=int, default=3, help="decode eval every N probes")
    ap.add_argument("--valid", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drill-frac", type=float, default=0.0,
                    help="fraction of examples that are arithmetic drills (facts drawn from training answers)")
    ap.add_argument("--untie", action="store_true", help="separate token head even if the preset ties it")
    ap.add_argument("--save", default=None, help="save the trained model here (medlm checkpoint)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = build_default_tokenizer()
    sp = special_ids(tok)
    extra = {"tie_word_embeddings": False} if args.untie else {}
    model = MedlmForEditing(MedlmConfig.preset(args.preset, vocab_size=len(tok), **extra))
    train = generate_problems(args.problems, seed=args.seed, split="train")
    valid = generate_problems(args.valid, seed=args.seed, split="valid")
    prompts = [chat_prompt_ids(tok, p.question) for p in train]
    answers = [[response_ids(tok, a) for a in p.answers] for p in train]
    facts = [m.group(0) for p in train for a in p.answers for m in re.finditer(r"\d+ [-+*] \d+ = \d+", a)]
    drill_prompt = chat_prompt_ids(tok, "How many ?")
    samples = [{"id": p.id, "prompt": p.question, "reference": {"answers": list(p.answers), "final": p.final}}
               for p in valid]
    total_steps = int(args.minutes * 60 * args.tokens_per_s / args.step_tokens)
    rng = random.Random(args.seed)
    order: list[int] = []

    def next_batch(step: int):
        """~``step_tokens`` of mask examples, each a random valid phrasing (or an arithmetic drill)."""
        nonlocal order
        batch, n = [], 0
        while n < args.step_tokens:
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            if args.drill_frac and rng.random() < args.drill_frac:
                text = " . ".join(rng.choice(facts) for _ in range(7)) + " ."
                ex = mask_example(drill_prompt, response_ids(tok, text), sp, rng, gen_len=args.gen_len)
            else:
                i = order.pop()
                ex = mask_example(prompts[i], rng.choice(answers[i]), sp, rng, gen_len=args.gen_len)
            batch.append(ex)
            n += len(ex["input_ids"])
        state["seqs"] += len(batch)
        return collate(batch)

    # training minutes exclude the probes and decodes, which on_log runs between steps
    state = {"seqs": 0, "losses": [], "probe_s": 0.0, "next_probe": 0.0, "probes": 0, "t0": time.perf_counter()}
    curve: list[dict] = []

    def on_log(step_rec: dict) -> None:
        t_in = time.perf_counter()
        state["losses"].append(step_rec["loss"])
        step, train_s = step_rec["step"], t_in - state["t0"] - state["probe_s"]
        if train_s < state["next_probe"] and step != total_steps - 1:
            return
        state["probes"] += 1
        losses = state["losses"][-50:]
        rec = {"step": step, "train_min": train_s / 60, "sequences": state["seqs"],
               "tokens_per_s": step_rec["tokens_per_s"] * (t_in - state["t0"]) / train_s,
               "lr": step_rec["lr"], "loss": sum(losses) / len(losses),
               "probe": number_probe(model, tok, valid, gen_len=args.gen_len)}
        if state["probes"] % args.decode_every == 0 or step == total_steps - 1:
            for label, steps in (("full", args.gen_len), ("eighth", max(1, args.gen_len // 8))):
                recs = evaluate_samples(model, tok, samples, Budget.of(steps, 0, args.gen_len), "toy",
                                        batch_size=50, seed=args.seed)
                s = summarise(recs)
                rec[label] = {k: s.get(k) for k in ("accuracy_after", "valid_after", "skeleton_valid_after")}
        model.train()
        curve.append(rec)
        pr = rec["probe"]
        extra = "".join(f"  {lab}: right {rec[lab]['accuracy_after']:.2f} valid {rec[lab]['valid_after']:.2f}"
                        f" skel {rec[lab].get('skeleton_valid_after') or 0:.2f}" for lab in ("full", "eighth") if lab in rec)
        print(f"[curve] {rec['train_min']:5.1f} min step {step} loss {rec['loss']:.3f} lr {rec['lr']:.1e} "
              f"{rec['tokens_per_s']:.0f} tok/s  copy {pr['copy']:.2f} arith {pr['arith']:.2f} word {pr['word']:.2f}"
              f"{extra}", flush=True)
        state["next_probe"] = train_s + args.probe_every
        state["probe_s"] += time.perf_counter() - t_in

    print(f"[curve] {args.name}: {total_steps} steps of ~{args.step_tokens} tokens, lr {args.lr} -> {args.min_lr}",
          flush=True)
    t0 = state["t0"]
    train_local(model, next_batch, total_steps, lr=args.lr, warmup=args.warmup, min_lr=args.min_lr,
                weight_decay=0.01, clip=1.0, log_every=1, on_log=on_log)
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_curve_{args.name}.json"
    out.write_text(json.dumps({"args": vars(args), "load_avg": os.getloadavg(), "wall_s": time.perf_counter() - t0,
                               "curve": curve}, indent=2) + "\n")
    print(f"[curve] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
