"""Training data on the driver: sources and draft runs become checked, materialised Ray datasets.

Everything that can make a run fail is found here, before a single worker starts: a missing file,
a draft run without ``_SUCCESS``, a wrong schema version, missing columns, no usable rows, a row longer
than ``max_len``. Rows that are merely bad (malformed JSON, a response longer than ``gen_len``, labels
that do not fit their draft) are set aside with their reason in ``rejects.jsonl``, never dropped
silently: rows read = rows kept + rows rejected.

The datasets are materialised so that training workers, which hold the cluster's CPUs, never wait
on read or tokenize tasks that have no CPU left to run on.

Two row kinds reach the workers:
    mask rows   id, prompt_ids, answers_ids (every valid answer, the reference first; the others label
                online drafts against the closest one), as ``pipeline.common.sources`` normalises them
    edit rows   id, prompt_ids, draft_ids, token_target, insert_target, start_mask_ratio
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.common.sources import OK, SourceError, read_normalised, resolve_sources
from pipeline.common.storage import Location, StorageError
from pipeline.drafts.shards import SCHEMA_VERSION, RunNotReady, open_run

DRAFT_COLUMNS = ("id", "prompt_ids", "target_ids", "draft_ids", "token_target", "insert_target")
EDIT_COLUMNS = ("id", "prompt_ids", "draft_ids", "token_target", "insert_target", "start_mask_ratio")


class DataError(ValueError):
    """The training data cannot be used at all; the message names the file, run or row."""


@dataclass
class PreparedData:
    """What the trainer hands to the workers, plus the accounting the run reports."""

    datasets: dict  # "mask" / "edit" -> materialised ray.data.Dataset
    rows: dict = field(default_factory=dict)  # name -> usable rows
    rejected: dict = field(default_factory=dict)  # reason -> count
    read: dict = field(default_factory=dict)  # name -> rows read
    longest: dict = field(default_factory=dict)  # name -> longest example in tokens
    draft_runs: list = field(default_factory=list)  # provenance of the draft runs read


# ---------------------------------------------------------------- sources (JSONL / Parquet) -> mask rows


def mark_mask_rows(batch: pa.Table, *, gen_len: int) -> pa.Table:
    """Ray Data UDF after ``pipeline.common.sources.normalise_records``: the ``reason`` and ``n_tokens`` columns.

    A mask example is the prompt plus ``gen_len`` response positions (the reference padded with
    ``<|pad|>``), so that is its length in a packed row.
    """
    reason = pc.if_else(pc.equal(batch["status"], OK), "", batch["status"])
    n_tokens = pc.add(pc.fill_null(pc.list_value_length(batch["prompt_ids"]), 0), gen_len)
    return batch.append_column("reason", reason).append_column("n_tokens", pc.cast(n_tokens, pa.int64()))


def read_sources(paths: list[str], tokenizer_dir: str, gen_len: int, max_positions: int):
    """Mask rows of the source files (materialised), reject rows included, via ``pipeline.common.sources``."""
    try:
        sources = resolve_sources(paths)
    except SourceError as e:
        raise DataError(str(e)) from None
    ds = read_normalised(sources, checkpoint=tokenizer_dir, gen_len=gen_len, max_response_len=gen_len,
                         max_total_len=max_positions).map_batches(
        mark_mask_rows, batch_size=None, batch_format="pyarrow", fn_kwargs={"gen_len": gen_len})
    return ds.materialize(), [s.path for s in sources]


# ---------------------------------------------------------------- draft runs (Parquet) -> edit rows


def _schema_version(schema: pa.Schema) -> str | None:
    """Tolerant lookup: any metadata key containing ``schema_version``."""
    for key, value in (schema.metadata or {}).items():
        if b"schema_version" in key:
            return value.decode("utf-8", errors="replace")
    return None


def open_draft_run(path: str | Path):
    """A complete draft run (``pipeline.drafts.shards.open_run``: _SUCCESS, manifest, version) whose Parquet
    files also carry the schema version and the columns training reads, with integer-list types."""
    try:
        # every part file's sha256 against the manifest: a flipped byte must stop training here, naming the
        # file, not surface as a Parquet decode error mid-run (or not at all, in columns training skips)
        run = open_run(path, verify_files=True)
    except (RunNotReady, StorageError) as e:
        raise DataError(f"draft run refused: {e}") from None
    for f in run.files:
        schema = pq.read_schema(f.path, filesystem=f.fs)
        version = _schema_version(schema)
        if version != SCHEMA_VERSION:
            raise DataError(f"{f} has schema version {version!r} in its Parquet metadata; this trainer reads {SCHEMA_VERSION!r}")
        missing = [c for c in DRAFT_COLUMNS if c not in schema.names]
        if missing:
            raise DataError(f"{f} lacks column(s) {', '.join(missing)}; a draft run needs {', '.join(DRAFT_COLUMNS)}")
        if "start_mask_ratio" not in schema.names:
            raise DataError(f"{f} lacks column start_mask_ratio")
        for c in DRAFT_COLUMNS[1:]:
            t = schema.field(c).type
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_integer(t.value_type):
                raise DataError(f"{f}: column {c!r} has type {t}, expected list<int32>")
    return run


def check_edit_rows(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: add ``n_tokens`` and a ``reason`` for rows whose labels do not fit their draft."""
    n_draft = pc.list_value_length(batch["draft_ids"])
    n_prompt = pc.list_value_length(batch["prompt_ids"])
    tok_ok = pc.equal(pc.list_value_length(batch["token_target"]), n_draft)
    ins_ok = pc.equal(pc.list_value_length(batch["insert_target"]), pc.add(n_draft, 1))
    prompt_ok = pc.greater(n_prompt, 0)
    reason = pc.if_else(
        pc.invert(prompt_ok), "empty_prompt",
        pc.if_else(pc.and_(tok_ok, ins_ok), "", "label_length_mismatch"),
    )
    reason = pc.fill_null(reason, "null_tokens")  # a null list makes every test above null
    batch = batch.append_column("n_tokens", pc.cast(pc.fill_null(pc.add(n_prompt, n_draft), 0), pa.int64()))
    return batch.append_column("reason", reason)


def read_draft_runs(runs: list) -> ray.data.Dataset:
    if len({run.run_dir.scheme for run in runs}) > 1:
        raise DataError("draft_runs must all be local or all on object storage (Ray reads them with one filesystem)")
    files = [f.path for run in runs for f in run.files]
    ds = ray.data.read_parquet(files, filesystem=runs[0].run_dir.fs).select_columns(list(EDIT_COLUMNS))
    return ds.map_batches(check_edit_rows, batch_format="pyarrow").materialize()


# ---------------------------------------------------------------- the whole preparation


def summarise_block(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: one small row per block (counts by reason, longest good rows, reject records).

    One pass over the materialised rows gives the driver all it checks, without moving token
    columns to the driver or running a Ray Data job per statistic.
    """
    good = pc.equal(batch["reason"], "")
    good_rows = batch.filter(good).select(["id", "n_tokens"])
    order = pc.sort_indices(good_rows, sort_keys=[("n_tokens", "descending")])
    longest = good_rows.take(order[:3]).to_pylist()
    bad = batch.filter(pc.invert(good))
    keep = [c for c in ("id", "reason", "detail", "source_index", "record_no", "raw") if c in bad.column_names]
    rejects = bad.select(keep).to_pylist()
    return pa.table({"good": [good_rows.num_rows], "longest": [json.dumps(longest)], "rejects": [json.dumps(rejects)]})


def _account(ds, name: str, reject_lines: list[str], prepared: PreparedData, paths: list[str] = ()) -> list[dict]:
    """Fill ``prepared`` for dataset ``name`` and add its rejects to ``reject_lines``; returns longest rows."""
    summaries = ds.map_batches(summarise_block, batch_format="pyarrow", batch_size=None).take_all()
    good = sum(int(s["good"]) for s in summaries)
    longest = sorted((r for s in summaries for r in json.loads(s["longest"])), key=lambda r: -r["n_tokens"])
    rejected = [r for s in summaries for r in json.loads(s["rejects"])]
    for r in rejected:
        if r.get("source_index") is not None and paths:
            r["path"] = paths[r.pop("source_index")]
        reject_lines.append(json.dumps({"dataset": name, **{k: v for k, v in r.items() if v not in (None, "")}}) + "\n")
        prepared.rejected[r["reason"]] = prepared.rejected.get(r["reason"], 0) + 1
    prepared.read[name] = good + len(rejected)
    prepared.rows[name] = good
    prepared.longest[name] = longest[0]["n_tokens"] if longest else 0
    return longest


def _check_usable(name: str, longest: list[dict], max_len: int, num_workers: int, prepared: PreparedData) -> None:
    n = prepared.rows[name]
    if n == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(prepared.rejected.items())) or "no rows at all"
        raise DataError(f"the {name} dataset is empty: {prepared.read[name]} rows read, none usable ({reasons})")
    if n < num_workers:
        raise DataError(f"the {name} dataset has {n} usable rows, fewer than num_workers={num_workers}")
    worst = [r for r in longest if r["n_tokens"] > max_len]
    if worst:
        named = ", ".join(f"{r['id']} ({r['n_tokens']} tokens)" for r in worst[:3])
        raise DataError(
            f"max_len={max_len} is shorter than a {name} row: {named}; raise max_len to at least {worst[0]['n_tokens']}"
            + (" or lower gen_len" if name == "mask" else "")
        )


def prepare_data(cfg, tokenizer_dir: str, max_positions: int, run_dir: Location) -> PreparedData:
    """Read, check and materialise the datasets the objective needs; rejects go to ``run_dir/rejects.jsonl``.

    The datasets keep their reject rows (``reason`` set, token lists empty): workers drop them when
    they load their shard, which costs nothing, while filtering here would cost another Ray Data job.
    """
    prepared = PreparedData(datasets={})
    rejects = run_dir / "rejects.jsonl"
    rejects.delete()
    reject_lines: list[str] = []
    try:
        _prepare(cfg, tokenizer_dir, max_positions, prepared, reject_lines)
    finally:  # also when a dataset is refused: its rejects say why
        if reject_lines:
            rejects.write_text("".join(reject_lines))
    return prepared


def _prepare(cfg, tokenizer_dir: str, max_positions: int, prepared: PreparedData, reject_lines: list[str]) -> None:
    if cfg.sources:
        ds, paths = read_sources(list(cfg.sources), tokenizer_dir, cfg.gen_len, max_positions)
        longest = _account(ds, "mask", reject_lines, prepared, paths)
        _check_usable("mask", longest, cfg.max_len, cfg.num_workers, prepared)
        prepared.datasets["mask"] = ds
    if cfg.draft_runs:
        runs = [open_draft_run(r) for r in cfg.draft_runs]
        prepared.draft_runs = [{"path": str(r.run_dir), "rows": r.num_rows, "content_hash": r.content_hash} for r in runs]
        if sum(r.num_rows for r in runs) == 0:
            raise DataError(f"the edit dataset is empty: draft runs {', '.join(str(r.run_dir) for r in runs)} hold 0 rows")
        ds = read_draft_runs(runs)
        longest = _account(ds, "edit", reject_lines, prepared)
        _check_usable("edit", longest, cfg.max_len, cfg.num_workers, prepared)
        prepared.datasets["edit"] = ds
