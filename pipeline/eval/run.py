"""Distributed evaluation on Ray Data: every (budget, sample) pair decoded by a pool of model actors.

Why one dataset for all budgets: each actor loads the checkpoint once and then serves every budget,
instead of reloading the model per budget. Items are ordered budget by budget, so a Ray batch
nearly always holds one budget and packs into few forward passes; the driver streams results back,
logs a line as each budget completes, then writes per budget ``samples_<label>.jsonl`` (records in
sample order), and ``table.md`` (rates with Wilson 95% intervals, paired comparisons, what the edits
did), ``accuracy_vs_nfe.png`` (with error bars) and ``summary.json`` (last: a reader trusts a run
only when it exists; its rows keep every sample's outcomes, see docs/statistics.md).

The checkpoint and the output folder are local paths or ``s3://`` URIs (``pipeline.common.storage``),
both checked before Ray does any work. Each actor fetches the checkpoint onto its own node
(``local_copy``), so the driver passes the URI, never its own path. Every output file is written
whole through ``Location`` (renamed into place on a local disk, one upload on object storage), so an
``s3://`` run puts nothing on the local disk and a killed run leaves no ``summary.json``.

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

from medlm.checkpoint import (
    check_checkpoint_dir,
    check_insert_head_trained,
    checkpoint_hash,
    device_and_dtype,
    read_meta,
)
from medlm.evaluation import (
    Budget,
    budget_row,
    check_budget,
    check_code_sandbox,
    checkpoint_has_insertion_head,
    evaluate_samples,
    json_dumps,
    load_eval_model,
    load_samples,
    paired_comparisons,
    render_accuracy_vs_nfe,
    summarise,
    table_markdown,
)
from medlm.modeling import MedlmConfig
from medlm.sampling import DECODE_OPTIONS, DecodeConfig, check_decode_options
from medlm.tasks import get_task
from medlm.tokenizer import load_tokenizer, tokenizer_hash
from pipeline.common.checkpoints import check_checkpoint_at
from pipeline.common.ray_connect import connect_ray
from pipeline.common.storage import Location, StorageError, check_writable, local_copy, location

__all__ = ["EvalActor", "run_eval"]


class EvalActor:
    """Ray Data class UDF: loads the checkpoint once, then evaluates batches of (budget, sample) items.

    ``checkpoint`` is a local path or a URI; the actor loads its own node's copy of it."""

    def __init__(self, checkpoint: str, task: str, budgets: list[dict], seed: int, batch_size: int,
                 threshold: Optional[float], block_size: Optional[int], grade_timeout_s: float,
                 num_threads: int = 1, device: Optional[str] = None, decode_options: Optional[dict] = None,
                 allow_unisolated_code: bool = False):
        import torch

        device, _ = device_and_dtype(device)
        if device == "cpu":
            torch.set_num_threads(max(1, int(num_threads)))
        self.model, self.tokenizer = load_eval_model(local_copy(checkpoint), device=device)
        self.budgets = {b["label"]: Budget(**b) for b in budgets}
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self.threshold, self.block_size, self.grade_timeout_s = threshold, block_size, grade_timeout_s
        self.decode_options = decode_options
        self.allow_unisolated_code = allow_unisolated_code  # humaneval without an OS sandbox (docs/sandbox.md)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = [str(x) for x in batch["budget"]]
        samples = [json.loads(s) for s in batch["sample"]]
        records: list[Optional[str]] = [None] * len(labels)
        for label in dict.fromkeys(labels):  # budgets of this batch, in order of appearance
            rows = [i for i, lab in enumerate(labels) if lab == label]
            out = evaluate_samples(self.model, self.tokenizer, [samples[i] for i in rows], self.budgets[label],
                                   self.task, self.batch_size, self.seed, self.threshold, self.block_size,
                                   grade_timeout_s=self.grade_timeout_s, decode_options=self.decode_options,
                                   allow_unisolated_code=self.allow_unisolated_code)
            for i, rec in zip(rows, out):
                records[i] = json.dumps(rec, ensure_ascii=False)
        return {"budget": np.asarray(labels, dtype=object), "index": np.asarray(batch["index"]),
                "record": np.asarray(records, dtype=object)}


def _resolve(checkpoint: str, out_dir: str) -> tuple[Location, Path, Location]:
    """The checkpoint (its location and this machine's copy) and the output location; a bad URI, a
    missing bucket or a missing checkpoint is refused by name. Nothing is written yet."""
    try:
        ckpt = location(checkpoint)
        if not ckpt.is_local:  # checked in place, naming the URI (a check of the copy would name the cache)
            check_checkpoint_at(ckpt, require_insert_head=False)
        local = local_copy(ckpt)
    except StorageError as e:
        raise StorageError(f"checkpoint: {e}") from None
    try:
        out = location(out_dir)
    except StorageError as e:
        raise StorageError(f"out_dir: {e}") from None
    return ckpt, local, out


def _check_inputs(checkpoint: Path, task: str, budgets: Sequence[Budget], gen_len: Optional[int], batch_size: int,
                  num_actors: int, threshold: Optional[float], block_size: Optional[int],
                  decode_options: Optional[dict] = None) -> list[Budget]:
    """Every refusal of the evaluation itself happens here, before Ray starts any work."""
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
    model_config = MedlmConfig.from_pretrained(str(checkpoint))
    max_positions = model_config.max_position_embeddings
    has_head = checkpoint_has_insertion_head(checkpoint)
    resolved = []
    for b in budgets:
        length = gen_len if gen_len is not None else b.gen_len
        if length is None:
            raise ValueError(f"budget {b.label!r} has no gen_len; pass gen_len=")
        if b.gen_len is not None and b.gen_len != length:
            raise ValueError(f"gen_len={gen_len} disagrees with budget {b.label!r} (gen_len={b.gen_len})")
        check_budget(b, length, max_positions=max_positions, has_insertion_head=has_head,
                     threshold=threshold, block_size=block_size, decode_options=decode_options,
                     vocab_size=model_config.vocab_size)
        if b.edit_steps > 0:  # an insertion head that never saw an edit label would only grow drafts with junk
            check_insert_head_trained(read_meta(checkpoint), f"checkpoint {checkpoint}", f"budget {b.label!r}")
        resolved.append(Budget(b.mask_steps, b.edit_steps, b.label, length, b.fraction))
    return resolved


def _prepare_output(out: Location) -> None:
    """Refuse an output that cannot be written, before any work. Then clear the previous run: a rerun
    is not trusted until it finishes, and one with other budgets must not leave the old samples
    files beside its own."""
    try:
        check_writable(out)
    except StorageError as e:
        raise StorageError(f"out_dir: {e}") from None
    (out / "summary.json").delete()
    for stale in out.list():
        if stale.name.startswith("samples_") and stale.name.endswith(".jsonl"):
            stale.delete()


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def _log_budget(task: str, budget: Budget, summary: dict, done: int, total: int) -> None:
    valid = f", whole answer valid {summary['valid_after']:.1%}" if "valid_after" in summary else ""
    nfe = summary["mean_nfe"]
    print(f"[eval] {task} {budget.label} ({done}/{total} budgets): right {summary['accuracy_after']:.1%} "
          f"(draft {summary['accuracy_before']:.1%}){valid}, NFE/sample {'-' if nfe is None else f'{nfe:.1f}'}, "
          f"{summary['n']} samples, {summary['n_errors']} errors", flush=True)


def run_eval(checkpoint: str | os.PathLike, task: str, budgets: Sequence[Budget], n_samples: Optional[int] = 32,
             split: str = "test", batch_size: int = 8, num_actors: int = 1, out_dir: str | os.PathLike = "runs/eval",
             seed: int = 0, *, gen_len: Optional[int] = None, threshold: Optional[float] = None,
             block_size: Optional[int] = None, cpus_per_actor: float = 1, gpus_per_actor: float = 0,
             grade_timeout_s: float = 5.0, samples: Optional[list[dict]] = None,
             decode_options: Optional[dict] = None, allow_unisolated_code: bool = False) -> dict:
    """Evaluate ``checkpoint`` on ``n_samples`` problems of ``task`` under every budget; returns the summary.

    ``checkpoint`` and ``out_dir`` are local paths or ``s3://`` URIs. ``samples`` replaces the task's
    own problems (same dict shape as ``medlm.evaluation.load_samples``). The summary (also
    ``out_dir/summary.json``) holds ``rows`` (one per budget, for the table and plot), ``files`` and
    provenance; uses the running Ray cluster, else ``RAY_ADDRESS``, else a local one.
    ``decode_options``: the LLaDA decoding options (``medlm.evaluation.check_budget``).
    ``allow_unisolated_code``: for humaneval on a machine without an OS sandbox boundary, grade with
    the in-process guards alone instead of refusing (the summary's ``sandbox`` then says so).
    """
    started = time.perf_counter()
    ckpt, local_ckpt, out = _resolve(str(checkpoint), str(out_dir))
    budgets = _check_inputs(local_ckpt, task, budgets, gen_len, batch_size, num_actors, threshold, block_size,
                            decode_options)
    decode_options = check_decode_options(decode_options)
    sandbox = check_code_sandbox(task, allow_unisolated_code)  # refuses unisolated code unless allowed
    own_samples = samples is not None
    if samples is None:
        samples = load_samples(task, n_samples, split=split, seed=seed)
    if not samples:
        raise ValueError("no samples to evaluate")
    _prepare_output(out)

    connect_ray()
    DataContext.get_current().enable_progress_bars = not os.environ.get("CI")
    items = [{"budget": b.label, "index": i, "sample": json.dumps(s, ensure_ascii=False)}
             for b in budgets for i, s in enumerate(samples)]
    print(f"[eval] {task}: {len(samples)} samples x {len(budgets)} budgets = {len(items)} decodes on "
          f"{num_actors} actor(s), checkpoint {ckpt}", flush=True)
    if sandbox is not None:
        print(f"[eval] code runs behind the OS sandbox boundary {sandbox['boundary']!r} on this node"
              + ("" if sandbox["isolated"] else " (NONE: in-process guards only, scores graded without isolation)"),
              flush=True)
    ds = ray.data.from_items(items).map_batches(
        EvalActor,
        fn_constructor_kwargs={
            "checkpoint": ckpt.uri, "task": task, "budgets": [dataclasses.asdict(b) for b in budgets], "seed": seed,
            "batch_size": batch_size, "threshold": threshold, "block_size": block_size,
            "grade_timeout_s": grade_timeout_s, "num_threads": max(1, int(cpus_per_actor)),
            "decode_options": decode_options, "allow_unisolated_code": allow_unisolated_code,
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
            rows[label] = budget_row(by_label[label], summarise(collected[label]))  # type: ignore[arg-type]  # complete: no None
            _log_budget(task, by_label[label], rows[label], len(rows), len(budgets))
    missing = {label: n for label, n in remaining.items() if n}
    if missing:
        raise RuntimeError(f"Ray Data returned too few records; missing per budget: {missing}")

    files = {}
    for b in budgets:
        name = f"samples_{b.label}.jsonl"
        (out / name).write_text(_jsonl(collected[b.label]))  # type: ignore[arg-type]  # every budget is complete here
        files[b.label] = name
    ordered_rows = [rows[b.label] for b in budgets]
    table = table_markdown(ordered_rows)
    (out / "table.md").write_text(table)
    (out / "accuracy_vs_nfe.png").write_bytes(
        render_accuracy_vs_nfe(ordered_rows, title=f"{task}: accuracy vs NFE ({len(samples)} samples)"))
    summary = {
        "task": task, "split": None if own_samples else split, "n_samples": len(samples), "seed": seed,
        "checkpoint": ckpt.uri, "checkpoint_hash": checkpoint_hash(local_ckpt),
        "tokenizer_hash": tokenizer_hash(load_tokenizer(local_ckpt)),
        "decode": {"threshold": threshold, "block_size": block_size, "batch_size": batch_size,
                   "grade_timeout_s": grade_timeout_s,
                   **{k: v for k, v in dataclasses.asdict(DecodeConfig(**decode_options)).items()
                      if k in DECODE_OPTIONS}},
        "num_actors": num_actors, "rows": ordered_rows, "comparisons": paired_comparisons(ordered_rows),
        "files": {"samples": files, "table": "table.md", "plot": "accuracy_vs_nfe.png"},
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if sandbox is not None:  # where the code ran: per row counts, and one flag for the whole run
        summary["sandbox"] = {
            **sandbox, "boundaries_used": sorted({b for r in ordered_rows for b in r.get("sandbox_boundaries", {})}),
            "n_sandbox_unavailable": sum(r.get("n_sandbox_unavailable", 0) for r in ordered_rows),
            "graded_without_isolation": any(r.get("graded_without_isolation") for r in ordered_rows)}
    (out / "summary.json").write_text(json_dumps(summary))  # last: the run is trusted from here
    summary["out_dir"] = out.uri
    summary["table_markdown"] = table
    print(f"[eval] done in {summary['wall_s']:.1f}s -> {out}\n{table}", flush=True)
    return summary
