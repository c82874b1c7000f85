"""Training throughput and per-rank training state: DeepSpeed ZeRO-1/2/3 against plain PyTorch DDP.

Claims checked (goals from the training issue):
  * ZeRO-3 per-rank state (parameters + gradients + optimizer state) <= 0.6x ZeRO-1's, with 2 workers;
  * DeepSpeed tokens/s >= 0.75x plain DDP's on CPU, at the same settings.

How: the `small` preset (the CPU demo's model), one packed row of ``--max-len`` tokens of masked-
diffusion examples per rank and step, AdamW, clipping 1.0, fp32, gloo. Workers are plain
``torch.multiprocessing`` processes with one intra-op thread each (not Ray Train: its start-up would
dwarf a few seconds of steps, and both contestants must share one process group and one process so
the comparison is like for like). Per world size the processes are started once; every repeat runs
all four set-ups in turn (interleaved, so background load hits all of them alike) and medians are
taken over repeats. The DeepSpeed configs are the checked-in ``cluster/deepspeed/zero<stage>.json``
with the run's batch/lr/precision laid over them (``pipeline.ds_config``), and two knobs sized for
this 2.4M-parameter model instead of LLaDA-8B: communication buckets of 5e5 elements (the files'
5e7-2e8 would allocate a 200-800 MB staging buffer that has nothing to do with the model's state)
and ZeRO-3's ``stage3_param_persistence_threshold`` = 0 (the file's 1e5 only keeps norms whole at
8B, but here it would keep every weight matrix unpartitioned).

State is measured, not estimated: right after ``backward`` of a measured step (parameters, gradients
and optimizer state from the previous steps all alive, activations freed), every tensor reachable by
the garbage collector is listed and the bytes of the distinct storages allocated since the set-up
was built are summed; parameters and optimizer-state storages are also summed apart. DDP uses ``gradient_as_bucket_view=True`` so its
gradient buckets are those visible ``.grad`` tensors.

    python benchmarks/bench_train.py                  # writes benchmarks/results/bench_train.json
    python benchmarks/bench_train.py --repeats 1 --steps 3 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("ddp", "zero1", "zero2", "zero3")
GOAL_STATE_RATIO = 0.6
GOAL_SPEED_RATIO = 0.75
BUCKET = 500_000  # elements; the checked-in 5e7-2e8 (sized for LLaDA-8B) would be a 200-800 MB buffer here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(seed: int):
    from medlm.modeling import MedlmConfig, MedlmForEditing
    import torch

    cfg = MedlmConfig.preset("small", vocab_size=1024, mask_token_id=0, del_token_id=1, pad_token_id=2, eos_token_id=4)
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


def build(mode: str, world: int, lr: float, baseline: dict[int, int]):
    """(step_fn(batch, measure) -> census|None, teardown) for one set-up, on a fresh model."""
    import torch
    from medlm.losses import mixture_loss

    model = make_model(seed=0)
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
    from pipeline.ds_config import deepspeed_config
    from pipeline.train_config import TrainConfig

    stage = int(mode[-1])
    zero = {"reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET}
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=BUCKET)
    overrides = {"zero_optimization": zero}
    cfg = TrainConfig(sources=["bench"], zero_stage=stage, micro_batch_rows=1, grad_accum=1, lr=lr, clip=1.0,
                      deepspeed_overrides=overrides)
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


def worker(rank: int, world: int, port: int, args, out_path: str) -> None:
    import logging

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed  # noqa: F401  (after the process group: DeepSpeed reuses it)

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    batch = make_batch(rank, args.max_len)
    rows = []
    for rep in range(args.repeats):
        for mode in MODES:
            step, teardown = build(mode, world, args.lr, live_storages())
            for _ in range(args.warmup):
                step(batch)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(batch)
            elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            tokens = torch.tensor([float(batch.n_tokens * args.steps)], dtype=torch.float64)
            dist.all_reduce(tokens)
            census = step(batch, measure=True)
            teardown()
            del step, teardown
            gc.collect()
            censuses = [None] * world
            dist.all_gather_object(censuses, census)
            row = {"world": world, "mode": mode, "repeat": rep, "tokens_per_s": float(tokens / elapsed),
                   "state_bytes_per_rank": max(c["total_bytes"] for c in censuses),
                   "param_bytes_per_rank": max(c["param_bytes"] for c in censuses),
                   "optimizer_bytes_per_rank": max(c["optimizer_bytes"] for c in censuses)}
            rows.append(row)
            if rank == 0:
                print(f"[bench] world {world} repeat {rep + 1}/{args.repeats} {mode:5s} "
                      f"{row['tokens_per_s']:8.0f} tok/s  state {row['state_bytes_per_rank'] / 2**20:6.1f} MiB/rank",
                      flush=True)
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))
    dist.destroy_process_group()


def run_world(world: int, args) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def summarise(rows: list[dict]) -> dict:
    med = {}
    for world in sorted({r["world"] for r in rows}):
        for mode in MODES:
            sel = [r for r in rows if r["world"] == world and r["mode"] == mode]
            med[f"{mode}@{world}"] = {
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in sel),
                "state_mib_per_rank": statistics.median(r["state_bytes_per_rank"] for r in sel) / 2**20,
                "param_mib_per_rank": statistics.median(r["param_bytes_per_rank"] for r in sel) / 2**20,
                "optimizer_mib_per_rank": statistics.median(r["optimizer_bytes_per_rank"] for r in sel) / 2**20,
                "repeats": len(sel),
            }
    ratios, goals = {}, {}
    if "zero1@2" in med:
        ratios["zero3_over_zero1_state@2"] = med["zero3@2"]["state_mib_per_rank"] / med["zero1@2"]["state_mib_per_rank"]
        goals["zero3_state_at_most_0.6x_zero1@2"] = ratios["zero3_over_zero1_state@2"] <= GOAL_STATE_RATIO
    for key in med:
        mode, world = key.split("@")
        if mode != "ddp":
            r = med[key]["tokens_per_s"] / med[f"ddp@{world}"]["tokens_per_s"]
            ratios[f"{mode}_over_ddp_tokens_per_s@{world}"] = r
            goals[f"{mode}_tokens_per_s_at_least_0.75x_ddp@{world}"] = r >= GOAL_SPEED_RATIO
    return {"medians": med, "ratios": ratios, "goals_met": goals}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_train.json")
    args = ap.parse_args(argv)

    import deepspeed
    import torch

    t0 = time.time()
    load_before = os.getloadavg()
    rows = []
    for world in args.worlds:
        rows += run_world(world, args)
    result = {
        "benchmark": "bench_train",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "settings": {"preset": "small", "tokens_per_rank_per_step": args.max_len, "steps_timed": args.steps,
                     "warmup_steps": args.warmup, "repeats": args.repeats, "threads_per_rank": 1,
                     "precision": "fp32", "backend": "gloo", "optimizer": "AdamW (torch)", "clip": 1.0,
                     "workers": "torch.multiprocessing.spawn (not Ray Train)",
                     "zero_bucket_elements": BUCKET, "zero3_param_persistence_threshold": 0},
        **summarise(rows),
        "rows": rows,
        "wall_s": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("medians", "ratios", "goals_met")}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
