"""`medlm inspect <run dir | output dir>`: what a draft run holds, as polars tables.

Why: before training on a run, a person should see at a glance whether the drafts look like the
recipe intended (length statistics, how far drafts are from their references, the replace / delete /
insert mix the editor will learn, the budget mix) and what was rejected and why.
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

from pipeline.common.storage import StorageError
from pipeline.drafts import RunNotReady, open_run

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def length_stats(drafts: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for name in ("prompt_ids", "target_ids", "draft_ids"):
        lengths = drafts.get_column(name).list.len()
        rows.append(
            {
                "column": name,
                "min": lengths.min(),
                "mean": round(float(lengths.mean() or 0), 1),
                "p50": lengths.quantile(0.5),
                "p90": lengths.quantile(0.9),
                "max": lengths.max(),
            }
        )
    return pl.DataFrame(rows)


def edit_distance_quantiles(drafts: pl.DataFrame) -> pl.DataFrame:
    d = drafts.get_column("edit_distance")
    return pl.DataFrame(
        {f"p{int(q * 100)}": [d.quantile(q, interpolation="nearest")] for q in QUANTILES}
        | {"mean": [round(float(d.mean() or 0), 2)]}
    )


def edit_mix(drafts: pl.DataFrame) -> pl.DataFrame:
    totals = drafts.select(pl.col("n_replace").sum(), pl.col("n_delete").sum(), pl.col("n_insert").sum()).row(0)
    total = sum(totals) or 1
    return pl.DataFrame(
        {
            "edit": ["replace", "delete", "insert"],
            "count": list(totals),
            "share": [round(t / total, 3) for t in totals],
        }
    )


def recipe_mix(drafts: pl.DataFrame) -> pl.DataFrame:
    return (
        drafts.group_by("tokens_per_step", "mask_steps", "edit_steps")
        .agg(
            pl.len().alias("rows"),
            pl.col("edit_steps_applied").mean().round(2).alias("edit_steps_applied_mean"),
            pl.col("edit_distance").mean().round(2).alias("edit_distance_mean"),
        )
        .sort("tokens_per_step", "edit_steps")
    )


def rejects_by_reason(rejects: pl.DataFrame) -> pl.DataFrame:
    if rejects.height == 0:
        return pl.DataFrame({"reason": [], "rows": []}, schema={"reason": pl.String, "rows": pl.UInt32})
    return rejects.group_by("reason").agg(pl.len().alias("rows")).sort("rows", "reason", descending=[True, False])


def summary_tables(run_path) -> tuple[dict, dict[str, pl.DataFrame]]:
    """(manifest, named tables) for a complete run; raises RunNotReady for anything else."""
    run = open_run(run_path, verify_files=True)
    drafts = pl.from_arrow(run.to_arrow())
    rejects = pl.from_arrow(run.rejects())
    tables = {
        "lengths (tokens)": length_stats(drafts),
        "edit distance draft -> reference (tokens)": edit_distance_quantiles(drafts),
        "one-step label mix": edit_mix(drafts),
        "recipe mix": recipe_mix(drafts),
        "source formats": drafts.group_by("source_format").agg(pl.len().alias("rows")).sort("source_format"),
        "rejects by reason": rejects_by_reason(rejects),
    }
    return run.manifest, tables


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm inspect", description=__doc__)
    ap.add_argument("run", help="a run directory (OUT/runs/<id>) or an output directory (its CURRENT run); "
                                "a local path or an s3:// URI")
    args = ap.parse_args(argv)
    try:
        manifest, tables = summary_tables(args.run)
    except (RunNotReady, StorageError) as e:
        print(f"medlm inspect: error: {e}", file=sys.stderr)
        return 2
    rows = manifest["rows"]
    print(f"run {manifest['run_id']} ({manifest['schema_version']}, created {manifest['created_at']})")
    print(f"rows: read {rows['read']} = written {rows['written']} + rejected {rows['rejected']}")
    print(f"checkpoint {manifest['checkpoint']['hash']}  tokenizer {manifest['tokenizer_hash']}  "
          f"seed {manifest['seed']}  git {manifest['git_revision']}")
    print(f"content hash {manifest['content_hash']}")
    if manifest.get("derived_from"):
        print(f"regenerated from run {manifest['derived_from']['run_id']}")
    with pl.Config(tbl_rows=50, tbl_cols=12, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        for title, table in tables.items():
            print(f"\n{title}")
            print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
