"""Uncertainty of the evaluation's rates (no Ray, no numpy): intervals and paired tests.

Why: a table of point estimates on a few hundred problems cannot tell a two-point gain from noise.
Every rate gets a Wilson score interval; two decoders run on the same problems are compared as a
*paired* difference (each problem is its own control, which is much tighter than comparing two
independent rates) with Newcombe's interval for paired proportions and the exact McNemar test.

Conventions: a comparison is always "x minus y" over the same problems. Of the four kinds of
problem, ``both`` are right under x and y, ``only_x`` right under x only, ``only_y`` under y only,
``neither`` under none. The difference of the two rates is ``(only_x - only_y) / n``: only the
discordant problems carry information about it, which is what McNemar's test uses.

See docs/statistics.md for how to read these numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Optional, Sequence

__all__ = ["z_value", "wilson_interval", "mcnemar_exact", "newcombe_paired_interval", "PairedComparison",
           "paired_comparison"]


def z_value(confidence: float = 0.95) -> float:
    """The two-sided standard normal quantile for ``confidence`` (1.959964 at 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a rate ``successes / n``.

    Why Wilson and not the textbook ``p +- z * sqrt(p(1-p)/n)``: that one collapses to a zero-width
    interval at 0/n and n/n and undercovers near the ends, exactly where edit error rates sit. Wilson
    inverts the score test, stays inside [0, 1] and keeps close to its nominal coverage at small n.
    """
    _check_count("successes", successes)
    _check_count("n", n)
    if n == 0:
        raise ValueError("n must be >= 1: a rate over no samples has no interval")
    if successes > n:
        raise ValueError(f"successes ({successes}) cannot exceed n ({n})")
    z = z_value(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    lo, hi = centre - half, centre + half
    # exact ends: at 0/n the lower bound is 0 and at n/n the upper bound is 1 (rounding can miss both)
    return (0.0 if successes == 0 else max(0.0, lo)), (1.0 if successes == n else min(1.0, hi))


def mcnemar_exact(only_x: int, only_y: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``only_x`` out of the ``only_x + only_y``
    discordant pairs against a fair coin (doubled smaller tail, capped at 1). No discordant pair: 1.

    Why exact: the chi-square version needs a dozen or more discordant pairs to be trusted, and an
    edit that breaks 3 drafts while fixing 9 is exactly the case worth testing.
    """
    _check_count("only_x", only_x)
    _check_count("only_y", only_y)
    m = only_x + only_y
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_x, only_y) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** m)))


def newcombe_paired_interval(both: int, only_x: int, only_y: int, neither: int,
                             confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, lower, upper) for ``rate_x - rate_y`` over paired samples, by Newcombe's method 10
    (Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions
    based on paired data"): the Wilson intervals of both rates combined by square-and-add, with the
    correlation of the paired outcomes (phi, continuity-corrected towards zero by n/2) taken out.

    Why this one: it needs no resampling (no seed, the same numbers on every machine), stays inside
    [-1, 1], and unlike the Wald interval it does not collapse when few problems are discordant.
    """
    for name, value in (("both", both), ("only_x", only_x), ("only_y", only_y), ("neither", neither)):
        _check_count(name, value)
    n = both + only_x + only_y + neither
    if n == 0:
        raise ValueError("a paired comparison needs at least one sample")
    x_right, y_right = both + only_x, both + only_y
    px, py = x_right / n, y_right / n
    lx, ux = wilson_interval(x_right, n, confidence)
    ly, uy = wilson_interval(y_right, n, confidence)
    margins = (x_right, n - x_right, y_right, n - y_right)
    phi = 0.0
    if all(margins):
        cross: float = both * neither - only_x * only_y
        if cross > n / 2:
            cross -= n / 2
        elif cross >= 0:
            cross = 0
        phi = cross / math.sqrt(math.prod(margins))
    diff = px - py
    down = (px - lx) ** 2 + (uy - py) ** 2 - 2 * phi * (px - lx) * (uy - py)
    up = (py - ly) ** 2 + (ux - px) ** 2 - 2 * phi * (py - ly) * (ux - px)
    return diff, max(-1.0, diff - math.sqrt(max(0.0, down))), min(1.0, diff + math.sqrt(max(0.0, up)))


@dataclass(frozen=True)
class PairedComparison:
    """x against y on the same ``n`` problems: the four counts, the difference of the rates with its
    interval, and the exact McNemar p-value."""

    n: int
    both: int
    only_x: int
    only_y: int
    neither: int
    rate_x: float
    rate_y: float
    diff: float
    ci: tuple[float, float]
    p_value: float

    def as_dict(self) -> dict:
        return {**asdict(self), "ci": list(self.ci)}


def paired_comparison(x: Sequence[bool], y: Sequence[bool], confidence: float = 0.95) -> Optional[PairedComparison]:
    """Compare two outcome vectors over the same problems (position i is problem i in both); None
    when there are no problems."""
    if len(x) != len(y):
        raise ValueError(f"paired outcomes must have the same length, got {len(x)} and {len(y)}")
    if not x:
        return None
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for a, b in zip(x, y):
        counts[(bool(a), bool(b))] += 1
    both, only_x = counts[(True, True)], counts[(True, False)]
    only_y, neither = counts[(False, True)], counts[(False, False)]
    diff, lo, hi = newcombe_paired_interval(both, only_x, only_y, neither, confidence)
    n = len(x)
    return PairedComparison(n=n, both=both, only_x=only_x, only_y=only_y, neither=neither,
                            rate_x=(both + only_x) / n, rate_y=(both + only_y) / n, diff=diff, ci=(lo, hi),
                            p_value=mcnemar_exact(only_x, only_y))
