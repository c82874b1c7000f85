"""DeepSpeed settings: the checked-in ZeRO JSON as the base, run settings laid over it.

The files under ``cluster/deepspeed/`` hold what does not change between runs (bucket sizes, ZeRO-3
prefetching); batch shape, learning rate, clipping and precision come from the training config so
the two can never disagree. The learning-rate schedule is ``medlm.schedule.cosine_lr``, handed to
DeepSpeed by the worker as a ``LambdaLR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.merge import deep_merge
from pipeline.train.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def base_config_path(cfg: TrainConfig) -> Path:
    if cfg.deepspeed_config:
        path = Path(cfg.deepspeed_config).expanduser()
    else:
        path = REPO_ROOT / "cluster" / "deepspeed" / f"zero{cfg.zero_stage}.json"
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist")
    return path


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The full DeepSpeed config dict for this run (read on the driver, shipped to the workers)."""
    path = base_config_path(cfg)
    base = json.loads(path.read_text())
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cfg.use_gpu)
    run = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_rows,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_rows * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.clip,
        "steps_per_print": 10**9,  # our own progress lines replace DeepSpeed's
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {"params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay}},
        "zero_optimization": {"stage": cfg.zero_stage},
    }
    if not cfg.use_gpu:
        # FusedAdam needs CUDA; torch's AdamW works everywhere
        run["optimizer"]["params"]["torch_adam"] = True
    merged = deep_merge(deep_merge(base, run), cfg.deepspeed_overrides)
    stage = merged.get("zero_optimization", {}).get("stage")
    if stage != cfg.zero_stage:
        raise ValueError(f"deepspeed_overrides set zero_optimization.stage={stage}, but zero_stage={cfg.zero_stage}")
    return merged
