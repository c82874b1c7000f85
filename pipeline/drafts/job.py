"""The draft job: sources -> normalise -> draft (actor pool) -> align -> Parquet run, committed atomically.

Ray Data plan::

    read_binary_files -> explode_files -> normalise_records     (CPU tasks; materialised: small, and
                                                                 duplicate ids need a global view)
    driver: first occurrence of every id; rejected rows -> rejects.parquet
    select_rows -> repartition(batch_size)                     (materialised before the actors start)
    -> DraftActor (ActorPoolStrategy, model loaded once per actor)
    -> align_table + write_parquet (one capped CPU task pool; explicit schema + provenance metadata)
    driver: part hashes, row accounting, content hash -> _manifest.json -> _SUCCESS -> commit -> CURRENT

The output may be a local directory or ``s3://bucket/prefix``; see :mod:`pipeline.drafts.shards` for
how a run is committed on each (staging + rename, or in place with ``_SUCCESS`` last).

Everything that can stop a job (missing checkpoint, unreadable source, unwritable output, bad
config) is checked in :func:`pipeline.drafts.plan.plan_run`, before Ray does any work; this module
runs a plan and commits its run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.common.sources import SourceFile
from pipeline.common.storage import Location
from pipeline.drafts.plan import GenerateConfig, RunPlan, plan_run
from pipeline.drafts.shards import (
    MANIFEST,
    REJECTS,
    SCHEMA_VERSION,
    SUCCESS,
    content_hash,
    describe_parts,
    manifest_digest,
    open_run,
    part_filename,
    schema_with_metadata,
    write_rejects,
)

CRASH_HOOK_ENV = "MEDLM_TEST_CRASH_AFTER_PARTS"  # tests: fail after the first part file is hashed


@dataclass
class RunSummary:
    run_id: str
    run_dir: str  # a local path or an s3:// URI
    rows_read: int
    rows_written: int
    rows_rejected: int
    rejected_by_reason: dict
    content_hash: str
    reused: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        verb = "reused complete run" if self.reused else "wrote run"
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items())) or "none"
        return [
            f"{verb} {self.run_id} in {self.seconds:.1f} s",
            f"rows read {self.rows_read} = written {self.rows_written} + rejected {self.rows_rejected} ({reasons})",
            f"content hash {self.content_hash}",
            f"run directory {self.run_dir}",
        ]


def git_revision() -> str:
    """The code's commit (with "-dirty" for uncommitted changes); "unknown" outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _config_record(plan: RunPlan) -> dict:
    record = dataclasses.asdict(plan.config)
    record.update(
        source=[s.path for s in plan.sources],
        checkpoint=plan.checkpoint_uri,
        output=plan.layout.output.uri,
        run_id=plan.run_id,
    )
    return record


def summary_of(run_dir: Location, reused: bool, seconds: float) -> RunSummary:
    m = open_run(run_dir).manifest
    return RunSummary(
        run_id=m["run_id"],
        run_dir=run_dir.uri,
        rows_read=m["rows"]["read"],
        rows_written=m["rows"]["written"],
        rows_rejected=m["rows"]["rejected"],
        rejected_by_reason=m["rows"]["rejected_by_reason"],
        content_hash=m["content_hash"],
        reused=reused,
        seconds=seconds,
    )


def normalise_sources(plan: RunPlan, say: Callable[[str], None]):
    """Read + normalise + tokenise (materialised: small, and duplicates need a global view).

    Returns (normalised dataset, duplicates, rows read); ``duplicates`` maps the (source_index,
    record_no) of every later copy of an id to where the kept first copy is.
    """
    from pipeline.common.sources import duplicate_rows, first_occurrences, read_normalised

    normalised = read_normalised(
        plan.sources, checkpoint=plan.checkpoint_uri, gen_len=plan.config.gen_len,
        max_response_len=plan.max_response_len, max_total_len=plan.max_positions,
    ).materialize()
    keys = []
    for batch in normalised.select_columns(["id", "source_index", "record_no", "status"]).iter_batches(
        batch_format="pyarrow", batch_size=65536
    ):
        cols = batch.to_pydict()
        keys += [(i, s, r) for i, s, r, st in zip(cols["id"], cols["source_index"], cols["record_no"], cols["status"])
                 if st == "ok"]
    duplicates = duplicate_rows(first_occurrences(keys), keys)
    rows_read = normalised.count()
    say(f"read {rows_read} rows from {len(plan.sources)} source file(s): {len(keys) - len(duplicates)} usable, "
        f"{rows_read - len(keys)} failed a check, {len(duplicates)} repeat an earlier id")
    return normalised, duplicates, rows_read


def collect_rejects(normalised, duplicates: dict, sources: list[SourceFile]) -> list[dict]:
    """Every row that will not be drafted, with its reason (few; gathered on the driver)."""
    from pipeline.common.sources import reject_records, select_rows

    rejects: list[dict] = []
    for batch in normalised.map_batches(
        select_rows, batch_format="pyarrow", fn_kwargs={"duplicates": duplicates, "want_ok": False}
    ).iter_batches(batch_format="pyarrow", batch_size=4096):
        rejects += reject_records(batch, sources)
    return rejects


def draft_align_write(plan: RunPlan, normalised, duplicates: dict, staging: Location, provenance: dict,
                      say: Callable[[str], None]) -> None:
    """Usable rows -> DraftActor pool -> align tasks (which also write) -> part files in ``staging``."""
    from ray.data import ActorPoolStrategy, SaveMode, TaskPoolStrategy
    from ray.data.datasource import FilenameProvider

    from pipeline.common.sources import select_rows
    from pipeline.drafts.align import align_table
    from pipeline.drafts.stages import DraftActor

    class PartFilenames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return part_filename(task_index)

    cfg = plan.config
    # Materialised before the actors start: once they hold every CPU, no upstream task could run.
    usable = (
        normalised.map_batches(select_rows, batch_format="pyarrow",
                               fn_kwargs={"duplicates": duplicates, "want_ok": True})
        .repartition(target_num_rows_per_block=cfg.batch_size)  # one block per draft call: spreads over actors
        .materialize()
    )
    min_actors, max_actors = cfg.pool_size()
    pool = ActorPoolStrategy(size=min_actors) if min_actors == max_actors else ActorPoolStrategy(
        min_size=min_actors, max_size=max_actors)
    device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
    say(f"drafting {usable.count()} rows with {min_actors}{'' if min_actors == max_actors else f'-{max_actors}'} "
        f"actor(s) on {device}")
    (
        usable.map_batches(
            DraftActor,
            compute=pool,
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.num_gpus_per_actor or None,
            fn_constructor_kwargs={
                "checkpoint": plan.checkpoint_uri,
                "recipe": plan.recipe.to_dict(),
                "tokens_per_forward": cfg.tokens_per_forward,
                "num_threads": max(1, int(cfg.cpus_per_actor)),
                "device": device,
            },
        )
        .map_batches(align_table, batch_format="pyarrow", num_cpus=cfg.align_num_cpus,
                     compute=TaskPoolStrategy(size=cfg.align_concurrency), fn_kwargs={"del_id": plan.del_id})
        .write_parquet(  # same remote args as align, so each align task also writes its rows
            staging.path,
            filesystem=staging.fs,
            ray_remote_args={"num_cpus": cfg.align_num_cpus},
            concurrency=cfg.align_concurrency,
            schema=schema_with_metadata(provenance),
            compression="zstd",
            row_group_size=cfg.row_group_size,
            min_rows_per_file=cfg.rows_per_file,
            filename_provider=PartFilenames(),
            mode=SaveMode.OVERWRITE,  # the staging directory is ours alone
        )
    )


def _crash_hook(i: int, _path) -> None:
    if os.environ.get(CRASH_HOOK_ENV) and i == 0:
        raise RuntimeError(f"{CRASH_HOOK_ENV} is set: stopping after the first part file (test hook)")


def write_manifest(plan: RunPlan, staging: Location, rows_read: int, rejects: list[dict], provenance: dict,
                   started: float) -> None:
    """Hash the parts, reconcile the row accounting, write ``_manifest.json`` then ``_SUCCESS``."""
    import ray

    files = describe_parts(staging, on_file=_crash_hook)
    written = sum(f["rows"] for f in files)
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    if rows_read != written + len(rejects):
        raise RuntimeError(
            f"row accounting does not reconcile: read {rows_read} != written {written} + rejected {len(rejects)}; "
            f"the run is left uncommitted in {staging}"
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": plan.run_id,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "rejects_file": REJECTS,
        "rows": {"read": rows_read, "written": written, "rejected": len(rejects), "rejected_by_reason": by_reason},
        "content_hash": content_hash(staging / f["name"] for f in files),
        "recipe": plan.recipe.to_dict(),
        "sources": [s.to_dict() for s in plan.sources],
        "checkpoint": {"path": plan.checkpoint_uri, "hash": plan.checkpoint_hash},
        "tokenizer_hash": plan.tokenizer_hash,
        "seed": plan.config.seed,
        "config": provenance["config"],
        "git_revision": provenance["git_revision"],
        "derived_from": plan.derived_from,
        "warnings": plan.warnings,
        "runtime": {
            "ray": ray.__version__,
            "host": platform.node(),
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    blob = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    (staging / MANIFEST).write_bytes(blob)
    (staging / SUCCESS).write_text(manifest_digest(blob) + "\n")  # last: from here on readers trust the run


def execute_run(plan: RunPlan, say: Callable[[str], None] = print) -> RunSummary:
    """Run the Ray Data pipeline into a staging directory and commit it (see the module docstring)."""
    from ray.data import DataContext

    started = time.perf_counter()
    DataContext.get_current().enable_progress_bars = not os.environ.get("CI")
    staging = plan.layout.new_staging(plan.run_id)
    say(f"run {plan.run_id}: staging in {staging}")
    provenance = {
        "run_id": plan.run_id,
        "checkpoint_hash": plan.checkpoint_hash,
        "tokenizer_hash": plan.tokenizer_hash,
        "seed": str(plan.config.seed),
        "recipe": plan.recipe.to_dict(),
        "config": _config_record(plan),
        "git_revision": git_revision(),
    }
    normalised, duplicates, rows_read = normalise_sources(plan, say)
    rejects = collect_rejects(normalised, duplicates, plan.sources)
    draft_align_write(plan, normalised, duplicates, staging, provenance, say)
    write_rejects(staging / REJECTS, rejects)  # after the Parquet sink, which empties its directory first
    say("hashing part files and writing the manifest")
    write_manifest(plan, staging, rows_read, rejects, provenance, started)
    run_dir = plan.layout.commit(staging, plan.run_id)
    plan.layout.set_current(plan.run_id)
    return summary_of(run_dir, reused=False, seconds=time.perf_counter() - started)


def run_plan(plan: RunPlan, say: Callable[[str], None] = print) -> RunSummary:
    """Reuse a complete run with the plan's id (unless ``force``) or execute a new one."""
    started = time.perf_counter()
    if plan.layout.is_complete(plan.run_id) and not plan.config.force:
        plan.layout.set_current(plan.run_id)
        say(f"run {plan.run_id} is already complete; reusing it (pass force=true to regenerate)")
        return summary_of(plan.layout.run_dir(plan.run_id), reused=True, seconds=time.perf_counter() - started)
    return execute_run(plan, say)


def run_generate(cfg: GenerateConfig, say: Callable[[str], None] = print) -> RunSummary:
    """Plan (every fail-fast check), then run; Ray must be initialised or startable locally."""
    return run_plan(plan_run(cfg), say)
