"""GPU smoke test for ME-DLM on one H100/H200 (< 5 minutes). Writes benchmarks/results/gpu_smoke.json.

What it exercises, in one process:
1. the ``small`` preset model (``MedlmConfig.preset("small")``), random init, on ``cuda:0``;
2. a few bf16 training steps of the mask + edit mixture loss through DeepSpeed ZeRO-2
   (``cluster/deepspeed/zero2.json`` with bf16 switched on, as the trainer does on GPU), NCCL with a
   world of one (MASTER_ADDR/PORT, RANK=0, WORLD_SIZE=1, ``deepspeed.init_distributed("nccl")``);
3. the packed sampler -- flash-attention varlen when ``flash_attn`` is installed, SDPA otherwise --
   timing drafting (``medlm.sampling.mask_diffusion``) and editing (``medlm.sampling.edit_refine``) at
   the paper's budget (512 tokens: 48 mask + 16 edit steps) next to plain 512-step mask decoding;
4. peak GPU memory (``torch.cuda.max_memory_allocated``) of training and of sampling.

The weights are random (sampling uses a fresh random-init bf16 model so that drafts are full length and
every edit step does work), so the numbers are throughput and memory only, not quality.

Without CUDA it prints why and exits 2. ``--cpu-dry-run`` runs the same code on CPU (gloo, fp32, tiny
sizes) only to check the script itself; its JSON goes to ``gpu_smoke_cpu_dry_run.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
ZERO2 = ROOT / "cluster" / "deepspeed" / "zero2.json"

NO_GPU_EXIT = 2


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--row-tokens", type=int, default=16384, help="tokens per packed training row")
    ap.add_argument("--prompts", type=int, default=16, help="prompts decoded together (one packed batch)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=512)
    ap.add_argument("--mask-steps", type=int, default=48)
    ap.add_argument("--edit-steps", type=int, default=16)
    ap.add_argument("--baseline-mask-steps", type=int, default=512, help="0 skips the mask-only baseline")
    ap.add_argument("--port", type=int, default=29517, help="MASTER_PORT for the one-process group")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cpu-dry-run", action="store_true", help="check the script on CPU (gloo, fp32, tiny)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# data: synthetic packed rows (random tokens; enough to load the GPU realistically)


def synthetic_rows(n_rows, row_tokens, prompt_len, gen_len, special, vocab, seed=0):
    from medlm.edits import NO_INSERT
    from medlm.packing import collate, edit_example, mask_example

    rng = random.Random(seed)
    first = 6  # ids 0..5 are the special tokens in every medlm tokenizer
    rows = []
    per_seq = prompt_len + gen_len
    n_seq = max(2, row_tokens // per_seq)
    for _ in range(n_rows):
        exs = []
        for k in range(n_seq):
            prompt = [rng.randrange(first, vocab) for _ in range(prompt_len)]
            target = [rng.randrange(first, vocab) for _ in range(rng.randrange(gen_len // 2, gen_len))]
            if k % 2 == 0:  # half mask-diffusion examples, half edit examples (the paper's mixture)
                exs.append(mask_example(prompt, target, special, rng, gen_len=gen_len))
            else:
                draft = [rng.randrange(first, vocab) for _ in range(len(target))]
                token_target = [t if rng.random() < 0.8 else special.delete for t in draft]
                insert_target = [NO_INSERT if rng.random() < 0.9 else rng.randrange(first, vocab) for _ in range(len(draft) + 1)]
                exs.append(edit_example(prompt, draft, token_target, insert_target, special))
        rows.append(collate(exs))
    return rows


# ------------------------------------------------------------------------------------------------
# training: DeepSpeed ZeRO-2, one process


def ds_config(bf16: bool, row_tokens: int) -> dict:
    cfg = json.loads(ZERO2.read_text())
    cfg["train_micro_batch_size_per_gpu"] = 1  # one packed row per step
    cfg["gradient_accumulation_steps"] = 1
    cfg["bf16"] = {"enabled": bool(bf16)}  # what the trainer does on GPU
    cfg["optimizer"]["params"]["lr"] = 3e-4
    cfg["steps_per_print"] = 10**9
    return cfg


def train_steps(model, rows, device, bf16: bool, steps: int, row_tokens: int) -> tuple[object, dict]:
    import deepspeed
    import torch

    from medlm.losses import mixture_loss

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config(bf16, row_tokens)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, times, tokens = [], [], []
    for step in range(steps):
        batch = rows[step % len(rows)].to(device)
        sync()
        t0 = time.perf_counter()
        terms = mixture_loss(engine, batch)
        engine.backward(terms["loss"])
        engine.step()
        sync()
        times.append(time.perf_counter() - t0)
        tokens.append(batch.n_tokens)
        losses.append(float(terms["loss"].detach().float()))
    warm = slice(min(2, steps - 1), steps)  # the first steps include allocator / kernel warm-up
    t_warm = sum(times[warm])
    return engine, {
        "steps": steps,
        "zero_stage": engine.zero_optimization_stage(),
        "bf16": engine.bfloat16_enabled(),
        "tokens_per_step": tokens[0],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "loss_finite": all(loss == loss and abs(loss) != float("inf") for loss in losses),
        "step_time_s_first": times[0],
        "step_time_s_mean_after_warmup": t_warm / max(1, len(times[warm])),
        "train_tokens_per_s": sum(tokens[warm]) / t_warm if t_warm > 0 else None,
    }


# ------------------------------------------------------------------------------------------------
# sampling -- THE ONE PLACE THAT CALLS THE SAMPLERS. Adjust here if medlm.sampling's API changes.


def run_sampler(model, prompts, gen_len, mask_steps, edit_steps, special, sync) -> dict:
    """Draft with mask diffusion, then refine with edits; return timings and token counts."""
    from medlm.sampling import DecodeConfig, edit_refine, mask_diffusion, strip_padding

    cfgs = [DecodeConfig(gen_len=gen_len, mask_steps=mask_steps, edit_steps=edit_steps, seed=i) for i in range(len(prompts))]
    sync()
    t0 = time.perf_counter()
    drafts = mask_diffusion(model, prompts, cfgs, special)  # [(raw response, nfe)]
    sync()
    t1 = time.perf_counter()
    stripped = [strip_padding(d, special) for d, _ in drafts]
    draft_len_mean = sum(map(len, stripped)) / len(stripped)
    edit_tokens = 0
    states = []
    if edit_steps > 0:
        states = edit_refine(model, prompts, stripped, cfgs, special)
        sync()
        # tokens the editor read: each step re-reads the whole current response
        for s, d in zip(states, stripped):
            lens = [len(d)] + [len(h) for h in s.history]
            edit_tokens += sum(lens[: s.nfe])
    t2 = time.perf_counter()
    draft_tokens = len(prompts) * gen_len
    return {
        "prompts": len(prompts),
        "gen_len": gen_len,
        "mask_steps": mask_steps,
        "edit_steps": edit_steps,
        "mask_nfe_max": max(n for _, n in drafts),
        "edit_nfe_max": max((s.nfe for s in states), default=0),
        "draft_time_s": t1 - t0,
        "edit_time_s": t2 - t1,
        "total_time_s": t2 - t0,
        "draft_tokens_per_s": draft_tokens / (t1 - t0),
        "edit_tokens_per_s": (edit_tokens / (t2 - t1)) if edit_tokens else None,
        "response_tokens_per_s": draft_tokens / (t2 - t0),
        "draft_len_mean_after_pad_strip": draft_len_mean,
        "edits_applied": sum(s.n_replace + s.n_delete + s.n_insert for s in states),
    }


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.cpu_dry_run:
        print(
            "gpu_smoke: NO GPU. torch.cuda.is_available() is False on this machine, so nothing was measured.\n"
            "           This benchmark needs one NVIDIA H100/H200 (CUDA torch + NCCL). It has not been run on a\n"
            "           GPU yet; run benchmarks/gpu_smoke.sh on a GPU node. Exit code 2.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT
    if args.cpu_dry_run:  # tiny sizes: this only checks that the script runs
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        args.train_steps, args.row_tokens = min(args.train_steps, 3), min(args.row_tokens, 512)
        args.prompts = min(args.prompts, 2)
        args.prompt_len, args.gen_len = min(args.prompt_len, 8), min(args.gen_len, 32)
        args.mask_steps, args.edit_steps = min(args.mask_steps, 4), min(args.edit_steps, 2)
        args.baseline_mask_steps = min(args.baseline_mask_steps, 32)

    from benchmarks.common import load_average, start

    out = args.out or RESULTS / ("gpu_smoke.json" if not args.cpu_dry_run else "gpu_smoke_cpu_dry_run.json")
    started = start("gpu_smoke")
    result: dict = {
        "benchmark": "gpu_smoke",
        "status": "running",
        "cpu_dry_run": bool(args.cpu_dry_run),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": started["cpu_count"],
        "load_average_at_start": started["load_average_at_start"],
    }
    t_start = time.perf_counter()
    try:
        _run(args, result)
        result["status"] = "ok"
        rc = 0
    except Exception as e:  # keep what was measured; record the failure
        result["status"] = "error"
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        traceback.print_exc()
        rc = 1
    finally:
        result["wall_time_s"] = time.perf_counter() - t_start
        result["load_average_at_end"] = load_average()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=2))
        print(f"gpu_smoke: wrote {out}")
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
    return rc


def _run(args, result: dict) -> None:
    import torch

    gpu = not args.cpu_dry_run
    # one-process "distributed" world for DeepSpeed
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed("nccl" if gpu else "gloo")
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        result["gpu"] = {"name": props.name, "total_memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"}
        result["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    result["deepspeed"] = deepspeed.__version__

    import medlm.modeling as modeling
    from medlm.modeling import MedlmConfig, MedlmForEditing, count_parameters
    from medlm.tokenizer import SpecialIds

    try:
        import flash_attn

        result["flash_attn"] = getattr(flash_attn, "__version__", "installed")
    except Exception:
        result["flash_attn"] = None
    result["attention"] = "flash_attn_varlen" if (gpu and modeling.flash_attn_varlen_func is not None) else "sdpa"

    torch.manual_seed(0)
    max_pos = max(512, args.prompt_len + args.gen_len)
    config = MedlmConfig.preset("small", max_position_embeddings=max_pos)
    special = SpecialIds(mask=config.mask_token_id, delete=config.del_token_id, pad=config.pad_token_id,
                         im_start=3, im_end=4, eos=5)
    model = MedlmForEditing(config).to(device)
    result["model"] = {"preset": "small", "parameters": count_parameters(model), "vocab_size": config.vocab_size,
                       "max_position_embeddings": max_pos}

    sync = torch.cuda.synchronize if gpu else (lambda: None)

    # --- training ------------------------------------------------------------------------------
    rows = synthetic_rows(4, args.row_tokens, args.prompt_len, args.gen_len, special, config.vocab_size)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    engine, train = train_steps(model, rows, device, bf16=gpu, steps=args.train_steps, row_tokens=args.row_tokens)
    if gpu:
        train["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["train"] = train
    print(f"gpu_smoke: train {json.dumps(train)}", flush=True)

    # --- sampling ------------------------------------------------------------------------------
    # A freshly initialised bf16 copy, not the briefly trained one: 20 steps on random tokens teach the
    # model mostly to predict padding, and empty drafts would leave the editor nothing to do. Random
    # weights fill every position and propose edits at every step: the full-work case for throughput.
    del engine
    torch.manual_seed(1)
    model = MedlmForEditing(config).to(device=device, dtype=torch.bfloat16 if gpu else torch.float32)
    model.eval()
    rng = random.Random(1)
    prompts = [[rng.randrange(6, config.vocab_size) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    with torch.no_grad():
        run_sampler(model, prompts[:1], min(args.gen_len, 32), 2, 1, special, sync)  # warm-up kernels
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        me = run_sampler(model, prompts, args.gen_len, args.mask_steps, args.edit_steps, special, sync)
        if gpu:
            me["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["sample_mask_edit"] = me
        print(f"gpu_smoke: mask+edit {json.dumps(me)}", flush=True)
        if args.baseline_mask_steps:
            base = run_sampler(model, prompts, args.gen_len, args.baseline_mask_steps, 0, special, sync)
            result["sample_mask_only"] = base
            result["speedup_vs_mask_only"] = base["total_time_s"] / me["total_time_s"]
            print(f"gpu_smoke: mask-only {json.dumps(base)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
