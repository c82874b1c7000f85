"""Training throughput of the Ray Train + DeepSpeed path against a plain PyTorch loop; ZeRO-3 state per rank.

Part 1, speed (goal: each Ray configuration's steady-state tokens/s >= 0.8x the plain loop's):
  plain     ``medlm.trainer.train_local`` in this process with torch.set_num_threads(os.cpu_count()):
            AdamW, clipping 1.0, fp32, ``--rows-per-step`` packed rows per step;
  ray_2x1   ``pipeline.train.driver.run_training`` as the demo calls it (objective mask, ``--rows-per-step``
            packed rows per worker and step as the demo's micro_batch_rows, no accumulation, no
            probe), 2 workers x 1 CPU, ZeRO-2;
  ray_1x2   1 worker x 2 CPUs, ZeRO stage 0 (the demo's: one rank has nothing to partition; the worker
            sets torch threads = cpus_per_worker);
  ray_1x2_zero2  the same worker at ZeRO-2, to show what partitioning's bookkeeping costs one rank.
All start from the same checkpoint (``small`` preset, default tokenizer) and read the same toy
rows through the same code: ``pipeline.common.sources.normalise_records`` -> ``medlm.packing``
``ExampleStream`` + ``Packer`` at the same ``max_len`` / ``gen_len``. The Ray runs use the DeepSpeed
bucket sizes of the CPU config (``deepspeed_overrides`` in jobs/configs/train.yaml; the 2e8 of
cluster/deepspeed/zero2.json are sized for LLaDA-8B). Each run does ``--warmup-steps`` steps that are
not timed, then ``--steps`` timed ones. Reported per configuration (medians over ``--repeats``; the
three run in turn within a repeat, the order rotating, so background load hits them alike):
  * steady-state tokens/s: tokens of the timed steps over their wall time (Ray: from rank 0's
    ``metrics.jsonl``, the log window after warm-up to the last one, so the all-reduce and
    ``ray.train.report`` closing each window are included: here every ``--warmup-steps`` (5) steps,
    where the demo's 600-step run logs every 30);
  * start-up seconds: call -> first step (Ray: ``run_training`` called -> rank 0's ``data`` event, just
    before its loop: data preparation, worker start, process group, DeepSpeed set-up, model load;
    ``ray.init`` is paid once per process and reported apart); tail seconds: last step -> return
    (final checkpoint + export); end-to-end tokens/s over the whole call;
  * ratio to the plain loop, as the median of per-repeat ratios (ratio of medians reported too).

Part 2, state (goal: ZeRO-3 per-rank training state at 2 ranks <= 0.6x the same at 1 rank):
plain ``torch.multiprocessing`` ranks (gloo, one thread each) build DDP / ZeRO-1/2/3 in turn on the
same model; right after ``backward`` of a measured step (parameters, gradients and optimizer state
alive, activations freed) every tensor reachable by the garbage collector is listed and the bytes of
the distinct storages allocated since the set-up was built are summed (parameters and optimizer state
also apart). Buckets here are 5e5 elements: the census counts what scales with the model, and a
5e6-element staging buffer (20 MB) would outweigh this model's own state at either world size. Its
tokens/s are printed for information only (one thread per rank, no Ray).

    python benchmarks/bench_train.py            # ~40 min on an idle 2-core machine; bench_train.json
    python benchmarks/bench_train.py --quick    # smoke run (tiny preset, 1 repeat); bench_train.smoke.json
    python benchmarks/bench_train.py --parts speed --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import add_quick_flag, start, write_result

MODES = ("ddp", "zero1", "zero2", "zero3")
RAY_CONFIGS = {"ray_2x1": {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2},
               "ray_1x2": {"num_workers": 1, "cpus_per_worker": 2, "zero_stage": 0},
               "ray_1x2_zero2": {"num_workers": 1, "cpus_per_worker": 2, "zero_stage": 2}}
GOAL_STATE_RATIO = 0.6  # ZeRO-3 per-rank state, 2 ranks over 1 rank
GOAL_SPEED_RATIO = 0.8  # Ray Train + DeepSpeed steady-state tokens/s over the plain loop
CENSUS_BUCKET = 500_000  # elements (see the module docstring)


# ------------------------------------------------------------------------------------------------
# part 1: the plain loop and the Ray Train path on the same rows


def cpu_deepspeed_overrides() -> dict:
    """``deepspeed_overrides`` of the CPU training config, so the benchmark uses its bucket sizes."""
    import yaml

    return yaml.safe_load((REPO / "jobs" / "configs" / "train.yaml").read_text())["deepspeed_overrides"]


def prepare_inputs(work: Path, preset: str, problems: int) -> tuple[Path, Path]:
    """The shared start checkpoint and toy source file (kept in a reused ``--workdir``: both are seeded)."""
    from medlm.checkpoint import new_model, save_checkpoint
    from medlm.tasks.toy import generate_problems, write_jsonl
    from medlm.tokenizer import build_default_tokenizer

    ckpt = work / f"init-{preset}"
    if not (ckpt / "config.json").exists():
        tok = build_default_tokenizer()
        save_checkpoint(new_model(preset, tok, seed=0), tok, ckpt)
    rows = work / f"toy-train-{problems}.jsonl"
    if not rows.exists():
        write_jsonl(generate_problems(problems, seed=0, split="train"), rows)
    return ckpt, rows


def plain_mask_rows(ckpt: Path, rows_file: Path, gen_len: int):
    """The mask rows a training worker would load, made without Ray by the same functions."""
    import pyarrow.compute as pc

    from medlm.modeling import MedlmConfig
    from pipeline.common.sources import OK, normalise_records, records_of_file, resolve_sources
    from pipeline.train.batches import MaskRows

    limit = MedlmConfig.from_pretrained(str(ckpt)).max_position_embeddings
    (source,) = resolve_sources([str(rows_file)])
    table = normalise_records(records_of_file(0, source), checkpoint=str(ckpt), gen_len=gen_len,
                              max_response_len=gen_len, max_total_len=limit)
    ok = table.filter(pc.equal(table["status"], OK))
    if ok.num_rows == 0:
        raise RuntimeError(f"no usable rows in {rows_file} at gen_len={gen_len}: {set(table['status'].to_pylist())}")
    return MaskRows(ok)


def run_plain(ckpt: Path, rows_file: Path, args) -> dict:
    import torch

    from medlm.checkpoint import load_checkpoint
    from medlm.packing import ExampleStream, Packer, collate
    from medlm.tokenizer import special_ids
    from medlm.trainer import train_local

    t_call = time.perf_counter()
    torch.set_num_threads(os.cpu_count())
    model, tok = load_checkpoint(ckpt)
    stream = ExampleStream("mask", special_ids(tok), gen_len=args.gen_len, mix_ratio=0.5, seed=0, rank=0,
                           mask_rows=plain_mask_rows(ckpt, rows_file, args.gen_len))
    packer = Packer(stream, args.max_len, args.rows_per_step)
    marks, tokens = [], []

    def next_batch(step):
        marks.append(time.perf_counter())  # a step starts when it asks for its batch
        examples, _ = packer.next_batch()
        batch = collate(examples)
        tokens.append(batch.n_tokens)
        return batch

    w = args.warmup_steps
    train_local(model, next_batch, steps=w + args.steps, lr=args.lr, warmup=w, min_lr=args.lr / 10,
                weight_decay=0.01, clip=1.0)
    end = time.perf_counter()
    return {"steady_tokens_per_s": sum(tokens[w:]) / (end - marks[w]), "startup_s": marks[0] - t_call,
            "tail_s": 0.0, "end_to_end_tokens_per_s": sum(tokens) / (end - t_call),
            "tokens_per_step": statistics.mean(tokens), "wall_s": end - t_call, "torch_threads": torch.get_num_threads()}


def run_ray(name: str, run_name: str, ckpt: Path, rows_file: Path, work: Path, overrides: dict, args) -> dict:
    from pipeline.train.config import TrainConfig
    from pipeline.train.driver import run_training
    from pipeline.train.metrics import read_metrics

    w = args.warmup_steps
    cfg = TrainConfig(
        run_name=run_name, storage_path=str(work / "train"), init_from=str(ckpt), objective="mask",
        sources=[str(rows_file)], max_len=args.max_len, gen_len=args.gen_len, micro_batch_rows=args.rows_per_step, grad_accum=1,
        lr=args.lr, min_lr=args.lr / 10, warmup_steps=w, max_steps=w + args.steps,
        deepspeed_overrides=overrides, checkpoint_every=w + args.steps, log_every=w, seed=0, max_failures=0,
        **RAY_CONFIGS[name],
    )
    t_call = time.time()
    result = run_training(cfg)
    t_end = time.time()
    records = read_metrics(Path(result["metrics_path"]))
    data = next(r for r in records if r.get("event") == "data")
    train = [r for r in records if r.get("event") == "train"]
    if len(train) < 2:
        raise RuntimeError(f"{run_name}: {len(train)} log windows in metrics.jsonl; need the warm-up one and a timed one")
    timed = train[1:]  # train[0] closes the warm-up window (steps 1..warmup)
    shutil.rmtree(result["run_dir"], ignore_errors=True)
    return {"steady_tokens_per_s": sum(r["tokens"] for r in timed) / (timed[-1]["time"] - train[0]["time"]),
            "startup_s": data["time"] - t_call, "tail_s": t_end - train[-1]["time"],
            "end_to_end_tokens_per_s": sum(r["tokens"] for r in train) / (t_end - t_call),
            "tokens_per_step": sum(r["tokens"] for r in train) / (w + args.steps), "wall_s": t_end - t_call}


def speed_part(args, work: Path) -> dict:
    import ray

    ckpt, rows_file = prepare_inputs(work, args.preset, args.problems)
    overrides = cpu_deepspeed_overrides()
    t = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=not args.quiet_workers,
             configure_logging=True, logging_level="WARNING")
    ray_init_s = time.perf_counter() - t
    names = [n for n in ("plain", *RAY_CONFIGS) if n in args.configs]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                r = (run_plain(ckpt, rows_file, args) if name == "plain"
                     else run_ray(name, f"{name}-rep{rep}", ckpt, rows_file, work, overrides, args))
                runs[name].append(r)
                print(f"[bench_train] repeat {rep + 1}/{args.repeats} {name:13s} steady {r['steady_tokens_per_s']:7.0f} tok/s "
                      f"start-up {r['startup_s']:5.1f} s tail {r['tail_s']:4.1f} s end-to-end "
                      f"{r['end_to_end_tokens_per_s']:7.0f} tok/s", flush=True)
    finally:
        ray.shutdown()
    med = {n: {k: statistics.median(r[k] for r in rs) for k in
               ("steady_tokens_per_s", "startup_s", "tail_s", "end_to_end_tokens_per_s", "wall_s")}
           for n, rs in runs.items()}
    ratios, goals = {}, {}
    for name in (n for n in RAY_CONFIGS if n in runs and "plain" in runs):
        per_rep = [r["steady_tokens_per_s"] / p["steady_tokens_per_s"] for r, p in zip(runs[name], runs["plain"])]
        ratios[name] = {"steady_over_plain_median_per_repeat": statistics.median(per_rep),
                        "steady_over_plain_per_repeat": [round(x, 3) for x in per_rep],
                        "steady_over_plain_ratio_of_medians":
                            med[name]["steady_tokens_per_s"] / med["plain"]["steady_tokens_per_s"],
                        "end_to_end_over_plain_ratio_of_medians":
                            med[name]["end_to_end_tokens_per_s"] / med["plain"]["end_to_end_tokens_per_s"]}
        goals[f"{name}_steady_tokens_per_s_at_least_{GOAL_SPEED_RATIO}x_plain"] = (
            ratios[name]["steady_over_plain_median_per_repeat"] >= GOAL_SPEED_RATIO)
    return {
        "settings": {"preset": args.preset, "max_len": args.max_len, "gen_len": args.gen_len, "toy_problems": args.problems,
                     "warmup_steps": args.warmup_steps, "timed_steps": args.steps, "repeats": args.repeats, "lr": args.lr,
                     "objective": "mask", "rows_per_step_per_worker": args.rows_per_step, "grad_accum": 1,
                     "deepspeed_overrides": overrides, "ray_configs": {n: RAY_CONFIGS[n] for n in names if n in RAY_CONFIGS},
                     "plain_torch_threads": os.cpu_count(), "precision": "fp32"},
        "ray_init_s": ray_init_s,
        "medians": med,
        "ratios": ratios,
        "goals_met": goals,
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------
# part 2: per-rank training state (torch.multiprocessing ranks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(seed: int, preset: str):
    import torch

    from medlm.modeling import MedlmConfig, MedlmForEditing

    cfg = MedlmConfig.preset(preset, vocab_size=1024, mask_token_id=0, del_token_id=1, pad_token_id=2, eos_token_id=4)
    torch.manual_seed(seed)
    return MedlmForEditing(cfg)


def make_batch(rank: int, max_len: int, gen_len: int = 56, prompt_len: int = 40):
    """One packed row of masked-diffusion examples (fixed per rank), as the training job builds them."""
    from medlm.packing import collate, mask_example
    from medlm.tokenizer import SpecialIds

    special = SpecialIds(mask=0, delete=1, pad=2, im_start=3, im_end=4, eos=5)
    rng = random.Random(rank)
    examples = []
    while sum(len(e["input_ids"]) for e in examples) + prompt_len + gen_len <= max_len:
        prompt = [rng.randrange(6, 1024) for _ in range(prompt_len)]
        target = [rng.randrange(6, 1024) for _ in range(gen_len - 8)] + [special.im_end]
        examples.append(mask_example(prompt, target, special, rng, gen_len=gen_len))
    return collate(examples)


def live_storages() -> dict[int, int]:
    """data_ptr -> bytes of every distinct CPU tensor storage the garbage collector can reach."""
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj) and obj.device.type == "cpu":
                s = obj.untyped_storage()
                if s.nbytes():
                    storages[s.data_ptr()] = s.nbytes()
        except Exception:  # objects that fail to introspect are not tensors we own
            continue
    return storages


def tensor_census(model, optimizer_state_owner, baseline: dict[int, int]) -> dict:
    """Bytes of the storages alive now that were not alive before this set-up was built: all of them,
    the parameters', the optimizer state's. (DeepSpeed engines are not fully released by ``destroy()``;
    the baseline keeps an earlier set-up's leftovers out of this one's count.)"""
    import torch

    def ptr_bytes(t):
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()

    new = {k: v for k, v in live_storages().items() if k not in baseline}
    params = {}
    for p in model.parameters():
        for t in (p, getattr(p, "ds_tensor", None)):
            if t is not None and t.numel():
                k, n = ptr_bytes(t)
                params[k] = n
    opt = {}
    for state in optimizer_state_owner.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel():
                k, n = ptr_bytes(v)
                opt[k] = n
    return {"total_bytes": sum(new.values()), "param_bytes": sum(params.values()),
            "optimizer_bytes": sum(opt.values())}


def build(mode: str, world: int, lr: float, preset: str, baseline: dict[int, int]):
    """(step_fn(batch, measure) -> census|None, teardown) for one set-up, on a fresh model."""
    import torch

    from medlm.losses import mixture_loss

    model = make_model(seed=0, preset=preset)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, gradient_as_bucket_view=True)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)

        def step(batch, measure=False):
            loss = mixture_loss(ddp, batch)["loss"]
            loss.backward()
            census = tensor_census(model, opt, baseline) if measure else None
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=False)  # keep the bucket views, as DDP's buckets persist
            return census

        return step, lambda: None

    import deepspeed

    from pipeline.train.config import TrainConfig
    from pipeline.train.ds_config import deepspeed_config

    stage = int(mode[-1])
    zero = {"reduce_bucket_size": CENSUS_BUCKET, "allgather_bucket_size": CENSUS_BUCKET}
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=CENSUS_BUCKET)
    cfg = TrainConfig(sources=["bench"], zero_stage=stage, micro_batch_rows=1, grad_accum=1, lr=lr, clip=1.0,
                      deepspeed_overrides={"zero_optimization": zero})
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=deepspeed_config(cfg, world))

    def step(batch, measure=False):
        loss = mixture_loss(engine, batch)["loss"]
        engine.backward(loss)
        census = tensor_census(engine.module, engine.basic_optimizer, baseline) if measure else None
        engine.step()
        return census

    def teardown():
        engine.destroy()

    return step, teardown


def census_worker(rank: int, world: int, port: int, args, out_path: str) -> None:
    import logging

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed  # noqa: F401  (after the process group: DeepSpeed reuses it)

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    batch = make_batch(rank, args.census_max_len)
    rows = []
    for mode in args.census_modes:
        step, teardown = build(mode, world, args.lr, args.census_preset, live_storages())
        for _ in range(args.census_warmup):
            step(batch)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.census_steps):
            step(batch)
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        tokens = torch.tensor([float(batch.n_tokens * args.census_steps)], dtype=torch.float64)
        dist.all_reduce(tokens)
        census = step(batch, measure=True)
        teardown()
        del step, teardown
        gc.collect()
        censuses = [None] * world
        dist.all_gather_object(censuses, census)
        row = {"world": world, "mode": mode, "tokens_per_s_info_only": float(tokens / elapsed),
               "state_bytes_per_rank": max(c["total_bytes"] for c in censuses),
               "param_bytes_per_rank": max(c["param_bytes"] for c in censuses),
               "optimizer_bytes_per_rank": max(c["optimizer_bytes"] for c in censuses)}
        rows.append(row)
        if rank == 0:
            print(f"[bench_train] census world {world} {mode:5s} state {row['state_bytes_per_rank'] / 2**20:6.1f} MiB/rank "
                  f"(params {row['param_bytes_per_rank'] / 2**20:.1f}, optimizer {row['optimizer_bytes_per_rank'] / 2**20:.1f}); "
                  f"{row['tokens_per_s_info_only']:.0f} tok/s (info only)", flush=True)
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))
    dist.destroy_process_group()


def run_world(world: int, args) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(census_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def state_part(args) -> dict:
    rows = []
    for world in (1, 2):
        rows += run_world(world, args)
    mib = {f"{r['mode']}@{r['world']}": {"state_mib_per_rank": r["state_bytes_per_rank"] / 2**20,
                                          "param_mib_per_rank": r["param_bytes_per_rank"] / 2**20,
                                          "optimizer_mib_per_rank": r["optimizer_bytes_per_rank"] / 2**20,
                                          "tokens_per_s_info_only": r["tokens_per_s_info_only"]} for r in rows}
    ratios, goals = {}, {}
    if "zero3@1" in mib and "zero3@2" in mib:
        one, two = mib["zero3@1"], mib["zero3@2"]
        ratios["zero3_state_2_ranks_over_1_rank"] = two["state_mib_per_rank"] / one["state_mib_per_rank"]
        ratios["zero3_params_plus_optimizer_2_ranks_over_1_rank"] = (
            (two["param_mib_per_rank"] + two["optimizer_mib_per_rank"])
            / (one["param_mib_per_rank"] + one["optimizer_mib_per_rank"]))
        goals[f"zero3_state_per_rank_2_ranks_at_most_{GOAL_STATE_RATIO}x_1_rank"] = (
            ratios["zero3_state_2_ranks_over_1_rank"] <= GOAL_STATE_RATIO)
    return {"settings": {"preset": args.census_preset, "vocab_size": 1024, "tokens_per_rank_per_step": args.census_max_len,
                         "modes": list(args.census_modes), "warmup_steps": args.census_warmup,
                         "timed_steps": args.census_steps, "bucket_elements": CENSUS_BUCKET,
                         "zero3_param_persistence_threshold": 0, "threads_per_rank": 1, "backend": "gloo",
                         "measured": "storages allocated since the set-up was built, alive right after backward"},
            "per_rank": mib, "ratios": ratios, "goals_met": goals}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=("speed", "state"), default=["speed", "state"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=5, help="also the log window of the Ray runs")
    ap.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    ap.add_argument("--max-len", type=int, default=1024, help="tokens per packed row (the demo's)")
    ap.add_argument("--gen-len", type=int, default=48, help="the demo's")
    ap.add_argument("--rows-per-step", type=int, default=2, help="packed rows per step and worker (the demo's micro_batch_rows)")
    ap.add_argument("--problems", type=int, default=2000, help="toy training rows")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--configs", nargs="+", choices=("plain", *RAY_CONFIGS), default=["plain", *RAY_CONFIGS],
                    help="speed-part configurations (ratios need plain)")
    ap.add_argument("--census-modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--census-preset", default="small")
    ap.add_argument("--census-max-len", type=int, default=512)
    ap.add_argument("--census-warmup", type=int, default=2)
    ap.add_argument("--census-steps", type=int, default=3)
    ap.add_argument("--quiet-workers", action="store_true", help="do not forward the Ray workers' output")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/bench_train[.smoke].json")
    add_quick_flag(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset = args.census_preset = "tiny"
        args.repeats, args.warmup_steps, args.steps, args.problems, args.rows_per_step = 1, 1, 2, 64, 1
        args.max_len, args.census_max_len = 256, 256  # gen_len stays 48: toy answers need it
        args.census_modes, args.census_warmup, args.census_steps = ["zero3"], 1, 1
    started = start("bench_train")

    t0 = time.time()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    payload = {}
    if "speed" in args.parts:
        payload["speed"] = speed_part(args, work)
    if "state" in args.parts:
        payload["state"] = state_part(args)
    payload["goals_met"] = {k: v for part in ("speed", "state") if part in payload
                            for k, v in payload[part]["goals_met"].items()}
    payload["wall_s"] = round(time.time() - t0, 1)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(work / "train", ignore_errors=True)
    import deepspeed

    payload["deepspeed"] = deepspeed.__version__
    print(json.dumps({k: payload[k] for k in ("goals_met",)} | {
        p: {k: payload[p][k] for k in ("medians", "ratios") if k in payload[p]} for p in ("speed",) if p in payload} | {
        "state": {k: payload["state"][k] for k in ("per_rank", "ratios")} if "state" in payload else None}, indent=2))
    write_result("bench_train", payload, started=started, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
