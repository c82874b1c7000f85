"""The training job's settings as one dataclass, checked before any worker starts.

`jobs.train` fills it from YAML + ``key=value`` overrides (``jobs.config.load_config``); the demo
builds it in Python and calls ``pipeline.train.driver.run_training``. ``check()`` turns every setting that
cannot work into a ``ValueError`` naming the key, its value and the limit, so a bad config costs
seconds on the driver instead of a failed cluster job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medlm.packing import LOSS_WEIGHTINGS
from pipeline.common.storage import Location, location
from pipeline.drafts.recipe import COMMIT_ORDERS, DRAFT_STARTS

OBJECTIVES = ("mask", "edit", "mixture", "online")
# 0: no partitioning, DeepSpeed's plain data parallelism; with one worker there is nothing to partition
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "bf16", "fp32")
PROBES = ("none", "toy")


@dataclass
class TrainConfig:
    # where: the run folder is storage_path/run_name (Ray Train checkpoints, metrics.jsonl, export/);
    # storage_path, export_dir, init_from, sources and draft_runs may be local paths or s3:// URIs
    run_name: str = "medlm-train"
    storage_path: str = "runs/train"
    export_dir: Optional[str] = None  # default: <run folder>/export

    # starting point: a medlm checkpoint dir, or a preset initialised from scratch
    init_from: Optional[str] = None
    preset: str = "tiny"
    tokenizer: Optional[str] = None  # tokenizer dir for a from-scratch preset; default: build the default one

    # data and objective
    objective: str = "mask"  # mask | edit | mixture | online
    mix_ratio: float = 0.5  # share of examples that are edit examples (mixture, online)
    sources: list[str] = field(default_factory=list)  # JSONL files in any medlm.data format
    toy_problems: int = 0  # > 0: generate this many toy training problems into the run folder as a source
    draft_runs: list[str] = field(default_factory=list)  # Parquet draft run dirs (medlm.drafts.v2)
    max_len: int = 512  # tokens per packed row
    gen_len: int = 64  # response length mask examples are padded to (and online drafts fill)
    online_tokens_per_step: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    # the online drafts' distribution (docs/fidelity.md): start from all masks, or from the mask example's
    # partly masked reference (ME-DLM); commit by confidence or in random order (ME-DLM); and up to
    # online_edit_steps edit steps of the current model before labelling, growing with training progress
    # (ME-DLM's curriculum: step s of max_steps gets int(s / max_steps * (online_edit_steps + 1)))
    online_draft_start: str = "masked"  # masked | partial
    online_commit_order: str = "confidence"  # confidence | random
    online_edit_steps: int = 0
    edit_weight: float = 1.0
    loss_weighting: str = "llada"  # llada | me-dlm (medlm.packing.LOSS_WEIGHTINGS)

    # optimisation
    micro_batch_rows: int = 1  # packed rows of max_len tokens per micro-step and worker
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 10
    max_steps: int = 100
    clip: float = 1.0
    weight_decay: float = 0.01
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU

    # distribution
    zero_stage: int = 2
    deepspeed_config: Optional[str] = None  # default: cluster/deepspeed/zero<stage>.json
    deepspeed_overrides: dict = field(default_factory=dict)  # merged into the DeepSpeed config last
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0

    # checkpoints, failures, logging
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 0
    log_every: int = 10
    # "toy": every log step, also measure how well the model fills in masked numbers of held-out toy
    # answers (medlm.probe: copied operands vs computed results vs words), to see a stalled run early
    probe: str = "none"
    probe_problems: int = 64
    seed: int = 0
    fail_at_step: Optional[int] = None  # test hook: the last worker raises once when reaching this step

    def run_dir(self) -> Location:
        return location(self.storage_path, check=False) / self.run_name

    def export_path(self) -> Location:
        return location(self.export_dir, check=False) if self.export_dir else self.run_dir() / "export"

    def check(self) -> TrainConfig:
        """Raise ValueError naming the first setting that cannot work."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"train config: {msg}")

        need(self.objective in OBJECTIVES, f"objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        need(0.0 <= self.mix_ratio <= 1.0, f"mix_ratio={self.mix_ratio} must lie in [0, 1]")
        need(bool(self.run_name) and "/" not in self.run_name, f"run_name={self.run_name!r} must be a non-empty name without '/'")
        need(self.zero_stage in ZERO_STAGES, f"zero_stage={self.zero_stage} is not one of {ZERO_STAGES}")
        need(self.precision in PRECISIONS, f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        need(not (self.precision == "bf16" and not self.use_gpu), "precision='bf16' needs use_gpu=true (CPU training runs fp32)")
        for name in ("max_len", "gen_len", "micro_batch_rows", "grad_accum", "max_steps", "num_workers",
                     "checkpoint_every", "log_every", "keep_checkpoints"):
            need(int(getattr(self, name)) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        need(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0")
        need(self.max_failures >= -1, f"max_failures={self.max_failures} must be >= 0 (or -1 for unlimited)")
        need(self.lr > 0, f"lr={self.lr} must be > 0")
        need(0 <= self.min_lr <= self.lr, f"min_lr={self.min_lr} must lie in [0, lr={self.lr}]")
        need(self.clip >= 0, f"clip={self.clip} must be >= 0 (0 turns clipping off)")
        need(self.cpus_per_worker > 0, f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        need(self.gen_len < self.max_len, f"gen_len={self.gen_len} leaves no room for a prompt in max_len={self.max_len}")
        need(bool(self.online_tokens_per_step) and all(int(t) >= 1 for t in self.online_tokens_per_step),
             f"online_tokens_per_step={self.online_tokens_per_step} must be a non-empty list of positive ints")
        need(self.online_draft_start in DRAFT_STARTS,
             f"online_draft_start={self.online_draft_start!r} is not one of {', '.join(DRAFT_STARTS)}")
        need(self.online_commit_order in COMMIT_ORDERS,
             f"online_commit_order={self.online_commit_order!r} is not one of {', '.join(COMMIT_ORDERS)}")
        need(self.online_edit_steps >= 0, f"online_edit_steps={self.online_edit_steps} must be >= 0")
        need(self.loss_weighting in LOSS_WEIGHTINGS,
             f"loss_weighting={self.loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
        # under ZeRO-3 every forward pass is collective, so all workers must make the same number; partly
        # masked starts and edit steps that stop early make that number depend on each worker's rows
        need(not (self.objective == "online" and self.zero_stage == 3
                  and (self.online_draft_start == "partial" or self.online_edit_steps > 0)),
             "online_draft_start='partial' and online_edit_steps > 0 make the number of forward passes differ "
             "between workers, which zero_stage=3 cannot run; use zero_stage <= 2")
        need(isinstance(self.deepspeed_overrides, dict), "deepspeed_overrides must be a mapping")
        need(isinstance(self.sources, list) and isinstance(self.draft_runs, list),
             "sources and draft_runs must be lists of paths")
        need(self.probe in PROBES, f"probe={self.probe!r} is not one of {', '.join(PROBES)}")
        need(self.probe_problems >= 1, f"probe_problems={self.probe_problems} must be >= 1")
        need(self.toy_problems >= 0, f"toy_problems={self.toy_problems} must be >= 0")
        needs_sources = self.objective in ("mask", "mixture", "online")
        needs_drafts = self.objective in ("edit", "mixture")
        has_sources = bool(self.sources) or self.toy_problems > 0
        need(not needs_sources or has_sources, f"objective={self.objective!r} needs sources (JSONL files) or toy_problems > 0")
        need(not needs_drafts or bool(self.draft_runs), f"objective={self.objective!r} needs draft_runs (Parquet run dirs)")
        need(needs_sources or not has_sources, f"objective={self.objective!r} does not read sources; remove them or pick mixture")
        need(needs_drafts or not self.draft_runs,
             f"objective={self.objective!r} does not read draft_runs; remove them or pick mixture")
        return self
