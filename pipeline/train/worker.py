"""The loop every Ray Train worker runs: DeepSpeed ZeRO around the two-head model, packed batches in.

One optimizer step = ``grad_accum`` micro-steps, each one packed micro-batch of ``micro_batch_rows``
rows; DeepSpeed scales the loss for accumulation, clips and steps the warmup + cosine schedule. Every
``log_every`` steps the window's numbers are summed over workers, appended to ``metrics.jsonl`` and
reported to Ray; every ``checkpoint_every`` steps (and at the end) each worker writes its part of a
DeepSpeed checkpoint to a local folder and reports it, and Ray merges the parts into one checkpoint
directory. A restarted or re-run attempt resumes from ``ray.train.get_checkpoint()``: weights,
optimizer, schedule, step counter and the data streams' positions. At the end the weights are
gathered (parameter by parameter, so ZeRO-3 never needs a whole extra model copy) and exported by
rank 0 in the medlm format. The run folder, the start checkpoint and the export may be on object
storage (``s3://``): each worker fetches the start checkpoint onto its own node, and the export is
published whole (``pipeline.common.storage.publishing_dir``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from medlm.checkpoint import EDIT_EXAMPLES_SEEN, MASK_EXAMPLES_SEEN, load_checkpoint, read_meta, save_checkpoint
from medlm.losses import mixture_loss
from medlm.modeling import MedlmForEditing
from medlm.packing import ExampleStream, Packer, collate
from medlm.probe import number_probe
from medlm.schedule import cosine_lr
from medlm.tokenizer import special_ids
from pipeline.common.storage import Location, local_copy, location, publishing_dir
from pipeline.train.batches import EditRows, MaskRows, load_shard
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import append_metrics
from pipeline.train.online_drafts import curriculum_edit_steps, draft_rate, resolve_drafts

TRAIN_STATE = "train_state.json"  # written by rank 0 into every checkpoint
FAIL_MARKER = ".fail_at_step_done"  # the failure test hook fires only once per run folder
WASTE_WARNING = 0.05


def _import_deepspeed(use_gpu: bool):
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before the first import: it picks the accelerator
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


@dataclass
class Window:
    """Sums over the micro-steps since the last log line; reduced over workers when logged."""

    loss: float = 0.0
    micro: int = 0
    mask_loss: float = 0.0
    mask_seqs: int = 0
    edit_loss: float = 0.0
    edit_seqs: int = 0
    tokens: int = 0
    waste: float = 0.0
    drafts: int = 0
    draft_distance: float = 0.0

    def add(self, terms: dict, batch, waste: float, draft_stats: dict | None) -> None:
        self.loss += float(terms["loss"].detach())
        self.micro += 1
        self.mask_loss += float(terms["mask_loss"].detach()) * batch.n_mask_seqs
        self.mask_seqs += batch.n_mask_seqs
        self.edit_loss += float(terms["edit_loss"].detach()) * batch.n_edit_seqs
        self.edit_seqs += batch.n_edit_seqs
        self.tokens += batch.n_tokens
        self.waste += waste
        if draft_stats and draft_stats["drafts"]:
            self.drafts += draft_stats["drafts"]
            self.draft_distance += draft_stats["draft_distance"] * draft_stats["drafts"]

    def reduce(self, device) -> dict:
        names = list(self.__dataclass_fields__)
        vec = torch.tensor([float(getattr(self, n)) for n in names], dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        s = dict(zip(names, vec.tolist()))
        return {
            "loss": s["loss"] / max(1, s["micro"]),
            "mask_loss": s["mask_loss"] / s["mask_seqs"] if s["mask_seqs"] else None,
            "edit_loss": s["edit_loss"] / s["edit_seqs"] if s["edit_seqs"] else None,
            "packing_waste": s["waste"] / max(1, s["micro"]),
            "tokens": int(s["tokens"]),
            "mask_seqs": int(s["mask_seqs"]),
            "edit_seqs": int(s["edit_seqs"]),
            "drafts": int(s["drafts"]),
            "draft_distance": s["draft_distance"] / s["drafts"] if s["drafts"] else None,
        }


class Worker:
    """State of one training worker; ``run()`` is the whole loop."""

    def __init__(self, config: dict):
        self.cfg = TrainConfig(**config["train"])
        self.run_dir: Location = location(config["run_dir"], check=False)
        self.usable_rows: dict = config["usable_rows"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if not self.cfg.use_gpu:  # one intra-op thread per CPU this worker reserved, whatever torch guessed
            torch.set_num_threads(max(1, int(self.cfg.cpus_per_worker)))
        self.deepspeed = _import_deepspeed(self.cfg.use_gpu)
        self.device = ray.train.torch.get_device() if self.cfg.use_gpu else torch.device("cpu")
        torch.manual_seed(self.cfg.seed + self.rank)

        bf16 = bool(config["deepspeed"].get("bf16", {}).get("enabled"))
        # bf16 halves the host memory of the copy every worker loads before ZeRO partitions it
        start = local_copy(config["start_checkpoint"])
        model, self.tokenizer = load_checkpoint(start, dtype=torch.bfloat16 if bf16 else None)
        # the heads' training history carries over from the start checkpoint (unknown counts stay unknown)
        self.start_meta = read_meta(start) or {}
        self.model_config = model.config
        self.special = special_ids(self.tokenizer)
        model.train()
        cfg = self.cfg

        def lr_factor(step: int) -> float:  # of cfg.lr, which DeepSpeed's optimizer holds
            return cosine_lr(step, base_lr=1.0, warmup=cfg.warmup_steps, total=cfg.max_steps, min_lr=cfg.min_lr / cfg.lr)

        self.engine, *_ = self.deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=config["deepspeed"],
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor),
        )
        self.step = 0
        self.tokens_seen = 0
        self.examples_seen = {MASK_EXAMPLES_SEEN: 0, EDIT_EXAMPLES_SEEN: 0}  # this run's, over all workers
        self.stream_state: dict | None = None
        self._restore()
        self.stream = self._open_stream()
        self.packer = Packer(self.stream, cfg.max_len, cfg.micro_batch_rows)
        self.probe_problems = self._probe_problems()

    def _probe_problems(self) -> list:
        if self.cfg.probe != "toy":
            return []
        from medlm.tasks.toy import generate_problems

        return generate_problems(self.cfg.probe_problems, seed=self.cfg.seed, split="valid")

    def _probe(self) -> dict:
        """The number probe on held-out toy problems. Every rank runs it: under ZeRO-3 a forward pass
        needs all ranks to gather parameters; the ranks see the same problems and agree."""
        if not self.probe_problems:
            return {}
        result = number_probe(self.engine.module, self.tokenizer, self.probe_problems, gen_len=self.cfg.gen_len,
                              seed=self.cfg.seed)
        return {f"probe_{k}": v for k, v in result.items() if k != "n"}

    # -------------------------------------------------------------- resume

    def _restore(self) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / TRAIN_STATE).read_text())
            if state["world_size"] != self.world:
                raise RuntimeError(
                    f"checkpoint {checkpoint.path} was written by {state['world_size']} workers; ZeRO partitions "
                    f"need the same num_workers to resume, got {self.world}"
                )
            self.engine.load_checkpoint(folder, tag=state["tag"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.examples_seen = state.get("examples_seen", self.examples_seen)
        self.stream_state = state["streams"][self.rank]
        if self.rank == 0:
            print(f"[train] resumed from {checkpoint.path} at step {self.step}", flush=True)
            append_metrics(self.run_dir / "metrics.jsonl", {"event": "resume", "step": self.step,
                                                           "checkpoint": str(checkpoint.path)})

    # -------------------------------------------------------------- data

    def _open_stream(self) -> ExampleStream:
        cfg = self.cfg
        tables = {name: load_shard(ray.train.get_dataset_shard(name)) for name in sorted(self.usable_rows)}
        counts = torch.tensor([float(tables[n].num_rows) for n in sorted(tables)], dtype=torch.float64,
                              device=self._comm_device())
        dist.all_reduce(counts)
        if self.rank == 0:
            seen = dict(zip(sorted(tables), (int(c) for c in counts.tolist())))
            dropped = {n: self.usable_rows[n] - seen[n] for n in seen}
            print(f"[train] rows per dataset over {self.world} workers: {seen}; usable rows {self.usable_rows}; "
                  f"left out by the equal split: {dropped}", flush=True)
            append_metrics(self.run_dir / "metrics.jsonl", {"event": "data", "step": self.step, "rows_seen": seen,
                                                           "usable_rows": self.usable_rows, "dropped_by_split": dropped})
        for name, table in tables.items():
            if table.num_rows == 0:
                raise RuntimeError(f"worker {self.rank} received no rows of the {name} dataset")
        return ExampleStream(
            cfg.objective, self.special, gen_len=cfg.gen_len, mix_ratio=cfg.mix_ratio, seed=cfg.seed, rank=self.rank,
            mask_rows=MaskRows(tables["mask"]) if "mask" in tables else None,
            edit_rows=EditRows(tables["edit"]) if "edit" in tables else None,
            state=self.stream_state, loss_weighting=cfg.loss_weighting,
        )

    def _comm_device(self):
        return self.device if self.cfg.use_gpu else torch.device("cpu")

    def _micro_batch(self, micro: int):
        examples, waste = self.packer.next_batch()
        stats = None
        if self.cfg.objective == "online":
            rate = draft_rate(self.cfg.seed, self.step, micro, self.cfg.online_tokens_per_step)
            examples, stats = resolve_drafts(
                self.engine.module, examples, self.special, gen_len=self.cfg.gen_len, tokens_per_step=rate,
                seed=self.cfg.seed + self.step, start=self.cfg.online_draft_start,
                commit_order=self.cfg.online_commit_order,
                edit_steps=curriculum_edit_steps(self.step, self.cfg.max_steps, self.cfg.online_edit_steps),
                loss_weighting=self.cfg.loss_weighting,
            )
        return collate(examples).to(self.device), waste, stats

    # -------------------------------------------------------------- checkpoints and export

    def _save_checkpoint(self, metrics: dict) -> None:
        streams = [None] * self.world
        dist.all_gather_object(streams, self.stream.state())
        tag = f"step{self.step:07d}"
        folder = tempfile.mkdtemp(prefix=f"medlm-ckpt-rank{self.rank}-")
        try:
            self.engine.save_checkpoint(folder, tag=tag)
            if self.rank == 0:
                state = {"step": self.step, "tag": tag, "world_size": self.world, "tokens_seen": self.tokens_seen,
                         "examples_seen": self.examples_seen, "streams": streams, "objective": self.cfg.objective,
                         "zero_stage": self.cfg.zero_stage}
                (Path(folder) / TRAIN_STATE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{tag}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def export(self) -> Location | None:
        """Gather the full weights and let rank 0 publish them as a medlm checkpoint (whole or not at all)."""
        module = self.engine.module
        state = {}
        # remove_duplicate=False: a tied token head shares the embedding's tensor and would otherwise be
        # missing from the state
        for name, param in module.named_parameters(remove_duplicate=False):
            with self.deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if self.rank == 0:
                    state[name] = param.detach().to("cpu", copy=True)
        if self.rank != 0:
            return None
        with torch.device("meta"):
            fresh = MedlmForEditing(self.model_config)
        fresh.load_state_dict(state, strict=True, assign=True)
        if self.model_config.tie_word_embeddings:
            fresh.tie_weights()  # assign=True gave the head its own copy; share the tensor again
        target = self.cfg.export_path()
        with publishing_dir(target) as staging:
            save_checkpoint(fresh, self.tokenizer, staging, extra={
                "trained_steps": self.step, "tokens_seen": self.tokens_seen, "objective": self.cfg.objective,
                "run_name": self.cfg.run_name, "zero_stage": self.cfg.zero_stage, "num_workers": self.world,
                **self._heads_history(),
            })
        print(f"[train] exported step {self.step} to {target}", flush=True)
        return target

    def _heads_history(self) -> dict:
        """Examples each head was trained on, the start checkpoint's plus this run's. Where the start
        checkpoint does not say (made by other code), this run's count is a lower bound, and 0 stays unknown."""
        out = {}
        for key, seen in self.examples_seen.items():
            before = self.start_meta.get(key)
            out[key] = int(before) + int(seen) if before is not None else (int(seen) or None)
        return out

    # -------------------------------------------------------------- the loop

    def _maybe_fail(self) -> None:
        cfg = self.cfg
        if cfg.fail_at_step is None or self.step != cfg.fail_at_step or self.rank != self.world - 1:
            return
        marker = self.run_dir / FAIL_MARKER
        if marker.is_file():
            return
        marker.write_text(f"worker {self.rank} raised at step {self.step}\n")
        raise RuntimeError(f"fail_at_step={cfg.fail_at_step}: test hook, worker {self.rank} dies once")

    def run(self) -> None:
        cfg = self.cfg
        window = Window()
        t_window = time.perf_counter()
        metrics_path = self.run_dir / "metrics.jsonl"
        while self.step < cfg.max_steps:
            self._maybe_fail()
            for micro in range(cfg.grad_accum):
                batch, waste, stats = self._micro_batch(micro)
                terms = mixture_loss(self.engine, batch, edit_weight=cfg.edit_weight)
                self.engine.backward(terms["loss"])
                self.engine.step()
                window.add(terms, batch, waste, stats)
            self.step += 1
            last = self.step == cfg.max_steps
            to_log = self.step % cfg.log_every == 0 or last
            to_save = self.step % cfg.checkpoint_every == 0 or last
            if not (to_log or to_save):
                continue
            summary = window.reduce(self._comm_device())
            elapsed = time.perf_counter() - t_window
            self.tokens_seen += summary["tokens"]
            self.examples_seen[MASK_EXAMPLES_SEEN] += summary["mask_seqs"]
            self.examples_seen[EDIT_EXAMPLES_SEEN] += summary["edit_seqs"]
            grad_norm = self.engine.get_global_grad_norm()
            metrics = {
                "step": self.step, **summary, "lr": float(self.engine.get_lr()[0]),
                "tokens_per_s": summary["tokens"] / max(elapsed, 1e-9), "tokens_seen": self.tokens_seen,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                **self._probe(),
            }
            if self.rank == 0:
                append_metrics(metrics_path, {"event": "train", **metrics})
                edit = f" edit {metrics['edit_loss']:.4f}" if metrics["edit_loss"] is not None else ""
                mask = f" mask {metrics['mask_loss']:.4f}" if metrics["mask_loss"] is not None else ""
                probe = "".join(f" {k[6:]} {metrics[k]:.2f}" for k in ("probe_copy", "probe_arith", "probe_word")
                                if metrics.get(k) is not None)
                print(f"[train] step {self.step}/{cfg.max_steps} loss {metrics['loss']:.4f}{mask}{edit} "
                      f"lr {metrics['lr']:.2e} tok/s {metrics['tokens_per_s']:.0f} "
                      f"waste {100 * metrics['packing_waste']:.1f}%{probe}", flush=True)
                if metrics["packing_waste"] > WASTE_WARNING:
                    print(f"[train] packing waste {100 * metrics['packing_waste']:.1f}% is above "
                          f"{100 * WASTE_WARNING:.0f}%: max_len={cfg.max_len} fits the examples badly", flush=True)
            reported = {k: v for k, v in metrics.items() if v is not None}
            if to_save:
                self._save_checkpoint(reported)
            else:
                ray.train.report(reported)
            window = Window()
            t_window = time.perf_counter()


def train_loop_per_worker(config: dict) -> None:
    """Entry point handed to ``TorchTrainer``."""
    worker = Worker(config)
    worker.run()
    worker.export()
