"""Distributed evaluation on Ray Data: every (budget, sample) pair decoded by a pool of model actors.

Why one dataset for all budgets: each actor loads the checkpoint once and then serves every budget,
instead of reloading the model per budget. Items are ordered budget by budget, so a Ray batch
nearly always holds one budget and packs into few forward passes; the driver streams results back,
logs a line as each budget completes, then writes per budget ``samples_<label>.jsonl`` (records in
sample order), and ``table.md``, ``accuracy_vs_nfe.png`` and ``summary.json`` (last: a reader trusts
a run only when it exists).

Records cross Ray as JSON strings: their nested, task-dependent fields (grader details, ``None``
texts of failed samples) would otherwise need one Arrow schema across all blocks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext

from medlm.checkpoint import check_checkpoint_dir, checkpoint_hash, device_and_dtype
from medlm.evaluation import (
    Budget,
    budget_row,
    check_budget,
    checkpoint_has_insertion_head,
    evaluate_samples,
    load_eval_model,
    load_samples,
    plot_accuracy_vs_nfe,
    summarise,
    table_markdown,
)
from medlm.modeling import MedlmConfig
from medlm.tasks import get_task
from medlm.tokenizer import load_tokenizer, tokenizer_hash
from pipeline.common.io import atomic_path, write_text_atomic
from pipeline.common.ray_connect import connect_ray

__all__ = ["EvalActor", "run_eval"]


class EvalActor:
    """Ray Data class UDF: loads the checkpoint once, then evaluates batches of (budget, sample) items."""

    def __init__(self, checkpoint: str, task: str, budgets: list[dict], seed: int, batch_size: int,
                 threshold: Optional[float], block_size: Optional[int], grade_timeout_s: float,
                 num_threads: int = 1, device: Optional[str] = None):
        import torch

        device, _ = device_and_dtype(device)
        if device == "cpu":
            torch.set_num_threads(max(1, int(num_threads)))
        self.model, self.tokenizer = load_eval_model(checkpoint, device=device)
        self.budgets = {b["label"]: Budget(**b) for b in budgets}
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self.threshold, self.block_size, self.grade_timeout_s = threshold, block_size, grade_timeout_s

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = [str(x) for x in batch["budget"]]
        samples = [json.loads(s) for s in batch["sample"]]
        records: list[Optional[str]] = [None] * len(labels)
        for label in dict.fromkeys(labels):  # budgets of this batch, in order of appearance
            rows = [i for i, lab in enumerate(labels) if lab == label]
            out = evaluate_samples(self.model, self.tokenizer, [samples[i] for i in rows], self.budgets[label],
                                   self.task, self.batch_size, self.seed, self.threshold, self.block_size,
                                   grade_timeout_s=self.grade_timeout_s)
            for i, rec in zip(rows, out):
                records[i] = json.dumps(rec, ensure_ascii=False)
        return {"budget": np.asarray(labels, dtype=object), "index": np.asarray(batch["index"]),
                "record": np.asarray(records, dtype=object)}


def _check_inputs(checkpoint: Path, task: str, budgets: Sequence[Budget], gen_len: Optional[int], batch_size: int,
                  num_actors: int, threshold: Optional[float], block_size: Optional[int]) -> list[Budget]:
    """Every refusal happens here, before Ray starts any work."""
    get_task(task)
    if not budgets:
        raise ValueError("no budgets to evaluate; pass at least one Budget (see medlm.evaluation.budget_table)")
    labels = [b.label for b in budgets]
    if len(set(labels)) != len(labels):
        raise ValueError(f"budget labels must be unique (they name the output files), got {labels}")
    for name, value in (("batch_size", batch_size), ("num_actors", num_actors)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_checkpoint_dir(checkpoint, require_insert_head=False)
    max_positions = MedlmConfig.from_pretrained(str(checkpoint)).max_position_embeddings
    has_head = checkpoint_has_insertion_head(checkpoint)
    resolved = []
    for b in budgets:
        length = gen_len if gen_len is not None else b.gen_len
        if length is None:
            raise ValueError(f"budget {b.label!r} has no gen_len; pass gen_len=")
        if b.gen_len is not None and b.gen_len != length:
            raise ValueError(f"gen_len={gen_len} disagrees with budget {b.label!r} (gen_len={b.gen_len})")
        check_budget(b, length, max_positions=max_positions, has_insertion_head=has_head,
                     threshold=threshold, block_size=block_size)
        resolved.append(Budget(b.mask_steps, b.edit_steps, b.label, length, b.fraction))
    return resolved


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _log_budget(task: str, budget: Budget, summary: dict, done: int, total: int) -> None:
    valid = f", whole answer valid {summary['valid_after']:.1%}" if "valid_after" in summary else ""
    nfe = summary["mean_nfe"]
    print(f"[eval] {task} {budget.label} ({done}/{total} budgets): right {summary['accuracy_after']:.1%} "
          f"(draft {summary['accuracy_before']:.1%}){valid}, NFE/sample {'-' if nfe is None else f'{nfe:.1f}'}, "
          f"{summary['n']} samples, {summary['n_errors']} errors", flush=True)


def run_eval(checkpoint: str | Path, task: str, budgets: Sequence[Budget], n_samples: Optional[int] = 32,
             split: str = "test", batch_size: int = 8, num_actors: int = 1, out_dir: str | Path = "runs/eval",
             seed: int = 0, *, gen_len: Optional[int] = None, threshold: Optional[float] = None,
             block_size: Optional[int] = None, cpus_per_actor: float = 1, gpus_per_actor: float = 0,
             grade_timeout_s: float = 5.0, samples: Optional[list[dict]] = None) -> dict:
    """Evaluate ``checkpoint`` on ``n_samples`` problems of ``task`` under every budget; returns the summary.

    ``samples`` replaces the task's own problems (same dict shape as ``medlm.evaluation.load_samples``).
    The summary (also ``out_dir/summary.json``) holds ``rows`` (one per budget, for the table and
    plot), ``files`` and provenance; uses the running Ray cluster, else ``RAY_ADDRESS``, else a local one.
    """
    started = time.perf_counter()
    checkpoint = Path(checkpoint).expanduser().resolve()
    budgets = _check_inputs(checkpoint, task, budgets, gen_len, batch_size, num_actors, threshold, block_size)
    own_samples = samples is not None
    if samples is None:
        samples = load_samples(task, n_samples, split=split, seed=seed)
    if not samples:
        raise ValueError("no samples to evaluate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # a rerun is not trusted until it finishes
    for stale in out.glob("samples_*.jsonl"):  # a rerun with other budgets must not leave the old ones beside its own
        stale.unlink()

    connect_ray()
    DataContext.get_current().enable_progress_bars = not os.environ.get("CI")
    items = [{"budget": b.label, "index": i, "sample": json.dumps(s, ensure_ascii=False)}
             for b in budgets for i, s in enumerate(samples)]
    print(f"[eval] {task}: {len(samples)} samples x {len(budgets)} budgets = {len(items)} decodes on "
          f"{num_actors} actor(s), checkpoint {checkpoint}", flush=True)
    ds = ray.data.from_items(items).map_batches(
        EvalActor,
        fn_constructor_kwargs={
            "checkpoint": str(checkpoint), "task": task, "budgets": [dataclasses.asdict(b) for b in budgets], "seed": seed,
            "batch_size": batch_size, "threshold": threshold, "block_size": block_size,
            "grade_timeout_s": grade_timeout_s, "num_threads": max(1, int(cpus_per_actor)),
        },
        compute=ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )

    by_label = {b.label: b for b in budgets}
    collected: dict[str, list[Optional[dict]]] = {b.label: [None] * len(samples) for b in budgets}
    remaining = {b.label: len(samples) for b in budgets}
    rows: dict[str, dict] = {}
    for item in ds.iter_rows():
        label = item["budget"]
        collected[label][int(item["index"])] = json.loads(item["record"])
        remaining[label] -= 1
        if remaining[label] == 0:
            rows[label] = budget_row(by_label[label], summarise(collected[label]))  # type: ignore[arg-type]
            _log_budget(task, by_label[label], rows[label], len(rows), len(budgets))
    missing = {label: n for label, n in remaining.items() if n}
    if missing:
        raise RuntimeError(f"Ray Data returned too few records; missing per budget: {missing}")

    files = {}
    for b in budgets:
        path = out / f"samples_{b.label}.jsonl"
        _write_jsonl(path, collected[b.label])  # type: ignore[arg-type]
        files[b.label] = path.name
    ordered_rows = [rows[b.label] for b in budgets]
    table = table_markdown(ordered_rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    plot_accuracy_vs_nfe(ordered_rows, out / "accuracy_vs_nfe.png",
                         title=f"{task}: accuracy vs NFE ({len(samples)} samples)")
    summary = {
        "task": task, "split": None if own_samples else split, "n_samples": len(samples), "seed": seed,
        "checkpoint": str(checkpoint), "checkpoint_hash": checkpoint_hash(checkpoint),
        "tokenizer_hash": tokenizer_hash(load_tokenizer(checkpoint)),
        "decode": {"threshold": threshold, "block_size": block_size, "batch_size": batch_size,
                   "grade_timeout_s": grade_timeout_s},
        "num_actors": num_actors, "rows": ordered_rows,
        "files": {"samples": files, "table": "table.md", "plot": "accuracy_vs_nfe.png"},
        "wall_s": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    summary["out_dir"] = str(out)
    summary["table_markdown"] = table
    print(f"[eval] done in {summary['wall_s']:.1f}s -> {out}\n{table}", flush=True)
    return summary
