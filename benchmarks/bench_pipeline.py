"""Draft pipeline throughput, align cost and memory: Ray Data (1 and 2 actors) against a plain loop.

Claims measured, in one process and one Ray session so machine noise hits all of them:
  * drafts/s through ``pipeline.drafts.run_generate`` with 1 actor >= 0.8x a plain single-process
    loop over the same rows, model and stage functions with ONE torch thread (like one actor);
  * 2 actors >= 1.6x that plain loop (Ray gets 2 CPUs);
  * the align stage (``align_table`` itself, timed in the plain loop on the same drafts) < 5% of
    the CPU time of the whole pipeline job (driver + raylet + workers, sampled with psutil);
  * peak RSS of the job's process tree with 10x the rows <= 1.2x that with 1x (streaming, not
    buffering whole datasets).
Runs alternate plain / 1 actor / 2 actors for each repetition and report medians. Every Ray run
must produce the plain loop's content hash (same rows, same labels).

Two rates per run, and which one the goals use:
  * end-to-end drafts/s = rows / whole call (Ray: ``run_generate`` from planning to the committed
    run, so reading, normalising, starting the actors and loading their models are all in it;
    ``ray.init`` is paid once per process and reported apart as ``ray_init_s``). THE GOALS USE THIS
    ONE: it is what a user of a 1,000-row job gets, with the fixed costs amortised over the rows.
  * steady-state drafts/s = the rate at which rows reach disk once the first ``rows_per_file`` (64)
    are there: the least-squares slope of rows on disk against time (Ray: the part files' row counts
    and modification times, the align+write tasks closing them as they go; plain: the loop's own
    clock after each batch). ``fixed_s`` = seconds - rows / steady rate is then the run's fixed cost.
The steady-state ratios are reported for information.

    python benchmarks/bench_pipeline.py              # ~1-1.5 h on an idle 2-core machine
    python benchmarks/bench_pipeline.py --quick      # smoke run, bench_pipeline.smoke.json
    python benchmarks/bench_pipeline.py [--rows 1000] [--reps 3] [--preset small] [--gen-len 128] [--memory-rows 60]

Why 1,000 rows: a Ray run pays a fixed start-up (each actor imports torch + transformers and loads
the model, 10-25 CPU-seconds in all on 2 cores), so the plain loop must run for minutes for the
end-to-end ratios to say something about throughput rather than start-up; 128-token drafts at the
paper's 2/4/8/16 tokens per step with the small preset take ~0.3-0.6 s per row on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("CI", "1")  # no progress bars in benchmark output

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import add_quick_flag, median, start, write_result
from medlm.checkpoint import load_checkpoint, new_model, save_checkpoint
from medlm.tasks.toy import generate_problems, write_jsonl
from medlm.tokenizer import build_default_tokenizer, special_ids
from pipeline.common.sources import (
    duplicate_rows,
    first_occurrences,
    normalise_records,
    records_of_file,
    select_rows,
)
from pipeline.drafts import GenerateConfig, plan_run, run_generate
from pipeline.drafts.align import align_table
from pipeline.drafts.shards import DRAFT_SCHEMA, MANIFEST, content_hash
from pipeline.drafts.stages import draft_table


class TreeSampler:
    """Samples RSS (sum) and CPU time of this process and all descendants every ``interval`` s.

    CPU time of a process that exits between samples is kept at its last sampled value.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self.peak_rss = 0
        self.cpu_seen: dict[int, float] = {}
        self.cpu_start: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                self.cpu_seen[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self.cpu_start = dict(self.cpu_seen)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(t - self.cpu_start.get(pid, 0.0) for pid, t in self.cpu_seen.items())


def plain_loop(cfg: GenerateConfig, out_file: Path) -> dict:
    """The same stages, sequentially, in this process: what one would write without Ray."""
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    plan = plan_run(cfg)
    torch.set_num_threads(1)
    model, tok = load_checkpoint(plan.checkpoint)
    sp = special_ids(tok)
    normalised = pa.concat_tables(
        normalise_records(records_of_file(i, s), checkpoint=str(plan.checkpoint), gen_len=cfg.gen_len,
                          max_response_len=plan.max_response_len, max_total_len=plan.max_positions)
        for i, s in enumerate(plan.sources)
    )
    keys = [(r["id"], r["source_index"], r["record_no"])
            for r in normalised.select(["id", "source_index", "record_no", "status"]).to_pylist() if r["status"] == "ok"]
    ok = select_rows(normalised, duplicates=duplicate_rows(first_occurrences(keys), keys), want_ok=True)
    align_cpu = 0.0
    done = []  # (rows on disk, perf_counter) after each batch
    with pq.ParquetWriter(out_file, DRAFT_SCHEMA, compression="zstd") as writer:
        for first in range(0, ok.num_rows, cfg.batch_size):
            drafted = draft_table(model, sp, ok.slice(first, cfg.batch_size), plan.recipe, cfg.tokens_per_forward)
            t = time.process_time()
            aligned = align_table(drafted, del_id=sp.delete)
            align_cpu += time.process_time() - t
            writer.write_table(aligned)
            done.append((first + aligned.num_rows, time.perf_counter()))
    seconds = time.perf_counter() - started
    # the same cut as for the Ray runs: from the first rows_per_file rows on disk to the last row
    steady = rows_per_second([(t, n) for n, t in done if n >= cfg.rows_per_file])
    return {"seconds": seconds, "cpu_s": time.process_time() - cpu_started,
            "load_1min_after": os.getloadavg()[0], "steady_drafts_per_s": steady,
            "rows": ok.num_rows, "align_cpu_s": align_cpu, "content_hash": content_hash([out_file])}


def rows_per_second(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of rows on disk against time. A slope rather than (last - first) / span:
    two align+write tasks often close files at nearly the same moment, which would make the span
    depend on which of a pair happens to come first."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (r - mr) for t, r in points) / var if var > 0 else None


def steady_rate(run_dir: Path) -> float | None:
    """Steady drafts/s of a committed run, from its part files' close times (mtimes) and row counts,
    the first file's close being the start (its rows include the start-up)."""
    files = json.loads((run_dir / MANIFEST).read_text())["files"]
    closed = sorted((os.stat(run_dir / f["name"]).st_mtime, f["rows"]) for f in files)
    points, total = [], 0
    for mtime, rows in closed:
        total += rows
        points.append((mtime, total))
    return rows_per_second(points)


def ray_run(cfg: GenerateConfig, sample_every: float) -> dict:
    """One pipeline job; the sampler runs in this (driver) process, so it samples rarely during timed runs."""
    with TreeSampler(sample_every) as sampler:
        started = time.perf_counter()
        summary = run_generate(cfg, say=lambda m: None)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": summary.rows_written, "content_hash": summary.content_hash,
            "steady_drafts_per_s": steady_rate(Path(summary.run_dir)),
            "tree_cpu_s": sampler.cpu_seconds, "peak_rss_mb": sampler.peak_rss / 2**20,
            "load_1min_after": os.getloadavg()[0]}


def _fmt(x) -> str:
    return f"{x:.2f}" if x else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--memory-rows", type=int, default=60, help="1x rows of the memory comparison (10x = ten times)")
    ap.add_argument("--workdir", type=Path, default=None)
    add_quick_flag(ap)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps, args.preset, args.gen_len, args.memory_rows = 24, 1, "tiny", 48, 4  # toy answers need 48
    started_info = start("bench_pipeline")

    import ray

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    tok = build_default_tokenizer()
    ckpt = work / f"ckpt-{args.preset}"
    save_checkpoint(new_model(args.preset, tok, seed=0), tok, ckpt)
    rows_file = work / "rows.jsonl"
    write_jsonl(generate_problems(args.rows, seed=11), rows_file)
    mem_files = {}
    for scale in (1, 10):
        mem_files[scale] = work / f"memory-{scale}x.jsonl"
        write_jsonl(generate_problems(args.memory_rows * scale, seed=12), mem_files[scale])

    rows_per_file = 8 if args.quick else 64
    base = dict(checkpoint=str(ckpt), output=str(work / "out"), gen_len=args.gen_len, tokens_per_step=[2, 4, 8, 16],
                intermediate_prob=0.25, max_intermediate_edit_steps=2, batch_size=8, rows_per_file=rows_per_file,
                force=True)
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # our own Ray, never a shared one
    ray_init_s = time.perf_counter() - t
    try:
        print(f"warm-up ({args.preset} model, {args.gen_len}-token drafts)", flush=True)
        run_generate(GenerateConfig(source=str(mem_files[1]), run_id="warmup", num_actors=2, **base), say=lambda m: None)
        results: dict[str, list] = {"plain": [], "ray_1_actor": [], "ray_2_actors": []}
        for rep in range(args.reps):
            plain = plain_loop(GenerateConfig(source=str(rows_file), **base), work / f"plain-{rep}.parquet")
            results["plain"].append(plain)
            for n, key in ((1, "ray_1_actor"), (2, "ray_2_actors")):
                results[key].append(ray_run(GenerateConfig(source=str(rows_file), run_id=f"rate-{n}-{rep}",
                                                           num_actors=n, **base), sample_every=1.0))
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{k} {v[-1]['rows'] / v[-1]['seconds']:.2f} drafts/s end-to-end "
                f"({_fmt(v[-1]['steady_drafts_per_s'])} steady)" for k, v in results.items()), flush=True)

        memory = {}
        for scale in (1, 10):
            r = ray_run(GenerateConfig(source=str(mem_files[scale]), run_id=f"memory-{scale}x", num_actors=2,
                                       **{**base, "tokens_per_step": [16], "intermediate_prob": 0.0}),
                       sample_every=0.25)
            memory[f"{scale}x"] = {"rows": r["rows"], "seconds": round(r["seconds"], 2),
                                   "peak_rss_mb": round(r["peak_rss_mb"], 1)}
            print(f"memory {scale}x: {r['rows']} rows, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        ray.shutdown()

    rate = {k: median([r["rows"] / r["seconds"] for r in v]) for k, v in results.items()}
    steady = {k: (median([r["steady_drafts_per_s"] for r in v]) if all(r["steady_drafts_per_s"] for r in v) else None)
              for k, v in results.items()}
    fixed = {k: median([r["seconds"] - r["rows"] / r["steady_drafts_per_s"] for r in v])
             if steady[k] else None for k, v in results.items()}
    align_cpu = median([r["align_cpu_s"] for r in results["plain"]])
    pipeline_cpu = median([r["tree_cpu_s"] for r in results["ray_2_actors"]])
    hashes = {r["content_hash"] for v in results.values() for r in v}
    ratios = {"ray_1_actor_vs_plain": rate["ray_1_actor"] / rate["plain"],
              "ray_2_actors_vs_plain": rate["ray_2_actors"] / rate["plain"],
              "align_share_of_pipeline_cpu": align_cpu / pipeline_cpu,
              "memory_10x_vs_1x": memory["10x"]["peak_rss_mb"] / memory["1x"]["peak_rss_mb"]}
    steady_ratios = {f"{k}_vs_plain": steady[k] / steady["plain"] if steady[k] and steady["plain"] else None
                     for k in ("ray_1_actor", "ray_2_actors")}
    goals = {"ray_1_actor >= 0.8x plain": ratios["ray_1_actor_vs_plain"] >= 0.8,
             "ray_2_actors >= 1.6x plain": ratios["ray_2_actors_vs_plain"] >= 1.6,
             "align < 5% of pipeline CPU": ratios["align_share_of_pipeline_cpu"] < 0.05,
             "peak memory 10x <= 1.2x 1x": ratios["memory_10x_vs_1x"] <= 1.2,
             "all runs give the same content hash": len(hashes) == 1}
    payload = {
        "setup": {"preset": args.preset, "rows": args.rows, "reps": args.reps, "gen_len": args.gen_len,
                  "tokens_per_step": base["tokens_per_step"], "batch_size": base["batch_size"],
                  "rows_per_file": rows_per_file, "memory_rows_1x": args.memory_rows, "ray_num_cpus": 2,
                  "plain_loop_torch_threads": 1, "goals_use": "end-to-end drafts/s (fixed costs amortised over the rows)"},
        "ray_init_s": round(ray_init_s, 2),
        "drafts_per_second_median": {k: round(v, 3) for k, v in rate.items()},
        "steady_drafts_per_second_median": {k: (round(v, 3) if v else None) for k, v in steady.items()},
        "fixed_seconds_median": {k: (round(v, 2) if v is not None else None) for k, v in fixed.items()},
        "steady_ratios_info_only": {k: (round(v, 3) if v else None) for k, v in steady_ratios.items()},
        "seconds_per_run": {k: [round(r["seconds"], 2) for r in v] for k, v in results.items()},
        "machine_load_1min_after_each_run": {k: [round(r["load_1min_after"], 1) for r in v] for k, v in results.items()},
        "cpu_seconds_median": {"plain": round(median([r["cpu_s"] for r in results["plain"]]), 2),
                               **{k: round(median([r["tree_cpu_s"] for r in results[k]]), 2)
                                  for k in ("ray_1_actor", "ray_2_actors")}},
        "align_cpu_seconds_median": round(align_cpu, 3),
        "pipeline_tree_cpu_seconds_median_2_actors": round(pipeline_cpu, 2),
        "memory": memory,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "goals_met": goals,
    }
    write_result("bench_pipeline", payload, started=started_info, quick=args.quick)
    for k, v in goals.items():
        print(f"{'met ' if v else 'MISSED'}  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
