"""The embedded end-to-end demo: every stage of ME-DLM on one machine, with local Ray.

    tokenizer -> toy data -> base model (mask objective, Ray Train + DeepSpeed)
      -> drafts (Ray Data -> Parquet shards) -> refiner (mask + edit mixture, Ray Train + DeepSpeed)
      -> step-budget table (distributed eval) -> Serve app + one HTTP request -> results/<run>/

Each stage writes ``<out>/stages/<name>.json`` when it finishes; a rerun with the same settings
reuses finished stages, so an interrupted demo picks up where it stopped.
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

REPO = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    out: str = "artifacts/demo"  # work folder (checkpoints, shards, training runs)
    results: str = "results"  # results/<run_name>/ gets table.md, results.json, accuracy_vs_nfe.png
    run_name: str = "demo"
    quick: bool = False
    seed: int = 0
    preset: str = "small"
    gen_len: int = 48
    train_problems: int = 3000
    test_problems: int = 150
    num_workers: int = 2
    zero_stage: int = 2
    # base model: masked diffusion on references
    base_steps: int = 600
    base_lr: float = 2e-3
    # refiner: mixture of mask and edit examples on drafts of the base model
    refine_steps: int = 250
    refine_lr: float = 5e-4
    mix_ratio: float = 0.5
    draft_rows: int = 1500
    tokens_per_step: list = field(default_factory=lambda: [2, 4, 8, 16])
    max_len: int = 1024  # tokens per packed training row
    micro_batch_rows: int = 1
    eval_batch_size: int = 32
    eval_actors: int = 2
    serve: bool = True

    @classmethod
    def quick_preset(cls, **overrides) -> "DemoConfig":
        """A 3-minute smoke version: tiny model, few steps; numbers mean little."""
        base = dict(quick=True, run_name="demo-quick", preset="tiny", train_problems=400, test_problems=24,
                    base_steps=40, base_lr=3e-3, refine_steps=20, draft_rows=80, max_len=512, eval_batch_size=40,
                    out="artifacts/demo-quick")
        base.update(overrides)
        return cls(**base)

    def fingerprint(self, *names: str) -> str:
        data = {n: getattr(self, n) for n in names}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Stages:
    """Runs named stages once; remembers their results in ``<out>/stages``."""

    def __init__(self, out: Path, say: Callable[[str], None]):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.timings: dict[str, float] = {}

    def run(self, name: str, fingerprint: str, fn: Callable[[], dict]) -> dict:
        marker = self.dir / f"{name}.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.say(f"[demo] {name}: reusing the finished stage ({marker})")
                self.timings[name] = float(saved.get("seconds", 0.0))  # what the stage cost when it ran
                return saved["result"]
        self.say(f"[demo] {name}: running")
        t = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - t
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "result": result, "seconds": self.timings[name]},
                                  indent=2, default=str))
        tmp.replace(marker)
        self.say(f"[demo] {name}: done in {self.timings[name]:.0f} s")
        return result


def _train(cfg: DemoConfig, out: Path, **kwargs) -> dict:
    from pipeline.train_config import TrainConfig
    from pipeline.trainer import run_training

    tc = TrainConfig(
        storage_path=str(out / "train"), num_workers=cfg.num_workers, zero_stage=cfg.zero_stage,
        gen_len=cfg.gen_len, max_len=cfg.max_len, micro_batch_rows=cfg.micro_batch_rows, seed=cfg.seed,
        checkpoint_every=max(50, kwargs.get("max_steps", 100) // 4), log_every=max(5, kwargs.get("max_steps", 100) // 20),
        **kwargs,
    )
    res = run_training(tc)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items() if k in (
        "run_dir", "export_dir", "steps", "metrics", "metrics_path", "loss_plot", "rows", "wall_s")}


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    """Run every stage (reusing finished ones) and write the results folder; returns results.json."""
    import ray

    from medlm.evaluation import budget_table, plot_accuracy_vs_nfe, table_markdown
    from medlm.tasks.toy import generate_problems, write_jsonl
    from medlm.tokenizer import build_default_tokenizer

    t_start = time.perf_counter()
    out = (REPO / cfg.out) if not Path(cfg.out).is_absolute() else Path(cfg.out)
    results_dir = ((REPO / cfg.results) if not Path(cfg.results).is_absolute() else Path(cfg.results)) / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, say)
    say(f"[demo] {'quick ' if cfg.quick else ''}demo: work folder {out}, results {results_dir}")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=True, configure_logging=True, logging_level="WARNING")

    # 1. tokenizer + data, made by our own code
    def make_data() -> dict:
        tok_dir = out / "tokenizer"
        build_default_tokenizer(tok_dir)
        data = out / "data"
        data.mkdir(exist_ok=True)
        write_jsonl(generate_problems(cfg.train_problems, seed=cfg.seed, split="train"), data / "train.jsonl")
        write_jsonl(generate_problems(cfg.draft_rows, seed=cfg.seed + 1, split="train"), data / "draft_sources.jsonl")
        return {"tokenizer": str(tok_dir), "train": str(data / "train.jsonl"),
                "draft_sources": str(data / "draft_sources.jsonl")}

    data = stages.run("data", cfg.fingerprint("seed", "train_problems", "draft_rows"), make_data)

    # 2. base model: masked diffusion from scratch
    base = stages.run(
        "train_base", cfg.fingerprint("seed", "train_problems", "preset", "base_steps", "base_lr", "gen_len",
                                      "num_workers", "zero_stage", "max_len"),
        lambda: _train(cfg, out, run_name="base", preset=cfg.preset, tokenizer=data["tokenizer"], objective="mask",
                       sources=[data["train"]], max_steps=cfg.base_steps, lr=cfg.base_lr, min_lr=cfg.base_lr / 10,
                       warmup_steps=max(5, cfg.base_steps // 20)),
    )

    # 3. drafts of the base model, aligned to the closest valid reference, into Parquet shards
    def make_drafts() -> dict:
        from pipeline.drafts import GenerateConfig, run_generate

        summary = run_generate(GenerateConfig(
            source=data["draft_sources"], checkpoint=base["export_dir"], output=str(out / "drafts"), seed=cfg.seed,
            gen_len=cfg.gen_len, tokens_per_step=list(cfg.tokens_per_step), num_actors=cfg.num_workers,
            batch_size=32, force=True,
        ), say=say)
        return {"run_dir": str(summary.run_dir), "rows_written": summary.rows_written,
                "rows_rejected": summary.rows_rejected, "content_hash": summary.content_hash}

    drafts = stages.run("drafts", stages_fp(cfg, base, "draft_rows", "gen_len"), make_drafts)

    # 4. refiner: the same network on the mask + edit mixture, starting from the base model
    refined = stages.run(
        "train_refiner", stages_fp(cfg, drafts, "refine_steps", "refine_lr", "mix_ratio"),
        lambda: _train(cfg, out, run_name="refiner", init_from=base["export_dir"], objective="mixture",
                       mix_ratio=cfg.mix_ratio, sources=[data["train"]], draft_runs=[drafts["run_dir"]],
                       max_steps=cfg.refine_steps, lr=cfg.refine_lr, min_lr=cfg.refine_lr / 10,
                       warmup_steps=max(5, cfg.refine_steps // 20)),
    )

    # 5. the step-budget table on held-out problems: mask-only vs mask + edit at equal NFE
    def evaluate() -> dict:
        from pipeline.evaluate import run_eval

        budgets = [b for pair in budget_table(cfg.gen_len) for b in pair]
        summary = run_eval(refined["export_dir"], "toy", budgets, n_samples=cfg.test_problems, split="test",
                           batch_size=cfg.eval_batch_size, num_actors=cfg.eval_actors, out_dir=str(out / "eval"),
                           seed=cfg.seed, gen_len=cfg.gen_len)
        return {"rows": summary["rows"], "out_dir": str(out / "eval")}

    evaluation = stages.run("evaluate", stages_fp(cfg, refined, "test_problems", "gen_len"), evaluate)

    # 6. Serve: start the app, send one request, shut it down
    served = None
    if cfg.serve:
        served = serve_once(refined["export_dir"], cfg, say)

    rows = evaluation["rows"]
    table = table_markdown(rows)
    plot = plot_accuracy_vs_nfe(rows, results_dir / "accuracy_vs_nfe.png",
                                title=f"toy task, {cfg.preset} model, gen_len {cfg.gen_len}")
    for name in ("loss_plot",):
        for stage, res in (("base", base), ("refiner", refined)):
            if res.get(name) and Path(res[name]).exists():
                shutil.copy(res[name], results_dir / f"loss_{stage}.png")
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": dataclasses.asdict(cfg),
        "rows": rows,
        "goal": check_goal(rows),
        "stages_seconds": stages.timings,
        "total_seconds": time.perf_counter() - t_start,  # this invocation (reused stages cost ~0)
        "stages_total_seconds": sum(stages.timings.values()),
        "checkpoints": {"base": base["export_dir"], "refiner": refined["export_dir"]},
        "drafts": drafts,
        "serve": served,
    }
    (results_dir / "table.md").write_text(table + "\n")
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    say("")
    say(table)
    say("")
    say(f"[demo] goal at 1/8 NFE: {results['goal']['verdict']}")
    say(f"[demo] finished in {results['total_seconds'] / 60:.1f} min. Results: {results_dir} "
        f"(table.md, results.json, {Path(plot).name}); checkpoints: {refined['export_dir']}; "
        f"drafts: {drafts['run_dir']}")
    return results


def stages_fp(cfg: DemoConfig, upstream: dict, *names: str) -> str:
    """Fingerprint of a stage: its own settings plus the upstream stage's result."""
    up = json.dumps(upstream, sort_keys=True, default=str)
    return hashlib.sha256((cfg.fingerprint(*names) + up).encode()).hexdigest()[:12]


def check_goal(rows: list[dict]) -> dict:
    """The issue's goal: at 1/8 NFE, mask+edit >= mask-only at full NFE and >= mask-only at 1/8 + 20 points."""
    def acc(kind: str, fraction: float) -> Optional[float]:
        for r in rows:
            if r.get("kind") == kind and abs(float(r.get("fraction") or 0) - fraction) < 1e-9:
                return r.get("accuracy_after")
        return None

    full_mask, eighth_mask, eighth_edit = acc("mask_only", 1.0), acc("mask_only", 0.125), acc("mask_edit", 0.125)
    if None in (full_mask, eighth_mask, eighth_edit):
        return {"verdict": "not measured (budget rows missing)"}
    met_a = eighth_edit >= full_mask
    met_b = eighth_edit >= eighth_mask + 0.20
    verdict = (f"mask+edit at 1/8 = {eighth_edit:.1%} vs mask-only full = {full_mask:.1%} ({'met' if met_a else 'NOT met'}); "
               f"vs mask-only 1/8 = {eighth_mask:.1%}, +{100 * (eighth_edit - eighth_mask):.1f} points "
               f"({'met' if met_b else 'NOT met'}, goal +20)")
    return {"mask_edit_eighth": eighth_edit, "mask_only_full": full_mask, "mask_only_eighth": eighth_mask,
            "at_least_full": met_a, "plus_20_points": met_b, "verdict": verdict}


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
