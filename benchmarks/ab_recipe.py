"""Which refiner recipe: the pre-fix one, the fixed insertion head, or ME-DLM's draft distribution?

Side by side on one base checkpoint (the demo's), with the same refiner training (the demo's settings,
``--refine-steps`` steps) and the same held-out toy problems, each arm:

  today      drafts from all masks in confidence order, 25 % of rows then edited 1-2 steps by the base
             model's insertion head, which never saw an edit label (the recipe before the fix; the drafting
             job now refuses it, so this arm drafts from a copy of the base that does not record its heads'
             training, which the job accepts with a warning), LLaDA's loss weighting;
  fixed-head the same drafts without the untrained edit steps (the default now);
  me-dlm     ME-DLM's draft distribution: each draft starts from its reference with t ~ U(0, 1) of the
             positions masked and commits in random order; ME-DLM's loss weighting (mask and edit losses / t).

Each refiner is evaluated at 1/4 and 1/8 of the full step budget, mask-only and mask + edit, on the
same ``--problems`` test problems, and each pair of arms is compared per problem (paired difference
with Newcombe's interval, exact McNemar test). Writes ``benchmarks/results/ab_recipe.json``.

    python benchmarks/ab_recipe.py --base artifacts/demo/train/base/export --data artifacts/demo/data

A quality measurement, not a timing: CPU contention slows it but does not change its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medlm.checkpoint import EDIT_EXAMPLES_SEEN, MASK_EXAMPLES_SEEN, META_FILE
from medlm.evaluation import budget_table
from medlm.stats import paired_comparison, wilson_interval

ARMS = {
    "today": dict(intermediate_prob=0.25, max_intermediate_edit_steps=2, draft_start="masked",
                  commit_order="confidence", loss_weighting="llada"),
    "fixed-head": dict(intermediate_prob=0.0, draft_start="masked", commit_order="confidence", loss_weighting="llada"),
    "me-dlm": dict(intermediate_prob=0.0, draft_start="partial", commit_order="random", loss_weighting="me-dlm"),
}
METRICS = ("correct_after", "valid_after")


def unrecorded_copy(base: Path, dest: Path) -> Path:
    """The base checkpoint without its heads' history: what checkpoints looked like before it was recorded."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    meta_file = dest / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    for key in (EDIT_EXAMPLES_SEEN, MASK_EXAMPLES_SEEN):
        meta.pop(key, None)
    meta_file.write_text(json.dumps(meta, indent=2))
    return dest


def run_arm(name: str, arm: dict, args, out: Path) -> dict:
    """Drafts, refiner training and evaluation of one arm (reused when its result file exists)."""
    from pipeline.demo import DemoConfig, _train
    from pipeline.drafts import GenerateConfig, run_generate
    from pipeline.eval import run_eval

    done = out / "result.json"
    if done.is_file():
        print(f"[ab] {name}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoConfig(out=str(out), refine_steps=args.refine_steps)
    timings = {}
    t = time.perf_counter()
    checkpoint = unrecorded_copy(args.base, out / "base-unrecorded") if arm["intermediate_prob"] > 0 else args.base
    gen = {k: arm[k] for k in ("intermediate_prob", "draft_start", "commit_order")}
    if "max_intermediate_edit_steps" in arm:
        gen["max_intermediate_edit_steps"] = arm["max_intermediate_edit_steps"]
    source = args.data / "draft_sources.jsonl"
    if args.draft_rows:  # the first N rows: the same problems in every arm
        source = out / f"draft_sources_{args.draft_rows}.jsonl"
        lines = (args.data / "draft_sources.jsonl").read_text().splitlines(keepends=True)[: args.draft_rows]
        source.write_text("".join(lines))
    drafts = run_generate(GenerateConfig(
        source=str(source), checkpoint=str(checkpoint), output=str(out / "drafts"),
        seed=demo.seed, gen_len=demo.gen_len, tokens_per_step=list(demo.tokens_per_step), num_actors=2, batch_size=32,
        force=True, **gen))
    timings["drafts"] = time.perf_counter() - t
    t = time.perf_counter()
    refiner = _train(demo, out, run_name="refiner", init_from=str(args.base), objective="mixture",
                     mix_ratio=demo.mix_ratio, sources=[str(args.data / "train.jsonl")],
                     draft_runs=[str(drafts.run_dir)], max_steps=args.refine_steps, lr=demo.refine_lr,
                     min_lr=demo.refine_min_lr, loss_weighting=arm["loss_weighting"])
    timings["train_refiner"] = time.perf_counter() - t
    t = time.perf_counter()
    budgets = [b for pair in budget_table(demo.gen_len, fractions=(0.25, 0.125)) for b in pair]
    run_eval(refiner["export_dir"], "toy", budgets, n_samples=args.problems, split="test", batch_size=50,
             num_actors=2, out_dir=str(out / "eval"), seed=demo.seed, gen_len=demo.gen_len)
    timings["evaluate"] = time.perf_counter() - t
    outcomes = {}
    for b in budgets:
        records = [json.loads(line) for line in (out / "eval" / f"samples_{b.label}.jsonl").read_text().splitlines()]
        outcomes[b.label] = {r["id"]: {m: bool(r.get(m)) for m in METRICS} for r in records}
    manifest = json.loads((Path(drafts.run_dir) / "_manifest.json").read_text())
    result = {"arm": name, "settings": arm, "timings_s": timings, "draft_run": str(drafts.run_dir),
              "draft_warnings": manifest.get("warnings", []), "refiner": refiner["export_dir"],
              "draft_edit_distance_mean": _mean_draft_distance(Path(drafts.run_dir)),
              "draft_length_mean": _mean_draft_length(Path(drafts.run_dir)), "outcomes": outcomes}
    done.write_text(json.dumps(result, indent=1))
    return result


def _draft_column(run_dir: Path, column: str):
    import polars as pl

    return pl.scan_parquet(str(run_dir / "part-*.parquet")).select(column).collect()[column]


def _mean_draft_distance(run_dir: Path) -> float:
    return float(_draft_column(run_dir, "edit_distance").mean())


def _mean_draft_length(run_dir: Path) -> float:
    return float(_draft_column(run_dir, "draft_ids").list.len().mean())


def summarise(results: dict[str, dict]) -> dict:
    """Rates with Wilson intervals per arm and budget; paired differences between arms."""
    rows, pairs = [], []
    names = list(results)
    labels = list(next(iter(results.values()))["outcomes"])
    for label in labels:
        ids = sorted(set.intersection(*(set(results[a]["outcomes"][label]) for a in names)))
        for a in names:
            o = results[a]["outcomes"][label]
            for m in METRICS:
                k = sum(o[i][m] for i in ids)
                lo, hi = wilson_interval(k, len(ids))
                rows.append({"arm": a, "budget": label, "metric": m, "n": len(ids), "rate": k / len(ids),
                             "ci95": [lo, hi]})
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for m in METRICS:
                    cmp = paired_comparison([results[b]["outcomes"][label][s][m] for s in ids],
                                            [results[a]["outcomes"][label][s][m] for s in ids])
                    pairs.append({"budget": label, "metric": m, "arm": b, "minus": a, **cmp.as_dict()})
    return {"rows": rows, "paired": pairs}


def markdown(summary: dict, results: dict) -> str:
    arms = list(results)
    lines = ["| budget | " + " | ".join(f"{a}: right / valid" for a in arms) + " |",
             "|---|" + "---|" * len(arms)]
    by = {(r["arm"], r["budget"], r["metric"]): r for r in summary["rows"]}
    for label in next(iter(results.values()))["outcomes"]:
        cells = []
        for a in arms:
            right, valid = by[(a, label, "correct_after")], by[(a, label, "valid_after")]
            cells.append(f"{100 * right['rate']:.1f} [{100 * right['ci95'][0]:.1f}, {100 * right['ci95'][1]:.1f}] / "
                         f"{100 * valid['rate']:.1f} [{100 * valid['ci95'][0]:.1f}, {100 * valid['ci95'][1]:.1f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| budget | metric | arm - arm | difference (points) [95% CI] | McNemar p |", "|---|---|---|---|---|"]
    for p in summary["paired"]:
        lines.append(f"| {p['budget']} | {p['metric']} | {p['arm']} - {p['minus']} | {100 * p['diff']:+.1f} "
                     f"[{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}] | {p['p_value']:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=REPO / "artifacts/demo/train/base/export")
    ap.add_argument("--data", type=Path, default=REPO / "artifacts/demo/data")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts/ab-recipe")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--refine-steps", type=int, default=500)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--draft-rows", type=int, default=0, help="draft only the first N source rows (0: all)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks/results/ab_recipe.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for path, what in ((args.base / "config.json", "--base checkpoint"), (args.data / "train.jsonl", "--data folder")):
        if not path.is_file():
            print(f"ab_recipe: {what} is missing {path}; run `medlm demo` first (it writes both)", file=sys.stderr)
            return 2
    names = [a for a in args.arms.split(",") if a]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        print(f"ab_recipe: unknown arm {unknown[0]!r}; arms are {', '.join(ARMS)}", file=sys.stderr)
        return 2
    from pipeline.common.ray_connect import connect_ray

    started = time.time()
    connect_ray(include_dashboard=True)
    results = {a: run_arm(a, ARMS[a], args, args.out / a) for a in names}
    summary = summarise(results)
    table = markdown(summary, results)
    report = {
        "date": time.strftime("%Y-%m-%d"), "base": str(args.base), "refine_steps": args.refine_steps,
        "draft_rows": args.draft_rows or "all",
        "problems": args.problems, "load_avg_at_end": os.getloadavg(), "wall_s": time.time() - started,
        "arms": {a: {k: v for k, v in r.items() if k != "outcomes"} for a, r in results.items()},
        **summary, "table_markdown": table,
        "outcomes": {a: r["outcomes"] for a, r in results.items()},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"[ab] wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
