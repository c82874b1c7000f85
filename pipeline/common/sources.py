"""Source files -> numbered records -> normalised, tokenised rows (or rejects with a reason).

Why files are read as bytes and split here rather than with a JSON reader: a malformed line or
invalid UTF-8 must become one rejected row with its line number, not a crashed reader. Every record
keeps (source_index, record_no), which orders rows globally: "keep the first of duplicate ids" then
means the same row whatever the number of workers.

Stages (all plain functions, so the Ray pipeline and a single-process loop share them):
  resolve_sources      paths/directories -> checked SourceFile list (fails fast, before any work)
  explode_files        Ray ``read_binary_files`` rows -> one record per JSONL line / Parquet row
  normalise_records    records -> status "ok" rows with token ids, or status = reject reason
  read_normalised      the Ray Data chain of the two above over resolved sources (drafts and training)
  first_occurrences / select_rows   duplicate ids: the first (source_index, record_no) wins
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from medlm.data import RowError, encode_example, normalise_row, parse_json_line, stable_row_id
from medlm.tokenizer import load_tokenizer, response_ids
from pipeline.common.storage import Location, StorageError, local_copy, location

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
RAW_EXCERPT_CHARS = 1000
RECORDS_PER_CHUNK = 2048
OK = "ok"

RECORD_SCHEMA = pa.schema(
    [("source_index", pa.int32()), ("record_no", pa.int64()), ("raw", pa.binary())]
)

NORMALISED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_index", pa.int32()),
        ("record_no", pa.int64()),
        ("status", pa.string()),  # "ok" or the reject reason
        ("detail", pa.string()),
        ("raw", pa.string()),  # truncated text of the record, kept for the rejects file
        ("source_format", pa.string()),
        ("prompt_text", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("answers_text", pa.list_(pa.string())),  # every valid reference, canonical first
        ("answers_ids", pa.list_(pa.list_(pa.int32()))),
    ]
)


class SourceError(ValueError):
    """A source that cannot be read at all: the job stops before any work."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute path, as recorded in the manifest
    format: str  # "jsonl" | "parquet"
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def _format_of(loc: Location) -> str:
    suffix = Path(loc.name).suffix
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        raise SourceError(f"source file {loc} has suffix {suffix!r}; accepted: {', '.join(sorted(FORMATS))}")
    return fmt


def resolve_sources(source: str | Path | Iterable[str | Path]) -> list[SourceFile]:
    """Expand files and directories (their *.jsonl/*.json/*.parquet, sorted) and check each is readable.

    Entries are local paths or ``s3://`` URIs (all on one filesystem: Ray reads them with one client).
    Reading every byte here (for the sha256 recorded as provenance) is also the readability check:
    an unreadable source stops the job before Ray starts any work.
    """
    if source is None or source == "" or source == []:
        raise SourceError("no source given: set `source` (a JSONL/Parquet file, a directory, or a list of them)")
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Location] = []
    for entry in entries:
        try:
            loc = location(entry)
        except StorageError as e:
            raise SourceError(f"source {entry}: {e}") from None
        if loc.is_dir():
            found = [f for f in loc.list() if Path(f.name).suffix.lower() in FORMATS and not f.name.startswith(".")]
            if not found:
                raise SourceError(f"source directory {loc} holds no {', '.join(sorted(FORMATS))} files")
            files.extend(found)
        elif loc.is_file():
            files.append(loc)
        else:
            raise SourceError(f"source {entry} does not exist")
    if len({f.scheme for f in files}) > 1:
        raise SourceError("sources must all be local or all on object storage (one job reads with one filesystem)")
    seen: set[str] = set()
    out = []
    for loc in files:
        if loc.uri in seen:
            raise SourceError(f"source file {loc} is listed twice")
        seen.add(loc.uri)
        fmt = _format_of(loc)
        try:
            digest = loc.sha256()
            if fmt == "parquet":
                with loc.open_input() as f:
                    _ = pq.ParquetFile(f).metadata  # a corrupt footer fails here, not in a worker
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"source file {loc} cannot be read: {e}") from None
        out.append(SourceFile(path=loc.uri, format=fmt, bytes=loc.size(), sha256=digest))
    return out


# --- records ---------------------------------------------------------------------------------


def iter_records(data: bytes, fmt: str) -> Iterator[tuple[int, bytes]]:
    """(record_no, raw JSON bytes) per JSONL line or Parquet row; blank lines are not records."""
    if fmt == "jsonl":
        for number, line in enumerate(data.split(b"\n"), start=1):
            line = line.rstrip(b"\r")
            if line.strip():
                yield number, line
    elif fmt == "parquet":
        table = pq.read_table(pa.BufferReader(data))
        for number, row in enumerate(table.to_pylist(), start=1):
            present = {k: v for k, v in row.items() if v is not None}  # a null column = an absent field
            yield number, json.dumps(present, ensure_ascii=False, default=str).encode("utf-8")
    else:
        raise ValueError(f"unknown source format {fmt!r}")


def _record_table(rows: list[tuple[int, int, bytes]]) -> pa.Table:
    si, rn, raw = zip(*rows) if rows else ((), (), ())
    return pa.Table.from_arrays(
        [pa.array(si, pa.int32()), pa.array(rn, pa.int64()), pa.array(raw, pa.binary())], schema=RECORD_SCHEMA
    )


def _path_key(path: str) -> str:
    return os.path.normpath(path.split("://", 1)[-1]).lstrip("/")


def explode_files(batch: pa.Table, *, sources: list[dict]) -> Iterator[pa.Table]:
    """Ray ``read_binary_files(include_paths=True)`` rows (one per file) -> chunks of records."""
    index = {_path_key(s["path"]): (i, s["format"]) for i, s in enumerate(sources)}
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        source_index, fmt = index[_path_key(path)]
        chunk: list[tuple[int, int, bytes]] = []
        for number, raw in iter_records(data, fmt):
            chunk.append((source_index, number, raw))
            if len(chunk) >= RECORDS_PER_CHUNK:
                yield _record_table(chunk)
                chunk = []
        if chunk:
            yield _record_table(chunk)


def records_of_file(source_index: int, source: SourceFile) -> pa.Table:
    """All records of one file (the single-process path: benchmarks, debugging)."""
    data = location(source.path).read_bytes()
    return _record_table([(source_index, n, raw) for n, raw in iter_records(data, source.format)])


# --- normalise + tokenize --------------------------------------------------------------------


@lru_cache(maxsize=4)
def _tokenizer(checkpoint: str):
    """Loaded once per worker process (Ray reuses task workers across batches); ``checkpoint`` may be
    an ``s3://`` URI, whose tokenizer files (not its weights) are fetched once into the local cache."""
    return load_tokenizer(local_copy(checkpoint, weights=False))


def _excerpt(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")[:RAW_EXCERPT_CHARS]


def encode_references(tokenizer, answers: list[str], max_response_len: int) -> tuple[list[str], list[list[int]]]:
    """Encode every valid reference; alternatives over the budget cannot be targets and are left out."""
    texts, ids = [], []
    for i, text in enumerate(answers):
        tokens = response_ids(tokenizer, text)
        if i == 0 or len(tokens) <= max_response_len:
            texts.append(text)
            ids.append(tokens)
    return texts, ids


def normalise_records(
    batch: pa.Table, *, checkpoint: str, gen_len: int, max_response_len: int, max_total_len: int
) -> pa.Table:
    """Parse, recognise the format, tokenise; a row that cannot be used keeps its reason in ``status``.

    A row is too long when its reference exceeds ``max_response_len`` tokens or when its prompt plus
    the ``gen_len`` draft positions exceed the model's ``max_total_len`` positions.
    """
    tokenizer = _tokenizer(checkpoint)
    out: dict[str, list] = {name: [] for name in NORMALISED_SCHEMA.names}
    for source_index, record_no, raw in zip(
        batch.column("source_index").to_pylist(), batch.column("record_no").to_pylist(), batch.column("raw").to_pylist()
    ):
        row = dict.fromkeys(NORMALISED_SCHEMA.names)
        row.update(source_index=source_index, record_no=record_no, raw=_excerpt(raw), status=OK, detail="")
        try:
            parsed = parse_json_line(raw)
            if isinstance(parsed, dict):  # the id is known even when the row is rejected below
                given = parsed.get("id")
                row["id"] = str(given) if isinstance(given, (str, int)) else stable_row_id(parsed)
            example = normalise_row(parsed)
            row["id"] = example.id
            prompt_ids, _ = encode_example(tokenizer, example, max_response_len)
            if len(prompt_ids) + gen_len > max_total_len:
                raise RowError(
                    "too_long",
                    f"prompt of {len(prompt_ids)} tokens + {gen_len} draft positions exceeds the model maximum "
                    f"of {max_total_len} positions",
                )
            texts, ids = encode_references(tokenizer, example.answers, max_response_len)
            row.update(
                source_format=example.source_format,
                prompt_text=tokenizer.decode(prompt_ids, skip_special_tokens=False),
                prompt_ids=prompt_ids,
                answers_text=texts,
                answers_ids=ids,
            )
        except RowError as e:
            row.update(status=e.reason, detail=e.detail)
        for name in out:
            out[name].append(row[name])
    return pa.Table.from_pydict(out, schema=NORMALISED_SCHEMA)


def read_normalised(sources: list[SourceFile], *, checkpoint: str, gen_len: int, max_response_len: int,
                    max_total_len: int):
    """Ray Data: ``read_binary_files`` -> :func:`explode_files` -> :func:`normalise_records` (not materialised).

    ``checkpoint`` is the directory whose tokenizer encodes the rows.
    """
    import ray.data

    locations = [location(s.path, check=False) for s in sources]
    return (
        ray.data.read_binary_files([loc.path for loc in locations], include_paths=True,
                                   filesystem=locations[0].fs if locations else None)
        .map_batches(explode_files, batch_size=1, batch_format="pyarrow",
                     fn_kwargs={"sources": [s.to_dict() for s in sources]})
        .map_batches(normalise_records, batch_size=None, batch_format="pyarrow",
                     fn_kwargs={"checkpoint": checkpoint, "gen_len": gen_len, "max_response_len": max_response_len,
                                "max_total_len": max_total_len})
    )


# --- duplicate ids ---------------------------------------------------------------------------


def first_occurrences(rows: Iterable[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    """id -> smallest (source_index, record_no) among usable rows: the one that is kept."""
    first: dict[str, tuple[int, int]] = {}
    for rid, source_index, record_no in rows:
        key = (source_index, record_no)
        if rid not in first or key < first[rid]:
            first[rid] = key
    return first


def duplicate_rows(
    first: dict[str, tuple[int, int]], rows: Iterable[tuple[str, int, int]]
) -> dict[tuple[int, int], tuple[int, int]]:
    """(source_index, record_no) of every later copy -> where its id was first seen."""
    return {
        (si, rn): first[rid] for rid, si, rn in rows if first[rid] != (si, rn)
    }


def select_rows(batch: pa.Table, *, duplicates: dict, want_ok: bool) -> pa.Table:
    """Usable rows (``want_ok``) or rejects; later copies of an id become ``duplicate_id`` rejects."""
    status = batch.column("status").to_pylist()
    if duplicates:
        keys = zip(batch.column("source_index").to_pylist(), batch.column("record_no").to_pylist())
        detail = batch.column("detail").to_pylist()
        for i, key in enumerate(keys):
            if status[i] == OK and key in duplicates:
                status[i] = "duplicate_id"
                first_si, first_rn = duplicates[key]
                detail[i] = f"id already used by source {first_si} record {first_rn}; the first copy is kept"
        batch = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("detail"), "detail", pa.array(detail, pa.string()))
    mask = pa.array([(s == OK) == want_ok for s in status], pa.bool_())
    return batch.filter(mask)


def reject_records(table: pa.Table, sources: list[SourceFile | dict]) -> list[dict]:
    """Rows of ``select_rows(..., want_ok=False)`` as REJECT_SCHEMA dicts."""
    paths = [s["path"] if isinstance(s, dict) else s.path for s in sources]
    return [
        {
            "id": r["id"],
            "source_index": r["source_index"],
            "source_path": paths[r["source_index"]],
            "record_no": r["record_no"],
            "reason": r["status"],
            "detail": r["detail"],
            "raw": r["raw"],
        }
        for r in table.select(["id", "source_index", "record_no", "status", "detail", "raw"]).to_pylist()
    ]
