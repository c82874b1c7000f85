"""Cost of canonical edit labels against raw rapidfuzz editops on the same pairs.

2,000 pairs of 512 tokens with ~20% edits (replace / delete / insert mixed). Goal: the whole label
computation at most 1.3x the raw ``Levenshtein.editops`` time, read as the MEDIAN OF PER-REPEAT
RATIOS: each repeat times both over the same pairs side by side (order alternating between
repeats), so a burst of background load hits one repeat's pair of timings rather than one side.
The ratio of medians is reported too, for comparison with older results.

    python benchmarks/bench_edits.py                    # about 10-20 s on an idle 2-core machine
    python benchmarks/bench_edits.py --quick --profile  # smoke run + where label time goes

``--profile`` splits one label pass into editops / matching blocks / Python post-processing and
adds a cProfile listing; the split says whether the Python part is worth optimising.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapidfuzz.distance import Levenshtein

from benchmarks.common import add_quick_flag, median, start, write_result
from medlm.edits import edit_labels, edit_labels_batch

GOAL = 1.3


def make_pairs(n: int, length: int, rate: float, seed: int = 0, vocab: int = 32000):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        clean = [rng.randrange(vocab) for _ in range(length)]
        noisy = []
        for t in clean:
            r = rng.random()
            if r < rate / 3:
                noisy.append(rng.randrange(vocab))  # replace
            elif r < 2 * rate / 3:
                pass  # delete
            elif r < rate:
                noisy += [t, rng.randrange(vocab)]  # insert
            else:
                noisy.append(t)
        pairs.append((noisy, clean))
    return pairs


def profile(pairs, rounds: int = 5) -> dict:
    """Best-of-``rounds`` CPU time of each part of a label pass, plus a cProfile listing of one pass."""
    def best(fn):
        times = []
        for _ in range(rounds):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        return min(times)

    ops = [Levenshtein.editops(a, b) for a, b in pairs]
    editops_s = best(lambda: [Levenshtein.editops(a, b) for a, b in pairs])
    blocks_s = best(lambda: [o.as_matching_blocks() for o in ops])
    labels_s = best(lambda: [edit_labels(a, b, del_id=-2) for a, b in pairs])
    prof = cProfile.Profile()
    prof.enable()
    for a, b in pairs:
        edit_labels(a, b, del_id=-2)
    prof.disable()
    listing = io.StringIO()
    pstats.Stats(prof, stream=listing).sort_stats("tottime").print_stats(6)
    post = labels_s - editops_s - blocks_s
    split = {"pairs": len(pairs), "rounds": rounds, "cpu_s_editops": round(editops_s, 4),
             "cpu_s_matching_blocks": round(blocks_s, 4), "cpu_s_edit_labels": round(labels_s, 4),
             "cpu_s_python_postprocessing": round(post, 4),
             "postprocessing_share_of_labels": round(post / labels_s, 3), "labels_over_editops": round(labels_s / editops_s, 3)}
    print(f"profile (best of {rounds}, CPU s): editops {editops_s:.4f}, matching blocks {blocks_s:.4f}, "
          f"python post-processing {post:.4f} ({100 * post / labels_s:.0f}% of edit_labels {labels_s:.4f}; "
          f"labels/editops {labels_s / editops_s:.2f})")
    print(listing.getvalue().strip())
    return split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="also split a label pass into its parts (cProfile)")
    add_quick_flag(ap)
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.repeats = min(args.pairs, 200), min(args.repeats, 3)
    started = start("bench_edits")
    pairs = make_pairs(args.pairs, args.length, args.rate)
    noisy = [a for a, _ in pairs]
    clean = [b for _, b in pairs]

    def time_raw():
        t = time.perf_counter()
        for a, b in pairs:
            Levenshtein.editops(a, b)
        return time.perf_counter() - t

    def time_labels():
        t = time.perf_counter()
        for a, b in pairs:
            edit_labels(a, b, del_id=-2)
        return time.perf_counter() - t

    raw, labels, batch = [], [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            raw.append(time_raw())
            labels.append(time_labels())
        else:
            labels.append(time_labels())
            raw.append(time_raw())
        t = time.perf_counter()
        edit_labels_batch(noisy, clean, del_id=-2)
        batch.append(time.perf_counter() - t)
        print(f"repeat {r + 1}/{args.repeats}: editops {raw[-1]:.3f}s  labels {labels[-1]:.3f}s "
              f"(ratio {labels[-1] / raw[-1]:.2f})  batch {batch[-1]:.3f}s", flush=True)
    ratios = [lab / e for lab, e in zip(labels, raw)]
    ratio = median(ratios)
    mean_ops = sum(len(Levenshtein.editops(a, b)) for a, b in pairs[:200]) / min(200, len(pairs))
    result = {
        "pairs": args.pairs, "length": args.length, "edit_rate": args.rate, "mean_editops_per_pair": mean_ops,
        "repeats": args.repeats,
        "raw_editops_s_median": median(raw), "edit_labels_s_median": median(labels), "batch_form_s_median": median(batch),
        "ratio_per_repeat": [round(x, 3) for x in ratios],
        "ratio_per_repeat_median": ratio,
        "ratio_of_medians": median(labels) / median(raw),
        "us_per_pair_labels": 1e6 * median(labels) / args.pairs, "us_per_pair_editops": 1e6 * median(raw) / args.pairs,
        "goal": f"edit labels <= {GOAL}x raw editops (median of per-repeat ratios)", "goal_met": ratio <= GOAL,
    }
    if args.profile:
        result["profile"] = profile(pairs[: min(len(pairs), 300)])
    print(f"median editops {result['raw_editops_s_median']:.3f}s, labels {result['edit_labels_s_median']:.3f}s, "
          f"median per-repeat ratio {ratio:.2f}x (goal <= {GOAL}x): {'met' if result['goal_met'] else 'MISSED'}")
    write_result("bench_edits", result, started=started, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
