"""Cost of canonical edit labels against raw rapidfuzz editops on the same pairs.

2,000 pairs of 512 tokens with ~20% edits (replace / delete / insert mixed). Goal: the whole label
computation at most 1.3x the raw ``Levenshtein.editops`` time. Repeated, medians quoted, both timed
in the same process, alternating, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapidfuzz.distance import Levenshtein  # noqa: E402

from benchmarks.common import median, write_result  # noqa: E402
from medlm.edits import edit_labels, edit_labels_batch  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    pairs = make_pairs(args.pairs, args.length, args.rate)
    noisy = [a for a, _ in pairs]
    clean = [b for _, b in pairs]
    raw, labels, batch = [], [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        for a, b in pairs:
            Levenshtein.editops(a, b)
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        for a, b in pairs:
            edit_labels(a, b, del_id=-2)
        labels.append(time.perf_counter() - t)
        t = time.perf_counter()
        edit_labels_batch(noisy, clean, del_id=-2)
        batch.append(time.perf_counter() - t)
        print(f"repeat {r + 1}/{args.repeats}: editops {raw[-1]:.3f}s  labels {labels[-1]:.3f}s  batch {batch[-1]:.3f}s", flush=True)
    ratio = median(labels) / median(raw)
    ratios = [l / e for l, e in zip(labels, raw)]
    mean_ops = sum(len(Levenshtein.editops(a, b)) for a, b in pairs[:200]) / 200
    result = {
        "pairs": args.pairs, "length": args.length, "edit_rate": args.rate, "mean_editops_per_pair": mean_ops,
        "repeats": args.repeats,
        "raw_editops_s_median": median(raw), "edit_labels_s_median": median(labels), "batch_form_s_median": median(batch),
        "ratio_labels_over_editops": ratio, "ratio_per_repeat_median": median(ratios),
        "us_per_pair_labels": 1e6 * median(labels) / args.pairs, "us_per_pair_editops": 1e6 * median(raw) / args.pairs,
        "goal": "labels <= 1.3x raw editops", "goal_met": ratio <= 1.3,
    }
    print(f"median editops {result['raw_editops_s_median']:.3f}s, labels {result['edit_labels_s_median']:.3f}s, ratio {ratio:.2f}x (goal <= 1.3x)")
    write_result("bench_edits", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
