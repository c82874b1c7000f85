"""The embedded end-to-end demo: every stage of ME-DLM on one machine, with local Ray.

    tokenizer -> toy data -> base model (the shipped one in medlm/base, or trained: mask objective,
      Ray Train + DeepSpeed) -> drafts (Ray Data -> Parquet shards) -> refiner (mask + edit mixture, Ray Train + DeepSpeed)
      -> step-budget table (distributed eval) -> Serve app + one HTTP request -> results/<run>/

Each stage writes ``<out>/stages/<name>.json`` when it finishes; a rerun with the same settings
reuses finished stages, so an interrupted demo picks up where it stopped.

Options beyond the default run: ``from_scratch`` trains the base (and, from the CLI, ships it into
``medlm/base``: ``make base``); ``seeds=N`` repeats the refiner stage with N seeds; ``control=true``
adds the Stage-2 control (the base fine-tuned as long as the refiner on the mask objective alone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pipeline.common.io import write_text_atomic
from pipeline.common.ray_connect import connect_ray

REPO = Path(__file__).resolve().parents[1]
# The time goal is 20 minutes on a host whose plain training loop (medlm.trainer.train_local, `small`,
# two 1,024-token packed rows per step, all cores) runs 6,000 tokens/s, and scales with it (40 at 3,000)
HOST_REFERENCE_TOKENS_PER_S = 6000.0
PROBE_PRESET, PROBE_MAX_LEN, PROBE_ROWS = "small", 1024, 2
# settings added after demo runs were recorded: in a fingerprint only when they differ from their
# default, so stages finished before they existed are still reused
_LATER_SETTINGS = {"draft_start": "masked", "commit_order": "confidence", "loss_weighting": "llada"}


@dataclass
class DemoConfig:
    out: str = "artifacts/demo"  # work folder (checkpoints, shards, training runs)
    results: str = "results"  # results/<run_name>/ gets table.md, results.json, accuracy_vs_nfe.png
    run_name: str = "demo"
    quick: bool = False
    seed: int = 0
    preset: str = "small"
    gen_len: int = 48  # response positions; the longest toy answer is 38 tokens + <|im_end|>
    train_problems: int = 20000  # every arithmetic fact of the held-out problems appears in training
    test_problems: int = 300
    # one worker with both cores: on a 2-core box two 1-thread workers pay a gloo all-reduce per step
    # and reach ~0.65x a plain 2-thread loop; one 2-thread worker keeps the DeepSpeed path near the
    # machine's limit (benchmarks/bench_train.py). On a cluster, raise num_workers.
    num_workers: int = 1
    cpus_per_worker: int = 2
    # ZeRO stage 0 (DeepSpeed's plain data parallelism): one rank has nothing to partition, and ZeRO-2's
    # bookkeeping cost that rank 7-12% of its speed. Raise it with num_workers on a cluster.
    zero_stage: int = 0
    bucket_elements: int = 5_000_000  # DeepSpeed reduce/allgather buckets sized for a CPU box (not 2e8)
    max_len: int = 1024  # tokens per packed training row
    micro_batch_rows: int = 2  # 2 x 1024 tokens (~22 sequences) per optimizer step
    probe_problems: int = 64  # held-out (validation split) problems of the number probe
    # base model: masked diffusion on every valid phrasing
    # lr 3e-4: at 1e-3 the phrasing is learned as fast but copying operands waits on a plateau
    # (benchmarks/train_curve.py; docs/toy-task.md). 6,000 steps (~32 minutes on 2 cores at 6k tokens/s):
    # after 4,800 the computed numbers were still improving (probe arith 0.93) and the phrasing was
    # inconsistent at the full budget (68% phrasing-valid), both short of a competent base model
    base_steps: int = 6000
    base_lr: float = 3e-4
    base_min_lr: float = 1e-5
    # refiner: mixture of mask and edit examples on drafts of the base model
    refine_steps: int = 1500
    refine_lr: float = 1.5e-4  # a restart at a high rate unlearns what the base model knows about numbers
    refine_min_lr: float = 1e-5
    mix_ratio: float = 0.5
    draft_rows: int = 4000
    tokens_per_step: list = field(default_factory=lambda: [2, 4, 8, 16])
    # > 0: draft again from the refiner (`medlm generate --from-run`) and train it this many more steps.
    # 500 lifted mask + edit at 1/8 from 82.0% right to 85.7% (drafts) or 86.0% (online) for 11-15 more
    # minutes on 2 cores, which takes the demo past its 60-minute budget; hence off by default
    regenerate_steps: int = 0
    # how that round gets the refiner's drafts: "drafts" writes them as Parquet shards first (the
    # regeneration users run on a cluster), "online" makes them inside the training loop (objective online)
    regenerate_with: str = "drafts"
    eval_batch_size: int = 50
    eval_actors: int = 2
    serve: bool = True
    # the base model: the shipped one (medlm/base, checked by sha256 before Ray starts) when there is one
    # of this preset; from_scratch=true (`medlm demo --from-scratch`) trains it with the base_* settings
    from_scratch: bool = False
    # the refiner recipe (the lead's A/B decides the defaults): how its training drafts start and commit
    # (pipeline.drafts GenerateConfig) and how its losses are weighted (pipeline.train TrainConfig)
    draft_start: str = "masked"  # masked | partial
    commit_order: str = "confidence"  # confidence | random
    loss_weighting: str = "llada"  # llada | me-dlm
    seeds: int = 1  # > 1: repeat the refiner stage (and its evaluation) with seeds seed+1 ... seed+N-1
    control: bool = False  # add the Stage-2 control: the base fine-tuned refine_steps on the mask objective
    # the host's speed: the plain training loop for this many seconds at the start (0: skip), and the
    # wall-time goal at 6,000 tokens/s, scaled by it
    probe_seconds: float = 5.0
    time_goal_minutes: float = 20.0

    @classmethod
    def quick_preset(cls, **overrides) -> DemoConfig:
        """A few-minute smoke version: tiny model, few steps; numbers mean little."""
        base = dict(quick=True, run_name="demo-quick", preset="tiny", train_problems=400, test_problems=24,
                    base_steps=40, base_lr=3e-3, base_min_lr=3e-4, refine_steps=20, draft_rows=80, max_len=512,
                    micro_batch_rows=1, probe_problems=16, eval_batch_size=24, out="artifacts/demo-quick",
                    time_goal_minutes=5.0)
        base.update(overrides)
        return cls(**base)

    def fingerprint(self, *names: str) -> str:
        data = {n: getattr(self, n) for n in names
                if not (n in _LATER_SETTINGS and getattr(self, n) == _LATER_SETTINGS[n])}
        if "preset" in names:  # a preset whose definition changed must not reuse a model trained from the old one
            from medlm.modeling import PRESETS

            data["preset_definition"] = PRESETS.get(self.preset)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def check(self) -> DemoConfig:
        """Refuse, before Ray starts, a demo that cannot fit; the message names the setting."""
        from medlm.evaluation import budget_table
        from medlm.packing import LOSS_WEIGHTINGS
        from pipeline.drafts.recipe import COMMIT_ORDERS, DRAFT_STARTS

        for name in ("gen_len", "train_problems", "test_problems", "draft_rows", "base_steps", "refine_steps",
                     "num_workers", "max_len", "micro_batch_rows", "probe_problems", "eval_batch_size", "eval_actors",
                     "seeds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"demo config: {name}={getattr(self, name)} must be >= 1")
        if self.regenerate_with not in ("drafts", "online"):
            raise ValueError(f"demo config: regenerate_with={self.regenerate_with!r}; use 'drafts' or 'online'")
        for name, allowed in (("draft_start", DRAFT_STARTS), ("commit_order", COMMIT_ORDERS),
                              ("loss_weighting", LOSS_WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"demo config: {name}={getattr(self, name)!r}; use one of {', '.join(allowed)}")
        if self.seeds > 1 and self.regenerate_steps:
            raise ValueError(f"demo config: seeds={self.seeds} repeats the first refiner stage only; it cannot be "
                             f"combined with regenerate_steps={self.regenerate_steps} (set one of them to its default)")
        if self.probe_seconds < 0 or self.time_goal_minutes <= 0:
            raise ValueError(f"demo config: probe_seconds={self.probe_seconds} must be >= 0 and "
                             f"time_goal_minutes={self.time_goal_minutes} > 0")
        if self.cpus_per_worker <= 0 or self.regenerate_steps < 0:
            raise ValueError(f"demo config: cpus_per_worker={self.cpus_per_worker} must be > 0 and "
                             f"regenerate_steps={self.regenerate_steps} >= 0")
        if self.train_problems < self.num_workers * self.micro_batch_rows:
            raise ValueError(f"demo config: train_problems={self.train_problems} is too few for "
                             f"{self.num_workers} worker(s) x {self.micro_batch_rows} rows")
        if self.draft_rows < self.num_workers:
            raise ValueError(f"demo config: draft_rows={self.draft_rows} is fewer than num_workers={self.num_workers}")
        try:
            budget_table(self.gen_len)  # every fraction down to 1/8 must give its own budget
        except ValueError as e:
            raise ValueError(f"demo config: gen_len={self.gen_len} cannot hold the budget table: {e}") from None
        if self.gen_len >= self.max_len:
            raise ValueError(f"demo config: gen_len={self.gen_len} leaves no room for a prompt in max_len={self.max_len}")
        return self


def check_fits(cfg: DemoConfig, tokenizer, problems) -> None:
    """Every valid answer of ``problems`` (plus <|im_end|>) must fit ``gen_len``: a longer one could
    never be drafted, and training would reject it. Raises naming gen_len and the longest answer."""
    from medlm.tokenizer import response_ids

    longest, text = 0, ""
    for problem in problems:
        for answer in problem.answers:
            n = len(response_ids(tokenizer, answer))
            if n > longest:
                longest, text = n, answer
    if longest > cfg.gen_len:
        raise ValueError(f"demo config: gen_len={cfg.gen_len} is shorter than the longest reference answer "
                         f"({longest} tokens with <|im_end|>): {text!r}; raise gen_len")


class Stages:
    """Runs named stages once; remembers their results in ``<out>/stages``."""

    def __init__(self, out: Path, say: Callable[[str], None]):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []  # stages this invocation did not run

    def run(self, name: str, fingerprint: str, fn: Callable[[], dict], work: Optional[Path] = None) -> dict:
        """``work`` is the folder the stage writes. An interrupted attempt with the same fingerprint resumes
        from it (Ray Train resumes from its last checkpoint); one started under other settings is deleted
        first, so a changed recipe never resumes from a checkpoint of the old one."""
        marker = self.dir / f"{name}.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.say(f"[demo] {name}: reusing the finished stage ({marker})")
                self.timings[name] = float(saved.get("seconds", 0.0))  # what the stage cost when it ran
                self.reused.append(name)
                return saved["result"]
        started = self.dir / f"{name}.started"
        earlier = _earlier_attempt(started, fingerprint)
        spent = 0.0  # by interrupted attempts, each counted up to its last write in ``work``
        if work is not None and work.exists():
            if earlier is None:
                self.say(f"[demo] {name}: settings changed; discarding the earlier attempt in {work}")
                shutil.rmtree(work)
            else:
                self.say(f"[demo] {name}: resuming the interrupted attempt in {work}")
                spent = earlier["before"] + max(0.0, _last_write(work) - earlier["started"])
        write_text_atomic(started, json.dumps({"fingerprint": fingerprint, "started": time.time(), "before": spent}))
        self.say(f"[demo] {name}: running")
        t = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - t + spent
        write_text_atomic(marker, json.dumps({"fingerprint": fingerprint, "result": result, "seconds": self.timings[name],
                                              "earlier_attempts_seconds": spent}, indent=2, default=str))
        self.say(f"[demo] {name}: done in {self.timings[name]:.0f} s")
        return result


def _earlier_attempt(started: Path, fingerprint: str) -> Optional[dict]:
    """What ``<stage>.started`` says of an interrupted attempt under ``fingerprint``: when it started
    and the seconds spent by the attempts before it; None when none ran or it ran under other settings."""
    if not started.exists():
        return None
    text = started.read_text().strip()
    try:
        saved = json.loads(text)
    except json.JSONDecodeError:  # a marker written before attempts were timed: the bare fingerprint
        saved = {"fingerprint": text}
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        return None
    return {"started": float(saved.get("started", started.stat().st_mtime)), "before": float(saved.get("before", 0.0))}


def _last_write(folder: Path) -> float:
    """The newest modification time of anything under ``folder`` (the folder's own when it is empty)."""
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:  # removed while we walked
            pass
    return newest


def _train(cfg: DemoConfig, out: Path, **kwargs) -> dict:
    from pipeline.train import TrainConfig, run_training

    steps = kwargs["max_steps"]
    seed = kwargs.pop("seed", cfg.seed)
    buckets = {"reduce_bucket_size": cfg.bucket_elements, "allgather_bucket_size": cfg.bucket_elements}
    tc = TrainConfig(
        storage_path=str(out / "train"), num_workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker,
        zero_stage=cfg.zero_stage, deepspeed_overrides={"zero_optimization": buckets},
        gen_len=cfg.gen_len, max_len=cfg.max_len, micro_batch_rows=cfg.micro_batch_rows,
        seed=seed, probe="toy", probe_problems=cfg.probe_problems, warmup_steps=max(5, min(100, steps // 20)),
        checkpoint_every=max(50, steps // 4), log_every=max(5, steps // 40), **kwargs,
    )
    res = run_training(tc)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items() if k in (
        "run_dir", "export_dir", "steps", "metrics", "metrics_path", "loss_plot", "rows", "wall_s")}


def choose_base(cfg: DemoConfig, shipped_root: Optional[Path] = None):
    """(the verified shipped base or None, one line saying where this run's base comes from).

    Raises ``medlm.shipped.ShippedBaseError`` (before Ray starts) when a shipped base is damaged or
    incomplete, even for a run that would not use it: the install itself is broken."""
    from medlm.shipped import ShippedBaseError, find_shipped_base, package_base_dir

    where = shipped_root if shipped_root is not None else package_base_dir()
    if cfg.from_scratch:  # also the way to replace a damaged shipped base, so that one does not stop it
        try:
            shipped = find_shipped_base(shipped_root)
            now = f"the shipped one is {shipped.sha256[:16]}" if shipped else "none is shipped"
        except ShippedBaseError as e:
            now = f"the shipped one is unusable: {str(e).split(';')[0]}"
        return None, f"base: training it from scratch ({cfg.base_steps} steps, from_scratch; {now})"
    shipped = find_shipped_base(shipped_root)
    if shipped is None:
        return None, (f"base: none shipped yet ({where} has no PROVENANCE.json); training it from scratch "
                      f"({cfg.base_steps} steps; `make base` ships one)")
    if shipped.provenance.get("preset") != cfg.preset:
        return None, (f"base: the shipped base is a {shipped.provenance.get('preset')!r} model and this run asks for "
                      f"preset {cfg.preset!r}; training it from scratch ({cfg.base_steps} steps)")
    return shipped, shipped.summary() + f" ({shipped.path}); the base_* settings do not apply"


def host_probe(tokenizer_dir: str, work: Path, seconds: float, seed: int = 0) -> dict:
    """The plain single-process training loop's tokens/s on this host (``medlm.trainer.train_local``,
    the ``small`` preset, two 1,024-token packed rows of toy mask examples per step, all cores), the
    figure the time goal is scaled by. Runs in the driver before Ray starts; ~``seconds`` + 10-15 s of
    start-up in a fresh process. ``tokens_per_s`` is the median over the timed steps (at least 3), so one
    step stalled by another process does not set it; ``mean_tokens_per_s`` is tokens over time."""
    import statistics

    import pyarrow.compute as pc
    import torch

    from medlm.checkpoint import new_model
    from medlm.packing import ExampleStream, Packer, collate
    from medlm.tasks.toy import generate_problems, write_jsonl
    from medlm.tokenizer import load_tokenizer, special_ids
    from medlm.trainer import train_local
    from pipeline.common.sources import OK, normalise_records, records_of_file, resolve_sources
    from pipeline.train.batches import MaskRows

    class _Enough(Exception):
        pass

    t_call = time.perf_counter()
    rows_file = work / "host_probe_rows.jsonl"
    if not rows_file.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_jsonl(generate_problems(600, seed=seed, split="train"), rows_file)
    tok = load_tokenizer(tokenizer_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        model = new_model(PROBE_PRESET, tok, seed=seed)
        (source,) = resolve_sources([str(rows_file)])
        table = normalise_records(records_of_file(0, source), checkpoint=tokenizer_dir, gen_len=48,
                                  max_response_len=48, max_total_len=model.config.max_position_embeddings)
        table = table.filter(pc.equal(table["status"], OK))
        stream = ExampleStream("mask", special_ids(tok), gen_len=48, mix_ratio=0.0, seed=seed, rank=0,
                               mask_rows=MaskRows(table))
        packer = Packer(stream, PROBE_MAX_LEN, PROBE_ROWS)
        warm, marks, tokens = 2, [], []

        def next_batch(step: int):
            marks.append(time.perf_counter())  # a step starts when it asks for its batch
            if step >= warm + 3 and marks[-1] - marks[warm] >= seconds:
                raise _Enough
            batch = collate(packer.next_batch()[0])
            tokens.append(batch.n_tokens)
            return batch

        try:
            train_local(model, next_batch, steps=1_000_000, lr=3e-4, warmup=warm, weight_decay=0.01)
        except _Enough:
            pass
    finally:
        torch.set_num_threads(threads)
    timed = len(marks) - 1 - warm  # steps between marks[warm] and the last mark
    rates = [tokens[i] / (marks[i + 1] - marks[i]) for i in range(warm, warm + timed)]
    return {"tokens_per_s": statistics.median(rates), "steps": timed,
            "mean_tokens_per_s": sum(tokens[warm:warm + timed]) / (marks[-1] - marks[warm]),
            "step_tokens_per_s": [round(r) for r in rates], "seconds": marks[-1] - marks[warm],
            "wall_s": time.perf_counter() - t_call, "preset": PROBE_PRESET,
            "rows_per_step": PROBE_ROWS, "max_len": PROBE_MAX_LEN, "threads": os.cpu_count(),
            "load_avg_before": os.getloadavg()}


def time_goal(cfg: DemoConfig, probe: Optional[dict]) -> Optional[dict]:
    """The wall-time goal for this host: ``time_goal_minutes`` at 6,000 tokens/s, scaled by the probe."""
    if not probe or not probe.get("tokens_per_s"):
        return None
    return {"minutes_at_reference": cfg.time_goal_minutes, "reference_tokens_per_s": HOST_REFERENCE_TOKENS_PER_S,
            "seconds": 60 * cfg.time_goal_minutes * HOST_REFERENCE_TOKENS_PER_S / probe["tokens_per_s"]}


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print, *, shipped_root: Optional[Path] = None,
             ship_to: Optional[Path] = None, base_only: bool = False) -> dict:
    """Run every stage (reusing finished ones) and write the results folder; returns results.json.

    ``shipped_root``: where to look for the shipped base (default: the package's ``medlm/base``; tests
    point it at a folder of their own). ``ship_to``: after a base trained here, write it there with its
    provenance (``make base``: the package folder); ``base_only``: stop after that."""
    from medlm.evaluation import budget_table, json_dumps, paired_comparisons, plot_accuracy_vs_nfe, table_markdown
    from medlm.shipped import ShippedBaseError, file_sha256
    from medlm.tasks.toy import generate_problems, write_jsonl
    from medlm.tokenizer import build_default_tokenizer

    cfg.check()
    if (ship_to is not None or base_only) and not cfg.from_scratch:
        raise ValueError("demo: shipping a base (ship_to, base_only) needs from_scratch=true")
    shipped, base_line = choose_base(cfg, shipped_root)  # a damaged shipped base stops here, before Ray
    t_start = time.perf_counter()
    out = (REPO / cfg.out) if not Path(cfg.out).is_absolute() else Path(cfg.out)
    results_dir = ((REPO / cfg.results) if not Path(cfg.results).is_absolute() else Path(cfg.results)) / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, say)
    say(f"[demo] {'quick ' if cfg.quick else ''}demo: work folder {out}, results {results_dir}")
    say(f"[demo] {base_line}")

    # 1. tokenizer + data, made by our own code; the answers must fit gen_len before anything trains
    def make_data() -> dict:
        tok_dir = out / "tokenizer"
        tokenizer = build_default_tokenizer(tok_dir)
        data = out / "data"
        data.mkdir(exist_ok=True)
        train = generate_problems(cfg.train_problems, seed=cfg.seed, split="train")
        drafts = generate_problems(cfg.draft_rows, seed=cfg.seed + 1, split="train")
        check_fits(cfg, tokenizer, generate_problems(cfg.test_problems, seed=cfg.seed, split="test") + drafts
                   + train[:2000])
        write_jsonl(train, data / "train.jsonl")
        write_jsonl(drafts, data / "draft_sources.jsonl")
        return {"tokenizer": str(tok_dir), "train": str(data / "train.jsonl"),
                "draft_sources": str(data / "draft_sources.jsonl")}

    data = stages.run("data", cfg.fingerprint("seed", "train_problems", "draft_rows", "test_problems", "gen_len"),
                      make_data)
    if shipped is not None:  # the data's tokenizer must be the one the shipped base was trained with
        ours, theirs = Path(data["tokenizer"]) / "tokenizer.json", shipped.provenance["files"].get("tokenizer.json")
        if theirs and ours.is_file() and file_sha256(ours) != theirs:
            raise ShippedBaseError(f"the shipped base's tokenizer ({shipped.path}/tokenizer.json) differs from the one "
                                   f"this code builds ({ours}); retrain it with `make base`, or run `medlm demo "
                                   "--from-scratch`")
    probe = None
    if cfg.probe_seconds > 0:
        probe = host_probe(data["tokenizer"], out / "host_probe", cfg.probe_seconds, seed=cfg.seed)
        goal = time_goal(cfg, probe)
        say(f"[demo] host probe: the plain training loop runs {probe['tokens_per_s']:,.0f} tokens/s here "
            f"(load {probe['load_avg_before'][0]:.1f}); time goal {goal['seconds'] / 60:.1f} min "
            f"({cfg.time_goal_minutes:g} min at {HOST_REFERENCE_TOKENS_PER_S:,.0f} tokens/s)")
    # with a dashboard: Ray Train's placement-group cleaner polls the State API, which lives in it; without
    # one it logs "Failed to query Ray Train Controller actor state" every second of training
    connect_ray(log_to_driver=True, configure_logging=True, logging_level="WARNING", include_dashboard=True)
    common = ("seed", "preset", "gen_len", "num_workers", "cpus_per_worker", "zero_stage", "bucket_elements",
              "max_len", "micro_batch_rows")
    pairs = budget_table(cfg.gen_len)

    # 2. base model: the shipped one, or masked diffusion from scratch
    if shipped is not None:
        base = {"export_dir": str(shipped.path), "shipped": True, "sha256": shipped.sha256,
                "steps": shipped.provenance.get("steps"), "metrics": shipped.provenance.get("final_metrics")}
    else:
        base = stages.run(
            "train_base", stages_fp(cfg, data, *common, "base_steps", "base_lr", "base_min_lr"),
            lambda: _train(cfg, out, run_name="base", preset=cfg.preset, tokenizer=data["tokenizer"], objective="mask",
                           sources=[data["train"]], max_steps=cfg.base_steps, lr=cfg.base_lr, min_lr=cfg.base_min_lr),
            work=out / "train" / "base",
        )
    shipped_record = None
    if ship_to is not None:
        shipped_record = ship_base(cfg, base, data, stages, out, Path(ship_to), probe, say)
        if base_only:
            say(f"[demo] base written to {ship_to}; stopping (base only)")
            return shipped_record

    # 3. drafts of the base model, aligned to the closest valid reference, into Parquet shards
    def make_drafts() -> dict:
        from pipeline.drafts import GenerateConfig, run_generate

        summary = run_generate(GenerateConfig(
            source=data["draft_sources"], checkpoint=base["export_dir"], output=str(out / "drafts"), seed=cfg.seed,
            gen_len=cfg.gen_len, tokens_per_step=list(cfg.tokens_per_step), num_actors=cfg.eval_actors,
            batch_size=32, force=True, draft_start=cfg.draft_start, commit_order=cfg.commit_order,
        ), say=say)
        return _draft_result(summary)

    drafts = stages.run("drafts", stages_fp(cfg, base, "draft_rows", "gen_len", "tokens_per_step", "draft_start",
                                            "commit_order"), make_drafts, work=out / "drafts")

    # 4. refiner: the same network on the mask + edit mixture, starting from the base model
    refine_names = (*common, "refine_steps", "refine_lr", "refine_min_lr", "mix_ratio", "loss_weighting")

    def train_refiner(seed: int, run_name: str) -> dict:
        return _train(cfg, out, run_name=run_name, init_from=base["export_dir"], objective="mixture",
                      mix_ratio=cfg.mix_ratio, sources=[data["train"]], draft_runs=[drafts["run_dir"]],
                      max_steps=cfg.refine_steps, lr=cfg.refine_lr, min_lr=cfg.refine_min_lr,
                      loss_weighting=cfg.loss_weighting, seed=seed)

    refined = stages.run("train_refiner", stages_fp(cfg, drafts, *refine_names),
                         lambda: train_refiner(cfg.seed, "refiner"), work=out / "train" / "refiner")
    first_refiner = refined

    # 4b. optional: the refiner drafts again (the regeneration users run with `medlm generate --from-run`)
    #     and trains on its own drafts
    if cfg.regenerate_steps and cfg.regenerate_with == "drafts":
        def regenerate() -> dict:
            from pipeline.drafts import config_from_run, run_generate

            gc = config_from_run(drafts["run_dir"], {"checkpoint": refined["export_dir"], "force": True,
                                                     "num_actors": cfg.eval_actors})
            return _draft_result(run_generate(gc, say=say))

        drafts = stages.run("drafts_regenerated", stages_fp(cfg, refined), regenerate)
        refined = stages.run(
            "train_refiner_regenerated",
            stages_fp(cfg, drafts, *common, "regenerate_steps", "refine_lr", "mix_ratio", "loss_weighting"),
            lambda: _train(cfg, out, run_name="refiner2", init_from=first_refiner["export_dir"], objective="mixture",
                           mix_ratio=cfg.mix_ratio, sources=[data["train"]], draft_runs=[drafts["run_dir"]],
                           max_steps=cfg.regenerate_steps, lr=cfg.refine_lr / 3, min_lr=cfg.refine_min_lr,
                           loss_weighting=cfg.loss_weighting),
            work=out / "train" / "refiner2",
        )
    elif cfg.regenerate_steps:  # online: the refiner drafts inside its own training loop, at the drafts' rates
        refined = stages.run(
            "train_refiner_online",
            stages_fp(cfg, first_refiner, *common, "regenerate_steps", "refine_lr", "mix_ratio", "tokens_per_step",
                      "draft_start", "commit_order", "loss_weighting"),
            lambda: _train(cfg, out, run_name="refiner2_online", init_from=first_refiner["export_dir"],
                           objective="online", mix_ratio=cfg.mix_ratio, sources=[data["train"]],
                           online_tokens_per_step=list(cfg.tokens_per_step), max_steps=cfg.regenerate_steps,
                           lr=cfg.refine_lr / 3, min_lr=cfg.refine_min_lr, online_draft_start=cfg.draft_start,
                           online_commit_order=cfg.commit_order, loss_weighting=cfg.loss_weighting),
            work=out / "train" / "refiner2_online",
        )

    # 5. the step-budget table on held-out problems: the base model decodes mask-only, the refiner
    #    decodes mask + edit (and mask-only, to show what refiner training did to plain decoding)
    def eval_rows(model: str, checkpoint: str, budgets: list) -> list[dict]:
        from pipeline.eval import run_eval

        summary = run_eval(checkpoint, "toy", budgets, n_samples=cfg.test_problems, split="test",
                           batch_size=cfg.eval_batch_size, num_actors=cfg.eval_actors,
                           out_dir=str(out / "eval" / model), seed=cfg.seed, gen_len=cfg.gen_len)
        return [{**r, "model": model} for r in summary["rows"]]

    def evaluate() -> dict:
        rows = []
        runs = [("base", base, [m for m, _ in pairs]), ("refiner", refined, [b for pair in pairs for b in pair])]
        if cfg.regenerate_steps:
            runs.append(("refiner_round1", first_refiner, [e for _, e in pairs]))
        for model, stage, budgets in runs:
            rows += eval_rows(model, stage["export_dir"], budgets)
        return {"rows": rows, "out_dir": str(out / "eval")}

    budget_labels = [b.label for pair in pairs for b in pair]  # a new split reruns the table
    evaluation = stages.run("evaluate", stages_fp(cfg, {"base": base, "refiner": refined, "budgets": budget_labels},
                                                  "test_problems", "gen_len"),
                            evaluate)
    rows = list(evaluation["rows"])

    # 5b. optional: the Stage-2 control, the base fine-tuned as long as the refiner on the mask objective
    #     alone, decoded mask-only at every fraction: it separates the gain from editing from the gain
    #     from training longer
    control = None
    if cfg.control:
        control = stages.run(
            "train_control", stages_fp(cfg, {"base": base, "data": data}, *refine_names),
            lambda: _train(cfg, out, run_name="control", init_from=base["export_dir"], objective="mask",
                           sources=[data["train"]], max_steps=cfg.refine_steps, lr=cfg.refine_lr,
                           min_lr=cfg.refine_min_lr, loss_weighting=cfg.loss_weighting),
            work=out / "train" / "control",
        )
        rows += stages.run("evaluate_control", stages_fp(cfg, {"control": control, "budgets": budget_labels},
                                                         "test_problems", "gen_len"),
                           lambda: {"rows": eval_rows("control", control["export_dir"], [m for m, _ in pairs])})["rows"]

    # 5c. optional: the refiner stage again with other seeds (same base, same drafts), each evaluated
    seed_rows = [r for r in rows if r.get("model") == "refiner"]
    for k in range(1, cfg.seeds):
        seed = cfg.seed + k
        name = f"refiner_seed{seed}"
        rerun = stages.run(f"train_{name}", stages_fp(dataclasses.replace(cfg, seed=seed), drafts, *refine_names),
                           lambda seed=seed, name=name: train_refiner(seed, name), work=out / "train" / name)
        seed_rows += stages.run(
            f"evaluate_{name}", stages_fp(cfg, {name: rerun, "budgets": budget_labels}, "test_problems", "gen_len"),
            lambda name=name, ckpt=rerun["export_dir"]: {
                "rows": eval_rows(name, ckpt, [b for pair in pairs for b in pair])})["rows"]
    seeds_summary = seed_spread(seed_rows, [cfg.seed + k for k in range(cfg.seeds)]) if cfg.seeds > 1 else None

    # 6. Serve: start the app, send one request, shut it down
    served = serve_once(refined["export_dir"], cfg, say) if cfg.serve else None

    table = table_markdown(rows)
    if control is not None:
        table += control_section(rows)
    if seeds_summary is not None:
        table += "\n" + seeds_markdown(seeds_summary)
    plot = plot_accuracy_vs_nfe(rows, results_dir / "accuracy_vs_nfe.png",
                                title=f"held-out toy problems, {cfg.preset} model, gen_len {cfg.gen_len}")
    for stage, res in (("base", base), ("refiner", refined)):
        if res.get("loss_plot") and Path(res["loss_plot"]).exists():
            shutil.copy(res["loss_plot"], results_dir / f"loss_{stage}.png")
    total = time.perf_counter() - t_start
    goal = time_goal(cfg, probe)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "config": dataclasses.asdict(cfg),
        "base": base_line if shipped is None else {"source": "shipped", "sha256": shipped.sha256,
                                                   "path": str(shipped.path), "line": base_line},
        "host_probe_tokens_per_s": probe["tokens_per_s"] if probe else None,
        "host_probe": probe,
        "time_goal_s": goal["seconds"] if goal else None,
        "rows": rows,
        "comparison": compare(rows),
        "paired_comparisons": paired_comparisons(rows, baseline_model="base"),  # every mask + edit row
        "paired_vs_control": ([c for c in paired_comparisons(rows, baseline_model="control")
                               if c["vs_model"] == "control"] if control is not None else None),
        "seeds": seeds_summary,
        "seed_rows": [r for r in seed_rows if r.get("model") != "refiner"] if cfg.seeds > 1 else None,
        "probe": {name: _last_probe(res) for name, res in (("base", base), ("refiner", refined))},
        "stages_seconds": stages.timings,
        "stages_reused": stages.reused,
        "total_seconds": total,  # this invocation (reused stages cost ~0)
        "stages_total_seconds": sum(stages.timings.values()),
        "checkpoints": {"base": base["export_dir"], "refiner": refined["export_dir"],
                        **({"control": control["export_dir"]} if control else {})},
        "shipped_base_written": shipped_record,
        "drafts": drafts,
        "serve": served,
    }
    (results_dir / "table.md").write_text(table + "\n")
    # rows keep every sample's outcomes (one line per list): the intervals and tests recompute from this file
    (results_dir / "results.json").write_text(json_dumps(results) + "\n")
    say("")
    say(table)
    say("")
    for line in comparison_lines(results["comparison"]):
        say(f"[demo] {line}")
    say(f"[demo] stages took {results['stages_total_seconds'] / 60:.1f} min; this run {total / 60:.1f} "
        f"min. Results: {results_dir} (table.md, results.json, {Path(plot).name}); checkpoints: "
        f"{refined['export_dir']}; drafts: {drafts['run_dir']}")
    say(f"[demo] {goal_line(goal, probe, total, results['stages_total_seconds'], stages.reused)}")
    return results


def goal_line(goal: Optional[dict], probe: Optional[dict], total_s: float, stages_s: float, reused: list) -> str:
    """The demo's last line: whether this run met the host-scaled time goal. A run that reused stages is
    judged by the stages' own recorded times, and says so."""
    if goal is None:
        return "time goal: not judged (no host probe: probe_seconds=0)"
    spent, what = (total_s, "this run") if not reused else (stages_s, f"its stages ({len(reused)} reused)")
    verdict = "met" if spent <= goal["seconds"] else "missed"
    return (f"time goal {verdict}: {what} took {spent / 60:.1f} min against {goal['seconds'] / 60:.1f} min "
            f"({goal['minutes_at_reference']:g} min at {goal['reference_tokens_per_s']:,.0f} tokens/s; this host's "
            f"plain loop {probe['tokens_per_s']:,.0f} tokens/s)")


def ship_base(cfg: DemoConfig, base: dict, data: dict, stages: Stages, out: Path, dest: Path,
              probe: Optional[dict], say: Callable[[str], None]) -> dict:
    """Evaluate the freshly trained base mask-only at the full budget and at 1/8 and write it, with its
    provenance, to ``dest`` (``medlm.shipped.write_shipped_base``); returns the provenance record."""
    from medlm.checkpoint import checkpoint_hash
    from medlm.evaluation import budget_table
    from medlm.shipped import write_shipped_base
    from pipeline.eval import run_eval

    ends = [budget_table(cfg.gen_len)[0][0], budget_table(cfg.gen_len)[-1][0]]  # mask-only, full and 1/8

    def evaluate() -> dict:
        summary = run_eval(base["export_dir"], "toy", ends, n_samples=cfg.test_problems, split="test",
                           batch_size=cfg.eval_batch_size, num_actors=cfg.eval_actors,
                           out_dir=str(out / "eval" / "base_to_ship"), seed=cfg.seed, gen_len=cfg.gen_len)
        return {"rows": summary["rows"]}

    rows = stages.run("evaluate_base_to_ship", stages_fp(cfg, base, "test_problems", "gen_len"), evaluate)["rows"]
    kept = [{k: v for k, v in r.items() if k not in ("outcomes", "edit_effects")} for r in rows]
    provenance = {
        "format": 1, "preset": cfg.preset, "commit": _git_commit(), "tree_dirty": _git_dirty(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "make base (medlm demo --from-scratch --base-only)",
        "config": {k: getattr(cfg, k) for k in ("seed", "preset", "gen_len", "train_problems", "num_workers",
                                                 "cpus_per_worker", "zero_stage", "max_len", "micro_batch_rows",
                                                 "base_steps", "base_lr", "base_min_lr", "test_problems")},
        "data_seed": cfg.seed, "steps": base.get("steps"), "wall_s": stages.timings.get("train_base"),
        "final_metrics": base.get("metrics"), "checkpoint_hash": checkpoint_hash(base["export_dir"]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "host_probe_tokens_per_s": probe["tokens_per_s"] if probe else None,
        "mask_only_rows": kept,
    }
    written = write_shipped_base(base["export_dir"], dest, provenance)
    for r in kept:
        say(f"[demo] shipped base, mask-only {r['label']}: right {100 * r['accuracy_after']:.1f}%"
            + (f", valid {100 * r['valid_after']:.1f}%" if r.get("valid_after") is not None else "")
            + f" (n={r['n']})")
    say(f"[demo] base written to {dest} (sha256 {written.sha256[:16]}); commit it to ship it")
    return written.provenance


def seed_spread(rows: list[dict], seeds: list[int]) -> dict:
    """Per refiner row (label), the mean, sample standard deviation, min and max over the seeds of
    right and whole-valid (final)."""
    import statistics

    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, members in by_label.items():
        entry = {"label": label, "kind": members[0]["kind"], "fraction": members[0].get("fraction"),
                 "models": [m["model"] for m in members]}
        for metric, key in (("right", "accuracy_after"), ("valid", "valid_after")):
            values = [float(m[key]) for m in members if m.get(key) is not None]
            if values:
                entry[metric] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                                 "min": min(values), "max": max(values), "values": values}
        out.append(entry)
    out.sort(key=lambda e: (-(e["fraction"] or 0), e["kind"] != "mask_only"))
    return {"seeds": seeds, "rows": out}


def seeds_markdown(summary: dict) -> str:
    def cell(m: Optional[dict]) -> str:
        return "-" if not m else f"{100 * m['mean']:.1f} ± {100 * m['sd']:.1f} ({100 * m['min']:.1f}-{100 * m['max']:.1f})"

    from medlm.evaluation import fraction_label

    lines = [f"Refiner over {len(summary['seeds'])} training seeds ({', '.join(map(str, summary['seeds']))}): "
             "mean ± sample SD (min-max), % of problems", "",
             "| budget | fraction | right | valid |", "|---|---|---|---|"]
    for e in summary["rows"]:
        lines.append(f"| {e['label']} | {fraction_label(e['fraction'])} | {cell(e.get('right'))} | {cell(e.get('valid'))} |")
    return "\n".join(lines) + "\n"


def control_section(rows: list[dict]) -> str:
    """Markdown: every refiner mask + edit row against the control's mask-only rows (paired)."""
    from medlm.evaluation import comparison_table

    subset = [r for r in rows if r.get("model") == "control" or (r.get("model") == "refiner"
                                                                 and r["kind"] == "mask_edit")]
    lines = comparison_table(subset, baseline_model="control")
    if not lines:
        return ""
    return ("\nAgainst the Stage-2 control (the base fine-tuned as long as the refiner on the mask objective "
            "alone, mask-only decoding; paired, same problems):\n\n" + "\n".join(lines) + "\n")


def _draft_result(summary) -> dict:
    return {"run_dir": str(summary.run_dir), "rows_written": summary.rows_written,
            "rows_rejected": summary.rows_rejected, "content_hash": summary.content_hash}


def _git_commit() -> Optional[str]:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _git_dirty() -> Optional[bool]:
    """Whether tracked files differ from the commit (a base trained from uncommitted code says so)."""
    import subprocess

    try:
        return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


def _last_probe(stage: dict) -> Optional[dict]:
    """The number probe at the end of a training stage (copy / arithmetic / word accuracy)."""
    final = stage.get("metrics") or {}
    if final.get("probe_copy") is None:
        return None
    return {k: final.get(f"probe_{k}") for k in ("copy", "arith", "word")} | {"step": final.get("step")}


def stages_fp(cfg: DemoConfig, upstream: dict, *names: str) -> str:
    """Fingerprint of a stage: its own settings plus the upstream stage's result."""
    up = json.dumps(upstream, sort_keys=True, default=str)
    return hashlib.sha256((cfg.fingerprint(*names) + up).encode()).hexdigest()[:12]


def compare(rows: list[dict]) -> list[dict]:
    """At each fraction of the full budget: the base model's mask-only decoding against the refiner's
    mask + edit decoding at equal NFE, with the draft before editing, as numbers and deltas (points).

    Where the rows keep per-sample outcomes, ``paired`` adds the paired differences over the same
    problems (Newcombe 95% interval, exact McNemar p; ``medlm.evaluation.paired_comparisons``)
    against base mask-only at the same budget and at the full budget."""
    from medlm.evaluation import paired_comparisons

    kept = any(r.get("outcomes") for r in rows)
    paired = {(c["vs_label"], c["label"]): c for c in (paired_comparisons(rows, baseline_model="base") if kept else [])
              if c["model"] == "refiner" and c["vs_model"] == "base"}

    def find(model: str, kind: str, fraction: float) -> Optional[dict]:
        for r in rows:
            if r.get("model") == model and r.get("kind") == kind and abs(float(r.get("fraction") or 0) - fraction) < 1e-9:
                return r
        return None

    def pick(r: Optional[dict], when: str) -> Optional[dict]:
        if r is None:
            return None
        return {"right": r.get(f"accuracy_{when}"), "valid": r.get(f"valid_{when}"),
                "skeleton_valid": r.get(f"skeleton_valid_{when}")}

    def points(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else round(100 * (a - b), 1)

    full_row = find("base", "mask_only", 1.0)
    full = pick(full_row, "after")
    out = []
    for fraction in sorted({float(r["fraction"]) for r in rows if r.get("fraction")}, reverse=True):
        mask_only, mask_edit = find("base", "mask_only", fraction), find("refiner", "mask_edit", fraction)
        if mask_only is None or mask_edit is None:
            continue
        base_, edit_, draft_ = pick(mask_only, "after"), pick(mask_edit, "after"), pick(mask_edit, "before")
        out.append({
            "fraction": fraction, "nfe_budget": mask_only["budget_nfe"],
            "mask_only": {**base_, "label": mask_only["label"]},
            "mask_edit": {**edit_, "label": mask_edit["label"], "mean_nfe": mask_edit.get("mean_nfe")},
            "mask_edit_draft": draft_,
            "valid_points_vs_mask_only": points(edit_["valid"], base_["valid"]),
            "phrasing_points_vs_mask_only": points(edit_["skeleton_valid"], base_["skeleton_valid"]),
            "right_points_vs_mask_only": points(edit_["right"], base_["right"]),
            "right_points_vs_full_mask_only": points(edit_["right"], full["right"] if full else None),
            "valid_points_from_editing": points(edit_["valid"], draft_["valid"]),
            "paired": {f"{metric}_vs_{vs}": (paired.get((ref["label"], mask_edit["label"])) or {}).get(metric)
                       for metric in ("right", "valid")
                       for vs, ref in (("mask_only", mask_only), ("full_mask_only", full_row or mask_only))},
        })
    return out


def comparison_lines(comparison: list[dict]) -> list[str]:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def paired(c: dict, key: str) -> str:
        m = (c.get("paired") or {}).get(key)
        if not m:
            return ""
        return f" [{100 * m['ci'][0]:+.1f}, {100 * m['ci'][1]:+.1f}], McNemar p={m['p_value']:.2g}"

    lines = []
    for c in comparison:
        f = "1" if c["fraction"] >= 1 else f"1/{round(1 / c['fraction'])}"
        lines.append(
            f"at {f} NFE ({c['nfe_budget']}): mask-only {pct(c['mask_only']['right'])} right / "
            f"{pct(c['mask_only']['valid'])} valid; mask+edit {pct(c['mask_edit']['right'])} / "
            f"{pct(c['mask_edit']['valid'])} (draft {pct(c['mask_edit_draft']['valid'])} valid): "
            f"{c['valid_points_vs_mask_only']:+.1f} valid points{paired(c, 'valid_vs_mask_only')}, "
            f"{c['phrasing_points_vs_mask_only']:+.1f} phrasing-valid points; right "
            f"{c['right_points_vs_full_mask_only']:+.1f} points{paired(c, 'right_vs_full_mask_only')} vs mask-only "
            "at the full budget")
    return lines


def serve_once(checkpoint: str, cfg: DemoConfig, say: Callable[[str], None]) -> dict:
    """Start the Serve app on a free loopback port, send one /v1/refine request, shut Serve down."""
    import httpx
    from ray import serve

    from medlm.tasks.toy import generate_problems
    from pipeline.serve import run_local

    question = generate_problems(1, seed=cfg.seed + 7, split="test")[0].question
    url = run_local({"checkpoint": checkpoint}, host="127.0.0.1", port=0)
    try:
        from medlm.evaluation import budget_table

        eighth = budget_table(cfg.gen_len)[-1][1]  # the 1/8 mask + edit budget
        body = {"prompt": question, "max_new_tokens": cfg.gen_len, "mask_steps": eighth.mask_steps,
                "edit_steps": eighth.edit_steps, "return_draft": True, "seed": 0}
        reply = httpx.post(f"{url}/v1/refine", json=body, timeout=120).json()
        say(f"[demo] serve: POST {url}/v1/refine {json.dumps({k: body[k] for k in ('mask_steps', 'edit_steps')})}")
        say(f"[demo]   prompt: {question}")
        say(f"[demo]   draft : {reply.get('draft')}")
        say(f"[demo]   text  : {reply.get('text')}")
        say(f"[demo]   nfe {reply.get('nfe')}, edits {reply.get('edits')}")
        return {"url": url, "request": body, "reply": reply}
    finally:
        serve.shutdown()
