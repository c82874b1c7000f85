"""Draft shards: schema, run layout, commit, manifest, and the one reader to trust.

Layout of an output ``OUT`` (a local directory or an ``s3://bucket/prefix``)::

    OUT/CURRENT                         the run id of the latest complete run (written last)
    OUT/runs/<run_id>/part-*.parquet    one row per draft (DRAFT_SCHEMA, zstd)
    OUT/runs/<run_id>/rejects.parquet   every input row that was not used, with its reason
    OUT/runs/<run_id>/_manifest.json    files + sha256, row accounting, content hash, recipe, provenance
    OUT/runs/<run_id>/_SUCCESS          written last; holds the sha256 of the manifest it vouches for
    OUT/runs/<run_id>.tmp-<uuid>/       local disks only: staging of a run in progress (or killed)

A run killed midway must leave nothing a reader could take for a finished dataset. Readers
(:func:`open_run`) trust only a directory whose ``_SUCCESS`` matches its manifest, whose schema
version they read, and whose part files are all there. On a local disk a run is written into a
staging directory and renamed into place, so even a forced rerun never shows a half-replaced run.
Object storage has no rename: a run is written in place instead. Its old ``_SUCCESS`` is deleted
before anything else, then the part files, rejects and manifest are uploaded, ``_SUCCESS`` last and
``CURRENT`` after it; until that last upload readers refuse the run (and a killed run stays refused
until a rerun with the same id finishes it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common.io import replace_dir
from pipeline.common.storage import Location, location

SCHEMA_VERSION = "medlm.drafts.v2"  # v2: start_mask_ratio
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
REJECTS = "rejects.parquet"
CURRENT = "CURRENT"
PART_PREFIX = "part-"
METADATA_PREFIX = "medlm."

_tokens = pa.list_(pa.int32())

DRAFT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_format", pa.string()),
        pa.field("source_index", pa.int32()),  # index into the manifest's "sources"
        pa.field("record_no", pa.int64()),  # 1-based line (JSONL) or row (Parquet) number
        pa.field("prompt_text", pa.string()),  # the prompt exactly as the model saw it
        pa.field("response_text", pa.string()),  # the reference the labels lead to
        pa.field("prompt_ids", _tokens),
        pa.field("target_ids", _tokens),
        pa.field("draft_ids", _tokens),
        pa.field("token_target", _tokens),
        pa.field("insert_target", _tokens),  # len(draft)+1 gaps, -1 = nothing to insert
        pa.field("tokens_per_step", pa.int32()),
        pa.field("mask_steps", pa.int32()),
        pa.field("edit_steps", pa.int32()),  # intermediate edit budget of the recipe (0 = plain draft)
        pa.field("edit_steps_applied", pa.int32()),  # steps that changed the draft (edit refine may stop early)
        pa.field("draft_seed", pa.int64()),
        pa.field("start_mask_ratio", pa.float32()),  # share of the reference masked at the start (1: all masks)
        pa.field("reference_index", pa.int32()),  # which valid reference was closest (0 = canonical)
        pa.field("n_references", pa.int32()),
        pa.field("edit_distance", pa.int32()),
        pa.field("n_replace", pa.int32()),
        pa.field("n_delete", pa.int32()),
        pa.field("n_insert", pa.int32()),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # null when the row could not be parsed
        pa.field("source_index", pa.int32()),
        pa.field("source_path", pa.string()),
        pa.field("record_no", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),  # the row's text, truncated
    ]
)


class RunNotReady(RuntimeError):
    """A directory that is not a complete draft run of the schema version this code reads."""


# --- writing ---------------------------------------------------------------------------------


def schema_with_metadata(provenance: dict) -> pa.Schema:
    """DRAFT_SCHEMA carrying provenance as key-value metadata (every value a string, dicts as JSON)."""
    meta = {f"{METADATA_PREFIX}schema_version": SCHEMA_VERSION}
    for key, value in provenance.items():
        meta[f"{METADATA_PREFIX}{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return DRAFT_SCHEMA.with_metadata(meta)


def part_filename(task_index: int) -> str:
    """Ray's Parquet sink fills ``{i}`` with the file number within one write task."""
    return f"{PART_PREFIX}{task_index:05d}-{{i}}.parquet"


def write_rejects(target: Location, rows: list[dict]) -> None:
    """All rejected rows in one small file, ordered by (source, record) so reruns produce the same file."""
    rows = sorted(rows, key=lambda r: (r["source_index"], r["record_no"]))
    table = pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    target.write_bytes(sink.getvalue().to_pybytes())


def part_files(run_dir: str | Path | Location) -> list[Location]:
    return [f for f in location(run_dir).list() if f.name.startswith(PART_PREFIX) and f.name.endswith(".parquet")]


def describe_parts(run_dir: str | Path | Location, on_file=None) -> list[dict]:
    """Name, row count, size and sha256 of each part file (``on_file(i, path)`` after each one)."""
    out = []
    for i, f in enumerate(part_files(run_dir)):
        with f.open_input() as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        out.append({"name": f.name, "rows": rows, "bytes": f.size(), "sha256": f.sha256()})
        if on_file is not None:
            on_file(i, f)
    return out


def _row_digest(values: list) -> str:
    blob = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def content_hash(files: Iterable[str | Path | Location]) -> str:
    """sha256 over every row (all columns), rows taken in id order.

    Independent of how rows are split into files or ordered inside them, so runs with 1 or N
    actors compare equal. Only (id, row digest) pairs are held in memory, not the rows.
    """
    digests: list[tuple[str, str]] = []
    names = DRAFT_SCHEMA.names
    for f in files:
        with location(f).open_input() as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=2048, columns=names):
                columns = [batch.column(n).to_pylist() for n in names]
                for values in zip(*columns):
                    digests.append((values[0], _row_digest(list(values))))
    digests.sort()
    ids = [rid for rid, _ in digests]
    if len(set(ids)) != len(ids):
        raise RunNotReady("the part files hold an id twice: a run keeps the first copy of every id")
    h = hashlib.sha256()
    for rid, digest in digests:
        h.update(f"{rid}\t{digest}\n".encode())
    return h.hexdigest()


def manifest_digest(blob: bytes) -> str:
    """What ``_SUCCESS`` holds: the sha256 of the exact manifest bytes it vouches for."""
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class RunLayout:
    """Locations of one output and the steps that commit a run (see the module docstring)."""

    output: Location

    @property
    def runs(self) -> Location:
        return self.output / "runs"

    def run_dir(self, run_id: str) -> Location:
        return self.runs / run_id

    def is_complete(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / SUCCESS).is_file()

    def stale_staging(self, run_id: str) -> list[Location]:
        return [d for d in self.runs.subdirs() if d.name.startswith(f"{run_id}.tmp-")]

    def new_staging(self, run_id: str) -> Location:
        """Where the run is written: a fresh local staging directory (leftovers of killed runs with
        this id removed first), or on object storage the run directory itself, emptied, its
        ``_SUCCESS`` deleted before anything else so no reader trusts it from here on."""
        if not self.output.is_local:
            target = self.run_dir(run_id)
            (target / SUCCESS).delete()
            target.delete()
            return target
        self.runs.mkdir()
        for stale in self.stale_staging(run_id):
            shutil.rmtree(stale.path, ignore_errors=True)
        staging = self.runs / f"{run_id}.tmp-{uuid.uuid4().hex[:8]}"
        staging.local_path.mkdir()
        return staging

    def commit(self, staging: Location, run_id: str) -> Location:
        """Put a finished run in place (a rename on a local disk; on object storage it already is)."""
        if not (staging / SUCCESS).is_file():
            raise RunNotReady(f"refusing to commit {staging}: it has no {SUCCESS}")
        target = self.run_dir(run_id)
        if staging.is_local:
            replace_dir(staging.local_path, target.local_path)
        return target

    def set_current(self, run_id: str) -> None:
        (self.output / CURRENT).write_text(run_id + "\n")


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftRun:
    """A complete draft run. Build it with :func:`open_run`, never directly."""

    run_dir: Location
    manifest: dict

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def files(self) -> list[Location]:
        return [self.run_dir / f["name"] for f in self.manifest["files"]]

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"]["written"])

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def schema(self) -> pa.Schema:
        if self.files:
            return pq.read_schema(self.files[0].path, filesystem=self.run_dir.fs)
        return DRAFT_SCHEMA

    @property
    def metadata(self) -> dict[str, str]:
        """Provenance from the Parquet schema metadata, without the ``medlm.`` prefix."""
        raw = self.schema.metadata or {}
        return {
            k.decode()[len(METADATA_PREFIX):]: v.decode()
            for k, v in raw.items()
            if k.decode().startswith(METADATA_PREFIX)
        }

    def to_arrow(self, columns: Optional[list[str]] = None) -> pa.Table:
        if not self.files:
            return DRAFT_SCHEMA.empty_table().select(columns or DRAFT_SCHEMA.names)
        tables = [pq.read_table(f.path, filesystem=f.fs, columns=columns) for f in self.files]
        return pa.concat_tables(tables)

    def rejects(self) -> pa.Table:
        f = self.run_dir / REJECTS
        return pq.read_table(f.path, filesystem=f.fs)


def current_run(out_dir: str | Path | Location) -> Optional[Location]:
    """The run directory ``OUT/CURRENT`` names, or None when no run has completed yet."""
    out = location(out_dir)
    marker = out / CURRENT
    if not marker.is_file():
        return None
    return out / "runs" / marker.read_text().strip()


def open_run(path: str | Path | Location, *, verify_files: bool = False) -> DraftRun:
    """Open a complete run: a run directory, or an output directory (its CURRENT run is used).

    Raises :class:`RunNotReady` for a directory without ``_SUCCESS`` (still running or killed), a
    ``_SUCCESS`` that vouches for another manifest, a missing or different schema version, or part
    files that are missing (or, with ``verify_files``, whose sha256 differs from the manifest).
    """
    path = location(path)
    if not path.exists():
        raise RunNotReady(f"{path} does not exist")
    if (path / CURRENT).is_file() and not (path / MANIFEST).is_file():
        run_dir = current_run(path)
        if run_dir is None or not run_dir.exists():
            raise RunNotReady(f"{path / CURRENT} names run {run_dir.name if run_dir else '?'}, which does not exist")
        path = run_dir
    success = path / SUCCESS
    if not success.is_file():
        raise RunNotReady(
            f"{path} is not a complete draft run (no {SUCCESS}): it is still being written or was "
            "interrupted; rerun `medlm generate` with the same run id to finish it"
        )
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise RunNotReady(f"{path} has {SUCCESS} but no {MANIFEST}")
    blob = manifest_file.read_bytes()
    vouched = success.read_text().strip()
    if vouched and vouched != manifest_digest(blob):  # an empty _SUCCESS: a run written before digests
        raise RunNotReady(f"{path}: {SUCCESS} vouches for another {MANIFEST} (the run is being rewritten)")
    manifest = json.loads(blob)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunNotReady(f"{path} has schema version {version!r}; this code reads {SCHEMA_VERSION!r}")
    run = DraftRun(run_dir=path, manifest=manifest)
    for entry, f in zip(manifest["files"], run.files):
        if not f.is_file():
            raise RunNotReady(f"{path}: part file {f.name} listed in the manifest is missing")
        if verify_files and f.sha256() != entry["sha256"]:
            raise RunNotReady(f"{path}: part file {f.name} does not match the sha256 in the manifest")
    return run


def read_run(run_dir: str | Path | Location, columns: Optional[list[str]] = None) -> pa.Table:
    """All drafts of a complete run as one Arrow table (see :func:`open_run` for what is refused)."""
    return open_run(run_dir).to_arrow(columns)
