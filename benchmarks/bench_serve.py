"""Does ``@serve.batch`` pay off, and what does the retrying ingress cost? Closed-loop HTTP load on loopback.

Apps run side by side on one local Ray: ``batched`` and ``unbatched`` are identical except
``max_batch_size`` (16 vs 1); ``direct`` is ``batched`` without the ingress deployment in front of
the model replicas (``ingress: false``: one hop fewer, no retries). For each
concurrency level C (default 1, 4, 16), C clients each send a request as soon as their previous one
returns; after a warm-up round, a fixed number of requests is timed. Every (app, C) pair is measured
in several interleaved repetitions and the medians are reported.

Claims checked (written to benchmarks/results/bench_serve.json), both at C=16 whatever other levels
run (without C=16 in ``--concurrency`` they are reported as not measured):
    * at C=16, batched throughput (requests/s) is at least 3x unbatched;
    * at steady load (C=16, batched) p99 latency is at most 2x p50;
    * at C=16 the ingress hop costs at most 5%: batched throughput >= 0.95 x direct, p50 <= 1.05 x direct
      (medians of the per-rep ratios: each rep runs both apps back to back, which cancels slow drifts of
      the machine's load; each run also records the CPU ms per request of every deployment's replicas).

    python benchmarks/bench_serve.py                        # tiny random checkpoint made here; ~10 min on 2 cores
    python benchmarks/bench_serve.py --checkpoint CKPT --reps 5
    python benchmarks/bench_serve.py --quick                # smoke run, bench_serve.smoke.json
    python benchmarks/bench_serve.py --concurrency 16 --modes batched direct --reps 5 \
        --out benchmarks/results/bench_serve_hop.json       # only the ingress hop's cost
    python benchmarks/bench_serve.py --profile              # in-process, no Ray: bench_serve_profile.json

``--profile`` says what batching can gain before any HTTP: in one process with the replicas' torch
threads, it decodes C = 16 requests (the same prompts, seeds and budget) one at a time and packed
together, and reports CPU time per request, split into model forward and sampler bookkeeping, plus a
forward of one sequence against one of C (its fixed part and the cost each added sequence brings).
CPU time, not wall time: the split stays usable on a busy machine, where the throughput goal is not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import add_quick_flag, start, write_result

MODES = {"batched": 16, "unbatched": 1, "direct": 16}  # mode -> max_batch_size
INGRESS = {"batched": True, "unbatched": True, "direct": False}
HOP_SLACK = 0.05  # the ingress may cost at most this share of throughput and of p50
GOAL_C = 16  # the concurrency both goals are read at


def say(msg: str) -> None:
    print(f"[bench_serve] {msg}", flush=True)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 48 samples is the largest: no interpolation flatters it)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 100)) - 1))]


def prompts(n: int) -> list[str]:
    from medlm.tasks.toy import generate_problems

    return [p.question for p in generate_problems(n, seed=1, split="test")]


async def closed_loop(url: str, concurrency: int, n_requests: int, budget: dict, questions: list[str]) -> dict:
    """``concurrency`` clients, each sending its next request when the last one returns."""
    latencies, tokens, batch_sizes, errors = [], [], [], []
    counter = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                body = {"prompt": questions[i % len(questions)], "seed": i, **budget}
                t0 = time.perf_counter()
                r = await client.post("/v1/refine", json=body)
                dt_s = time.perf_counter() - t0
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                out = r.json()
                latencies.append(dt_s)
                tokens.append(out["usage"]["completion_tokens"])
                batch_sizes.append(out["timing"]["batch_size"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "positions_per_s": round(len(latencies) * budget["max_new_tokens"] / wall, 1),
        "p50_s": round(percentile(latencies, 50), 4) if latencies else None,
        "p99_s": round(percentile(latencies, 99), 4) if latencies else None,
        "mean_batch_size": round(statistics.mean(batch_sizes), 2) if batch_sizes else None,
    }


def replica_pids(app: str) -> dict[str, list[int]]:
    """Deployment name -> process ids of the app's replicas (to read their CPU time)."""
    import ray

    out: dict[str, list[int]] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith(f"SERVE_REPLICA::{app}#"):
            actor = ray.get_actor(a["name"], namespace=a["namespace"])
            out.setdefault(a["name"].split("#")[1], []).append(
                ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))
    return out


def cpu_s(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def median_of(runs: list[dict]) -> dict:
    keys = ["requests_per_s", "tokens_per_s", "positions_per_s", "p50_s", "p99_s", "mean_batch_size"]
    cpu = {d: round(statistics.median(r["cpu_ms_per_request"][d] for r in runs), 3)
           for d in runs[0].get("cpu_ms_per_request", {})}
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in keys} | {
        "cpu_ms_per_request": cpu, "errors": sum(r["errors"] for r in runs), "reps": len(runs)}


def make_checkpoint(preset: str) -> Path:
    from jobs import init_model

    out = Path(tempfile.mkdtemp(prefix="bench_serve_")) / preset
    say(f"writing a random {preset} checkpoint to {out} (medlm init) ...")
    if init_model.cli(["--preset", preset, "--out", str(out)]) != 0:
        raise SystemExit("medlm init failed")
    return out


def decode_split(model, tok, budget: dict, n: int, reps: int) -> dict:
    """CPU ms per request of ``generate`` for n requests one at a time ("alone") and in one packed batch
    ("packed"), each split into model forward and sampler bookkeeping; repeats interleaved, medians."""
    from benchmarks.bench_sampling import TimedModel
    from medlm.sampling import DecodeConfig, generate
    from medlm.tokenizer import chat_prompt_ids, special_ids

    sp = special_ids(tok)
    timed = TimedModel(model, clock=time.process_time)
    ids = [chat_prompt_ids(tok, prompt=q) for q in prompts(n)]
    cfgs = [DecodeConfig(gen_len=budget["max_new_tokens"], mask_steps=budget["mask_steps"],
                         edit_steps=budget["edit_steps"], seed=i) for i in range(n)]
    groups = {"alone": [[i] for i in range(n)], "packed": [list(range(n))]}

    def once(mode: str) -> tuple[float, float]:
        timed.seconds = 0.0
        t0 = time.process_time()
        for g in groups[mode]:
            generate(timed, [ids[i] for i in g], [cfgs[i] for i in g], sp)
        return (time.process_time() - t0) / n, timed.seconds / n

    once("packed")  # warm-up
    runs: dict[str, list] = {m: [] for m in groups}
    for r in range(reps):
        for mode in (("alone", "packed") if r % 2 == 0 else ("packed", "alone")):
            runs[mode].append(once(mode))
    out = {}
    for mode, rs in runs.items():
        total, forward = statistics.median(t for t, _ in rs), statistics.median(f for _, f in rs)
        out[mode] = {"ms_per_request": round(1e3 * total, 2), "forward_ms": round(1e3 * forward, 2),
                     "sampler_ms": round(1e3 * (total - forward), 2)}
    out["packed_gain_per_request"] = round(out["alone"]["ms_per_request"] / out["packed"]["ms_per_request"], 2)
    return out


def forward_split(model, tok, budget: dict, n: int, reps: int) -> dict:
    """CPU ms of one forward over one sequence and over n packed ones (prompt + masked response, logits on
    the response, as a first mask step): the fixed part of a forward and what each added sequence costs.
    Batching can divide only the fixed part, so one sequence's forward over an added one's bounds its gain."""
    import torch

    from medlm.packing import pack
    from medlm.tokenizer import chat_prompt_ids, special_ids

    gen = budget["max_new_tokens"]
    seqs = [chat_prompt_ids(tok, prompt=q) + [special_ids(tok).mask] * gen for q in prompts(n)]

    def once(k: int) -> float:
        ids, cu = pack(seqs[:k])
        index = torch.cat([torch.arange(e - gen, e) for e in cu[1:].tolist()])
        t0 = time.process_time()
        with torch.no_grad():
            model(ids, cu_seqlens=cu, logits_index=index, return_insert=False)
        return time.process_time() - t0

    once(n)  # warm-up
    one = statistics.median(once(1) for _ in range(reps * n))
    many = statistics.median(once(n) for _ in range(reps))
    per_seq = (many - one) / (n - 1)
    return {"one_sequence_ms": round(1e3 * one, 3), f"{n}_sequences_ms": round(1e3 * many, 3),
            "per_added_sequence_ms": round(1e3 * per_seq, 3), "fixed_ms": round(1e3 * (one - per_seq), 3),
            "gain_ceiling": round(one / per_seq, 2)}


def profile(ckpt: Path, budget: dict, torch_threads: int, reps: int) -> dict:
    """In-process, no Ray: what packing GOAL_C requests gains per request (see the module docstring)."""
    import torch

    from medlm.checkpoint import load_checkpoint

    torch.set_num_threads(torch_threads)
    model, tok = load_checkpoint(ckpt)
    decode = decode_split(model, tok, budget, GOAL_C, reps)
    forward = forward_split(model, tok, budget, GOAL_C, reps)
    a, p = decode["alone"], decode["packed"]
    say(f"CPU ms per request, {GOAL_C} alone vs packed: {a['ms_per_request']} vs {p['ms_per_request']} "
        f"({decode['packed_gain_per_request']}x); forward {a['forward_ms']} vs {p['forward_ms']}, "
        f"sampler {a['sampler_ms']} vs {p['sampler_ms']}")
    say(f"one forward: {forward['one_sequence_ms']} ms for one sequence = {forward['fixed_ms']} fixed + "
        f"{forward['per_added_sequence_ms']} per sequence; batching gains at most {forward['gain_ceiling']}x on it")
    return {"clock": "process CPU time (time.process_time)", "requests": GOAL_C, "budget": budget,
            "torch_threads": torch_threads, "reps": reps, "decode": decode, "forward": forward}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="default: a random checkpoint of --preset made here")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=48, help="timed requests per level (at least 10 x C)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--mask-steps", type=int, default=16)
    ap.add_argument("--edit-steps", type=int, default=4)
    ap.add_argument("--torch-threads", type=int, default=1, help="per replica (the proxy and clients need a core)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/bench_serve[_profile][.smoke].json")
    ap.add_argument("--profile", action="store_true",
                    help="only the in-process split of batch-1 vs batched decoding (no Ray, no HTTP)")
    add_quick_flag(ap)
    args = ap.parse_args(argv)
    if args.quick:  # one short round at the goal's concurrency only
        args.concurrency, args.reps, args.requests = [GOAL_C], 1, GOAL_C
        args.max_new_tokens, args.mask_steps, args.edit_steps = 16, 4, 1
    budget = {"max_new_tokens": args.max_new_tokens, "mask_steps": args.mask_steps, "edit_steps": args.edit_steps}
    if args.profile:
        started = start("bench_serve_profile")
        payload = profile(args.checkpoint or make_checkpoint(args.preset), budget, args.torch_threads, args.reps)
        write_result("bench_serve_profile", payload, started=started, quick=args.quick, out=args.out)
        return 0
    started = start("bench_serve")

    import ray
    from ray import serve

    from pipeline.serve import build_app, run_local
    from pipeline.serve.app import free_port
    from pipeline.serve.batching import LINGER_FRACTION

    ckpt = args.checkpoint or make_checkpoint(args.preset)
    questions = prompts(64)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)  # our own Ray, never a shared one
    modes = list(args.modes)
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in args.concurrency} for m in modes}
    try:
        common = {"checkpoint": str(ckpt.resolve()), "torch_threads": args.torch_threads, "num_cpus": 0.5,
                  "max_ongoing_requests": 64, "max_queued_requests": 512}
        port = free_port()
        urls = {}
        for mode in modes:
            app_args = {**common, "max_batch_size": MODES[mode], "ingress": INGRESS[mode]}
            if not urls:
                urls[mode] = run_local(app_args, port=port, app_name=mode, route_prefix=f"/{mode}")
            else:
                serve.run(build_app(app_args), name=mode, route_prefix=f"/{mode}")
                urls[mode] = next(iter(urls.values())).rsplit("/", 1)[0] + f"/{mode}"
        pids = {mode: replica_pids(mode) for mode in modes}
        say(f"apps ready: {urls}; replica processes {pids}; budget {budget}; concurrency {args.concurrency}; "
            f"{args.reps} reps")
        for rep in range(args.reps):
            for c in args.concurrency:
                n = args.requests if args.quick else max(args.requests, 10 * c)
                order = modes if rep % 2 == 0 else modes[::-1]  # interleaved: neither mode always runs first
                for mode, url in ((m, urls[m]) for m in order):
                    asyncio.run(closed_loop(url, c, c, budget, questions))  # warm-up round, not timed
                    before = {d: cpu_s(ps) for d, ps in pids[mode].items()}
                    r = asyncio.run(closed_loop(url, c, n, budget, questions))
                    # CPU ms per answered request in each deployment's replicas: the hop's cost in a unit
                    # that other work on the machine disturbs far less than wall-clock throughput
                    r["cpu_ms_per_request"] = {d: round(1e3 * (cpu_s(ps) - before[d]) / max(1, r["requests"]), 3)
                                               for d, ps in pids[mode].items()}
                    runs[mode][c].append(r)
                    say(f"rep {rep + 1}/{args.reps} C={c:<2} {mode:<9}: {r['requests_per_s']:7.2f} req/s "
                        f"{r['tokens_per_s']:8.1f} tok/s p50 {r['p50_s']:.3f}s p99 {r['p99_s']:.3f}s "
                        f"batch {r['mean_batch_size']} errors {r['errors']} CPU ms/request {r['cpu_ms_per_request']}")
    finally:
        serve.shutdown()
        ray.shutdown()

    medians = {m: {str(c): median_of(rs) for c, rs in by_c.items()} for m, by_c in runs.items()}
    ratios = {}
    for c in args.concurrency:
        for over in ("unbatched", "direct"):
            if "batched" in medians and over in medians:
                ratios[f"throughput_batched_over_{over}_c{c}"] = round(
                    medians["batched"][str(c)]["requests_per_s"] / medians[over][str(c)]["requests_per_s"], 3)
        if "batched" in medians and "direct" in medians:
            ratios[f"p50_batched_over_direct_c{c}"] = round(
                medians["batched"][str(c)]["p50_s"] / medians["direct"][str(c)]["p50_s"], 3)
            # each rep runs both back to back: the median of per-rep ratios cancels slow drifts of the load
            pairs = list(zip(runs["batched"][c], runs["direct"][c]))
            ratios[f"paired_throughput_batched_over_direct_c{c}"] = round(statistics.median(
                b["requests_per_s"] / d["requests_per_s"] for b, d in pairs), 3)
            ratios[f"paired_p50_batched_over_direct_c{c}"] = round(statistics.median(
                b["p50_s"] / d["p50_s"] for b, d in pairs), 3)
        for mode in modes:
            m = medians[mode][str(c)]
            ratios[f"p99_over_p50_{mode}_c{c}"] = round(m["p99_s"] / m["p50_s"], 2) if m["p50_s"] else None
    g = str(GOAL_C)
    measured = g in medians.get("batched", {})

    def goal(key: str, test):
        return test(ratios[key]) if key in ratios and measured else None

    goals = {
        f"batched_throughput_at_least_3x_unbatched_at_c{g}":
            goal(f"throughput_batched_over_unbatched_c{g}", lambda r: r >= 3.0),
        f"p99_at_most_2x_p50_batched_at_c{g}": goal(f"p99_over_p50_batched_c{g}", lambda r: (r or float("inf")) <= 2.0),
        f"ingress_throughput_at_least_{1 - HOP_SLACK:.2f}x_direct_at_c{g}":
            goal(f"paired_throughput_batched_over_direct_c{g}", lambda r: r >= 1 - HOP_SLACK),
        f"ingress_p50_at_most_{1 + HOP_SLACK:.2f}x_direct_at_c{g}":
            goal(f"paired_p50_batched_over_direct_c{g}", lambda r: r <= 1 + HOP_SLACK),
        "no_errors": all(m["errors"] == 0 for by_c in medians.values() for m in by_c.values()),
    }
    payload = {
        "setup": {"checkpoint": str(ckpt), "preset": args.preset if not args.checkpoint else None, "budget": budget,
                  "modes": {m: {"max_batch_size": MODES[m], "ingress": INGRESS[m]} for m in modes},
                  "batch_wait_timeout_s": 0.01, "linger_fraction": LINGER_FRACTION,
                  "torch_threads_per_replica": args.torch_threads,
                  "timed_requests_per_level": {str(c): max(args.requests, 10 * c) for c in args.concurrency},
                  "load": "closed loop over loopback HTTP (httpx), warm-up round per level not timed",
                  "latency": "client-side, request sent to reply parsed; p99 is nearest-rank"},
        "medians": medians,
        "ratios": ratios,
        "goals_met": goals,
        "runs": {m: {str(c): rs for c, rs in by_c.items()} for m, by_c in runs.items()},
    }
    if measured:
        b = medians["batched"][g]
        say(f"medians at C={g}: batched {b['requests_per_s']} req/s, p50 {b['p50_s']}s p99 {b['p99_s']}s "
            f"(p99/p50 {ratios[f'p99_over_p50_batched_c{g}']})")
        for other in ("unbatched", "direct"):
            if other in medians:
                o = medians[other][g]
                say(f"  {other}: {o['requests_per_s']} req/s, p50 {o['p50_s']}s "
                    f"(batched/{other} throughput {ratios[f'throughput_batched_over_{other}_c{g}']}x)")
        if "direct" in medians:
            say(f"  ingress hop, median of per-rep ratios: throughput "
                f"{ratios[f'paired_throughput_batched_over_direct_c{g}']}x, "
                f"p50 {ratios[f'paired_p50_batched_over_direct_c{g}']}x; "
                f"CPU ms/request {b['cpu_ms_per_request']} vs direct {medians['direct'][g]['cpu_ms_per_request']}")
    else:
        say(f"C={g} was not among --concurrency {args.concurrency}: the goals were not measured")
    say(f"goals: {goals}")
    write_result("bench_serve", payload, started=started, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
