"""Draft shards on disk: schema, run layout, atomic commit, manifest, and the one reader to trust.

Layout of an output directory ``OUT``::

    OUT/CURRENT                         the run id of the latest complete run (replaced atomically)
    OUT/runs/<run_id>/part-*.parquet    one row per draft (DRAFT_SCHEMA, zstd)
    OUT/runs/<run_id>/rejects.parquet   every input row that was not used, with its reason
    OUT/runs/<run_id>/_manifest.json    files + sha256, row accounting, content hash, recipe, provenance
    OUT/runs/<run_id>/_SUCCESS          written last
    OUT/runs/<run_id>.tmp-<uuid>/       staging of a run in progress (or of one that was killed)

Why staging + rename: a run killed midway must leave nothing a reader could take for a finished
dataset. Everything is written into the staging directory, ``_SUCCESS`` last, and only then is the
directory renamed into place; readers (:func:`open_run`) additionally refuse any directory without
``_SUCCESS`` or with another schema version.
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

from pipeline.common.io import file_sha256, replace_dir, write_text_atomic

SCHEMA_VERSION = "medlm.drafts.v1"
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


def write_rejects(path: Path, rows: list[dict]) -> None:
    """All rejected rows in one small file, ordered by (source, record) so reruns produce the same file."""
    rows = sorted(rows, key=lambda r: (r["source_index"], r["record_no"]))
    table = pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def part_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(f"{PART_PREFIX}*.parquet"))


def describe_parts(run_dir: Path, on_file=None) -> list[dict]:
    """Name, row count, size and sha256 of each part file (``on_file(i, path)`` after each one)."""
    out = []
    for i, path in enumerate(part_files(run_dir)):
        out.append(
            {
                "name": path.name,
                "rows": pq.ParquetFile(path).metadata.num_rows,
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
        if on_file is not None:
            on_file(i, path)
    return out


def _row_digest(values: list) -> str:
    blob = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def content_hash(files: Iterable[Path]) -> str:
    """sha256 over every row (all columns), rows taken in id order.

    Independent of how rows are split into files or ordered inside them, so runs with 1 or N
    actors compare equal. Only (id, row digest) pairs are held in memory, not the rows.
    """
    digests: list[tuple[str, str]] = []
    names = DRAFT_SCHEMA.names
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=2048, columns=names):
            columns = [batch.column(n).to_pylist() for n in names]
            for values in zip(*columns):
                digests.append((values[0], _row_digest(list(values))))
    digests.sort()
    h = hashlib.sha256()
    for rid, digest in digests:
        h.update(f"{rid}\t{digest}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True)
class RunLayout:
    """Paths of one output directory and the moves that commit a run."""

    output: Path

    @property
    def runs(self) -> Path:
        return self.output / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def is_complete(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / SUCCESS).exists()

    def stale_staging(self, run_id: str) -> list[Path]:
        return sorted(self.runs.glob(f"{run_id}.tmp-*"))

    def new_staging(self, run_id: str) -> Path:
        """A fresh staging directory; leftovers of killed runs with this id are removed first."""
        self.runs.mkdir(parents=True, exist_ok=True)
        for stale in self.stale_staging(run_id):
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.runs / f"{run_id}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        return staging

    def commit(self, staging: Path, run_id: str) -> Path:
        """Move a finished staging directory into place, replacing an older run with the same id."""
        if not (staging / SUCCESS).exists():
            raise RunNotReady(f"refusing to commit {staging}: it has no {SUCCESS}")
        return replace_dir(staging, self.run_dir(run_id))

    def set_current(self, run_id: str) -> None:
        write_text_atomic(self.output / CURRENT, run_id + "\n")


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftRun:
    """A complete draft run. Build it with :func:`open_run`, never directly."""

    run_dir: Path
    manifest: dict

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def files(self) -> list[Path]:
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
            return pq.read_schema(self.files[0])
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
        tables = [pq.read_table(f, columns=columns) for f in self.files]
        return pa.concat_tables(tables)

    def rejects(self) -> pa.Table:
        return pq.read_table(self.run_dir / REJECTS)

def current_run(out_dir: str | Path) -> Optional[Path]:
    """The run directory ``OUT/CURRENT`` names, or None when no run has completed yet."""
    marker = Path(out_dir) / CURRENT
    if not marker.exists():
        return None
    run_id = marker.read_text().strip()
    return Path(out_dir) / "runs" / run_id


def open_run(path: str | Path, *, verify_files: bool = False) -> DraftRun:
    """Open a complete run: a run directory, or an output directory (its CURRENT run is used).

    Raises :class:`RunNotReady` for a directory without ``_SUCCESS`` (still running or killed), a
    missing or different schema version, or part files that are missing (or, with
    ``verify_files``, whose sha256 differs from the manifest).
    """
    path = Path(path)
    if not path.exists():
        raise RunNotReady(f"{path} does not exist")
    if (path / CURRENT).exists() and not (path / MANIFEST).exists():
        run_dir = current_run(path)
        if run_dir is None or not run_dir.exists():
            raise RunNotReady(f"{path / CURRENT} names run {run_dir.name if run_dir else '?'}, which does not exist")
        path = run_dir
    if not (path / SUCCESS).exists():
        raise RunNotReady(
            f"{path} is not a complete draft run (no {SUCCESS}): it is still being written or was "
            "interrupted; rerun `medlm generate` with the same run id to finish it"
        )
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        raise RunNotReady(f"{path} has {SUCCESS} but no {MANIFEST}")
    manifest = json.loads(manifest_file.read_text())
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunNotReady(f"{path} has schema version {version!r}; this code reads {SCHEMA_VERSION!r}")
    run = DraftRun(run_dir=path, manifest=manifest)
    for entry, f in zip(manifest["files"], run.files):
        if not f.exists():
            raise RunNotReady(f"{path}: part file {f.name} listed in the manifest is missing")
        if verify_files and file_sha256(f) != entry["sha256"]:
            raise RunNotReady(f"{path}: part file {f.name} does not match the sha256 in the manifest")
    return run


def read_run(run_dir: str | Path, columns: Optional[list[str]] = None) -> pa.Table:
    """All drafts of a complete run as one Arrow table (see :func:`open_run` for what is refused)."""
    return open_run(run_dir).to_arrow(columns)
