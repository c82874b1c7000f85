"""Intervals and paired tests against values worked out by hand (or published), and bad input."""

from __future__ import annotations

import math

import pytest

from medlm.stats import mcnemar_exact, newcombe_paired_interval, paired_comparison, wilson_interval, z_value

Z = 1.959963984540054  # the 97.5% standard normal quantile


def test_z_value_is_the_two_sided_normal_quantile():
    assert z_value(0.95) == pytest.approx(Z, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293, abs=1e-6)


def test_wilson_zero_of_ten():
    # p = 0: centre = upper half-width = (z^2 / 2n) / (1 + z^2 / n), so upper = (z^2 / n) / (1 + z^2 / n)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx((Z * Z / 10) / (1 + Z * Z / 10), abs=1e-12)
    assert hi == pytest.approx(0.2775, abs=1e-4)


def test_wilson_five_of_ten():
    # centre = 1/2 by symmetry; half = z * sqrt(0.025 + z^2/400) / (1 + z^2/10) = 0.364592 / 1.384146
    lo, hi = wilson_interval(5, 10)
    half = Z * math.sqrt(0.25 / 10 + Z * Z / 400) / (1 + Z * Z / 10)
    assert (lo, hi) == (pytest.approx(0.5 - half, abs=1e-12), pytest.approx(0.5 + half, abs=1e-12))
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)


def test_wilson_all_right_is_not_a_point():
    # p = 1: lower = n / (n + z^2), the upper end is exactly 1
    lo, hi = wilson_interval(300, 300)
    assert lo == pytest.approx(300 / (300 + Z * Z), abs=1e-12) and round(lo, 4) == 0.9874
    assert hi == 1.0


def test_wilson_narrows_with_n_and_holds_the_rate():
    for k, n in ((1, 3), (30, 100), (259, 300), (499, 500)):
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo < k / n < hi <= 1.0
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] > wilson_interval(500, 1000)[1] - \
        wilson_interval(500, 1000)[0]


@pytest.mark.parametrize("k,n,match", [(0, 0, "n must be >= 1"), (11, 10, "cannot exceed n"),
                                       (-1, 10, "successes must be an integer"), (1.5, 10, "successes must be"),
                                       (True, 10, "successes must be")])
def test_wilson_bad_input_names_the_field(k, n, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(k, n)


def test_wilson_bad_confidence():
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(1, 2, confidence=95)


def test_mcnemar_exact_hand_cases():
    assert mcnemar_exact(0, 5) == 0.0625  # 2 * (1/2)^5
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, abs=1e-15)  # 2 * (1 + 10) / 2^10
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)  # two-sided: symmetric
    assert mcnemar_exact(3, 3) == 1.0  # the doubled tail exceeds 1 and is capped
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence either way
    assert mcnemar_exact(2, 4) == pytest.approx(2 * (1 + 6 + 15) / 64, abs=1e-15)


def test_mcnemar_large_counts_stay_finite():
    p = mcnemar_exact(400, 600)  # 2^1000 in the denominator: exact integers, then one float
    assert 0.0 < p < 1e-9


def test_mcnemar_bad_input():
    with pytest.raises(ValueError, match="only_y must be an integer >= 0"):
        mcnemar_exact(1, -2)


def test_newcombe_published_example():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8: complete
    # response before / after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]:
    # Newcombe square-and-add -0.0621 (95% CI -0.1186 to -0.0046)
    diff, lo, hi = newcombe_paired_interval(59, 6, 16, 80)
    assert (round(diff, 4), round(lo, 4), round(hi, 4)) == (-0.0621, -0.1186, -0.0046)


def test_newcombe_identical_outcomes_give_a_symmetric_nonzero_interval():
    # x = y on every problem, all right: phi = 0 (a margin is empty), each side is 1 - l with l the
    # Wilson lower bound of 300/300
    diff, lo, hi = newcombe_paired_interval(300, 0, 0, 0)
    width = 1 - 300 / (300 + Z * Z)
    assert diff == 0.0 and lo == pytest.approx(-width, abs=1e-12) and hi == pytest.approx(width, abs=1e-12)


def test_newcombe_mirrors_when_x_and_y_swap():
    diff, lo, hi = newcombe_paired_interval(40, 12, 3, 45)
    back = newcombe_paired_interval(40, 3, 12, 45)
    assert back == (pytest.approx(-diff), pytest.approx(-hi), pytest.approx(-lo))
    assert lo > 0  # 12 gains against 3 losses over 100 problems: the interval excludes 0


def test_newcombe_bad_input():
    with pytest.raises(ValueError, match="at least one sample"):
        newcombe_paired_interval(0, 0, 0, 0)
    with pytest.raises(ValueError, match="neither must be an integer"):
        newcombe_paired_interval(1, 0, 0, -1)


def test_paired_comparison_counts_and_orientation():
    x = [True, True, True, False, False, True, True]  # x - y: 3 problems only x gets right, 1 only y
    y = [True, False, False, True, False, False, True]
    c = paired_comparison(x, y)
    assert (c.n, c.both, c.only_x, c.only_y, c.neither) == (7, 2, 3, 1, 1)
    assert c.rate_x == 5 / 7 and c.rate_y == 3 / 7 and c.diff == pytest.approx(2 / 7)
    assert c.ci[0] < c.diff < c.ci[1]
    assert c.p_value == mcnemar_exact(3, 1) == 0.625
    assert c.as_dict()["ci"] == list(c.ci)
    assert paired_comparison([], []) is None
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([True], [True, False])
