"""LLaDA's decoding options in ``medlm.sampling``: agreement with a reference of LLaDA's ``generate``, and cost.

Agreement: 40 toy prompts on a random ``tiny`` model, T = 0.8, one block, the same noise for both
sides: how many drafts equal the reference's token for token (the reference is the one in
``tests/test_llada_parity.py``; the sampler packs all 40 prompts, the reference runs each alone).
The sampler before issue 26 drew float32 noise in another shape, so it cannot be compared token for
token: any agreement would measure the random stream, not the ranking rule.

Cost: CPU time of ``mask_diffusion`` for a packed batch of 8 prompts (``small``, gen_len 64, 16 steps)
with each option, against greedy low-confidence decoding.

    python benchmarks/bench_decode_options.py          # about a minute on 2 idle cores
    python benchmarks/bench_decode_options.py --quick  # smoke run, bench_decode_options.smoke.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch
from test_llada_parity import reference_generate

from benchmarks.common import add_quick_flag, median, start, write_result
from medlm.checkpoint import new_model
from medlm.sampling import DecodeConfig, end_token_ids, mask_diffusion
from medlm.tasks.toy import generate_problems
from medlm.tokenizer import chat_prompt_ids, special_ids, stdlib_corpus, train_tokenizer


def agreement(n_prompts: int, gen_len: int, steps: int, temperature: float) -> dict:
    tok = train_tokenizer(stdlib_corpus(max_files=10), vocab_size=384)
    sp = special_ids(tok)
    model = new_model("tiny", tok, seed=0).eval()
    prompts = [chat_prompt_ids(tok, prompt=p.question) for p in generate_problems(n_prompts, seed=1, split="test")]
    configs = [DecodeConfig(gen_len=gen_len, mask_steps=steps, temperature=temperature, seed=100 + i)
               for i in range(len(prompts))]
    ours = [r for r, _ in mask_diffusion(model, prompts, configs, sp)]

    def forward(ids):
        with torch.no_grad():
            return model(ids, return_insert=False).token_logits

    refs = [reference_generate(forward, p, steps=steps, gen_length=gen_len, block_length=gen_len, mask_id=sp.mask,
                               banned=[sp.mask, sp.delete], end_ids=end_token_ids(c, sp), temperature=temperature,
                               seed=c.seed) for p, c in zip(prompts, configs)]

    def same_tokens(a, b):
        return sum(x == y for x, y in zip(a, b)) / len(a)

    return {
        "prompts": len(prompts), "gen_len": gen_len, "mask_steps": steps, "temperature": temperature,
        "drafts_equal_to_reference": sum(a == b for a, b in zip(ours, refs)),
        "token_agreement_with_reference": round(sum(same_tokens(a, b) for a, b in zip(ours, refs)) / len(refs), 4),
    }


def cost(preset: str, batch: int, gen_len: int, steps: int, repeats: int) -> dict:
    tok = train_tokenizer(stdlib_corpus(max_files=10), vocab_size=1024)
    sp = special_ids(tok)
    model = new_model(preset, tok, seed=0).eval()
    prompts = [chat_prompt_ids(tok, prompt=p.question) for p in generate_problems(batch, seed=2, split="test")]
    variants = {
        "greedy (low_confidence, T=0)": {},
        "T=0.8 (float64 Gumbel, clean softmax)": {"temperature": 0.8},
        "remasking=random": {"remasking": "random"},
        "confidence_eos_eot_inf": {"confidence_eos_eot_inf": True},
        "logits_eos_inf": {"logits_eos_inf": True},
        "cfg_scale=1 (a prompt-masked copy per request)": {"cfg_scale": 1.0},
    }
    out = {}
    for name, opts in variants.items():
        configs = [DecodeConfig(gen_len=gen_len, mask_steps=steps, seed=i, **opts) for i in range(batch)]
        mask_diffusion(model, prompts[:1], configs[:1], sp)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            mask_diffusion(model, prompts, configs, sp)
            times.append(time.process_time() - t0)
        out[name] = round(median(times), 4)
    base = out["greedy (low_confidence, T=0)"]
    return {"preset": preset, "batch": batch, "gen_len": gen_len, "mask_steps": steps, "repeats": repeats,
            "cpu_s_per_batch": out, "ratio_to_greedy": {k: round(v / base, 3) for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = start("bench_decode_options")
    if args.quick:
        payload = {"agreement": agreement(4, 12, 6, 0.8), "cost": cost("tiny", 2, 16, 4, 1)}
    else:
        payload = {"agreement": agreement(40, 32, 16, 0.8), "cost": cost("small", 8, 64, 16, 3)}
    print(payload)
    write_result("bench_decode_options", payload, started=started, quick=args.quick)


if __name__ == "__main__":
    main()
