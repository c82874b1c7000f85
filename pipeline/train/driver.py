"""Driver side of training: check everything, hand the work to a Ray Train ``TorchTrainer``, collect.

``run_training(cfg)`` is the one entry point (``jobs.train`` and the demo call it). Order matters:
config, starting checkpoint, DeepSpeed config and data are all checked on the driver first, so a
typo or a bad shard stops the job in seconds with a message naming it, before any worker starts.
The run folder ``storage_path/run_name`` is also Ray Train's run folder: a second call with the same
name resumes from its latest checkpoint (Ray Train V2 restores its checkpoint manager from there).
Every path may be an ``s3://`` URI (``pipeline.common.storage``): Ray Train then keeps its
checkpoints on object storage, so a worker group restarted on another node resumes from there.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from medlm.checkpoint import UNTRAINED_HEADS, new_model, save_checkpoint
from medlm.modeling import MedlmConfig
from medlm.tokenizer import build_default_tokenizer, load_tokenizer
from pipeline.common.checkpoints import check_checkpoint_at
from pipeline.common.ray_connect import connect_ray
from pipeline.common.storage import Location, check_writable, local_copy, location, publishing_dir
from pipeline.train.config import TrainConfig
from pipeline.train.data import prepare_data
from pipeline.train.ds_config import deepspeed_config
from pipeline.train.metrics import plot_losses, read_metrics
from pipeline.train.worker import train_loop_per_worker


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Every path resolved on the driver (Ray Train workers run in another working directory) and every
    ``s3://`` URI checked (scheme, bucket name, bucket reachable), before any work starts."""
    def absolute(p):
        return location(p).uri if p else p

    return dataclasses.replace(
        cfg, storage_path=absolute(cfg.storage_path), export_dir=absolute(cfg.export_dir),
        init_from=absolute(cfg.init_from), tokenizer=absolute(cfg.tokenizer),
        deepspeed_config=absolute(cfg.deepspeed_config),
        sources=[absolute(p) for p in cfg.sources], draft_runs=[absolute(p) for p in cfg.draft_runs],
    )


def start_checkpoint(cfg: TrainConfig, run_dir: Location) -> tuple[str, Path]:
    """``init_from`` after checking it, or a from-scratch ``preset`` model written once into the run folder.

    Returns the location workers load (they fetch an ``s3://`` one onto their own node) and a local
    directory with its config and tokenizer for the driver (an ``s3://`` checkpoint is checked in place,
    its weights never downloaded to the driver). Writing the random start into the run folder keeps a resumed run on
    the very same tokenizer and initial weights, and lets every worker load one path.
    """
    if cfg.init_from:
        return cfg.init_from, check_checkpoint_at(cfg.init_from)
    init_dir = run_dir / "init"
    if not (init_dir / "config.json").is_file():
        if cfg.preset == "llada-8b":
            raise ValueError("preset='llada-8b' cannot be trained from scratch here; set init_from to a converted checkpoint")
        tok = load_tokenizer(local_copy(cfg.tokenizer, weights=False)) if cfg.tokenizer else build_default_tokenizer()
        model = new_model(cfg.preset, tok, seed=cfg.seed)
        with publishing_dir(init_dir) as staging:
            save_checkpoint(model, tok, staging, extra={"preset": cfg.preset, "seed": cfg.seed, "trained_steps": 0,
                                                      **UNTRAINED_HEADS})
    return init_dir.uri, check_checkpoint_at(init_dir)


def toy_source(cfg: TrainConfig, run_dir: Location) -> str:
    """The generated toy training set of ``toy_problems`` rows (written once; same seed, same rows)."""
    from medlm.tasks.toy import generate_problems, problems_jsonl

    target = run_dir / f"toy-train-{cfg.toy_problems}-seed{cfg.seed}.jsonl"
    if not target.is_file():
        target.write_text(problems_jsonl(generate_problems(cfg.toy_problems, seed=cfg.seed, split="train")))
    return target.uri


def exported_steps(export: Location) -> int:
    """The trained steps an export records; read in place (an 8B export is not downloaded to check it)."""
    for name in ("config.json", "medlm_meta.json"):
        if not (export / name).is_file():
            raise FileNotFoundError(f"training finished but its export {export} has no {name}")
    return int((export / "medlm_meta.json").read_json()["trained_steps"])


def run_training(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says and return where everything went plus the final numbers.

    Result keys: run_dir, export_dir, steps, metrics (rank 0's at the last checkpoint), checkpoint,
    metrics_path, loss_plot, rows / rows_read / rejected (per dataset and reason), rejects_path,
    wall_s.
    """
    t0 = time.perf_counter()
    cfg = absolute_paths(cfg.check())
    run_dir = cfg.run_dir()
    if cfg.init_from:  # a missing start checkpoint is refused before anything is written
        check_checkpoint_at(cfg.init_from)
    run_dir.mkdir()
    check_writable(run_dir)
    start_uri, start = start_checkpoint(cfg, run_dir)
    model_config = MedlmConfig.from_pretrained(str(start))
    limit = model_config.max_position_embeddings
    if cfg.objective != "edit" and cfg.gen_len >= limit:
        raise ValueError(f"gen_len={cfg.gen_len} leaves no room for a prompt in the model's {limit} positions")
    ds_config = deepspeed_config(cfg, cfg.num_workers)
    if cfg.toy_problems:
        cfg = dataclasses.replace(cfg, sources=[*cfg.sources, toy_source(cfg, run_dir)], toy_problems=0)

    # a local Ray gets its dashboard: Ray Train's placement-group cleaner polls the State API it serves,
    # and without it logs "Failed to query Ray Train Controller actor state" about once a second
    connect_ray(include_dashboard=True)
    prepared = prepare_data(cfg, start_uri, limit, run_dir)
    print(f"[train] {cfg.objective} training of {start_uri} -> {run_dir}: usable rows {prepared.rows}, "
          f"rejected {prepared.rejected or 'none'}, longest example {prepared.longest} tokens (max_len {cfg.max_len})",
          flush=True)
    (run_dir / "train_config.json").write_json({
        "config": dataclasses.asdict(cfg), "start_checkpoint": start_uri, "deepspeed": ds_config,
        "rows": prepared.rows, "rows_read": prepared.read, "rejected": prepared.rejected,
        "draft_runs": prepared.draft_runs,
    })

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": dataclasses.asdict(cfg), "deepspeed": ds_config, "start_checkpoint": start_uri,
            "run_dir": run_dir.uri, "usable_rows": prepared.rows,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=run_dir.parent.path,
            storage_filesystem=None if run_dir.is_local else run_dir.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets=prepared.datasets,
    )
    result = trainer.fit()

    export_dir = cfg.export_path()
    steps = exported_steps(export_dir)
    metrics_path = run_dir / "metrics.jsonl"
    plot = plot_losses(metrics_path, run_dir / "loss.png")
    trained = [r for r in read_metrics(metrics_path) if r.get("event") == "train"]
    rejects = run_dir / "rejects.jsonl"
    return {
        "run_dir": run_dir.uri,
        "export_dir": export_dir.uri,
        "steps": steps,
        "metrics": dict(result.metrics or {}),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics_path": metrics_path.uri,
        "loss_plot": plot.uri if plot else None,
        "first_loss": trained[0]["loss"] if trained else None,
        "last_loss": trained[-1]["loss"] if trained else None,
        "rows": prepared.rows,
        "rows_read": prepared.read,
        "rejected": prepared.rejected,
        "rejects_path": rejects.uri if prepared.rejected else None,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
