"""Intervals and paired tests against hand-computed values."""

import math

import pytest

from vsbench.report.stats import clopper_pearson, holm, mcnemar_exact, paired_difference


def test_clopper_pearson_closed_forms():
    # x = 0 and x = n have closed forms: (0, 1 - (a/2)^(1/n)) and ((a/2)^(1/n), 1)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    # 5 / 10: the tabulated exact interval (0.1871, 0.8129)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.18709, abs=1e-5) and hi == pytest.approx(0.81291, abs=1e-5)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    # b = 10, c = 2: two-sided p = 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)


def test_paired_difference_bonett_price():
    # n = 100, 10 images only the baseline verifies, 2 only the candidate:
    # p12 = 3/102, p21 = 11/102, centre = -8/102, se = sqrt((14/102 - (8/102)^2) / 102)
    diff, lo, hi = paired_difference(10, 2, 100)
    centre, se = -8 / 102, math.sqrt((14 / 102 - (8 / 102) ** 2) / 102)
    assert diff == pytest.approx(-0.08)
    assert (lo, hi) == pytest.approx((centre - 1.959964 * se, centre + 1.959964 * se), abs=1e-6)
    assert (lo, hi) == pytest.approx((-0.14870, -0.00816), abs=1e-5)
    # no discordant pairs: centred on 0, still a nonzero width
    diff, lo, hi = paired_difference(0, 0, 50)
    assert diff == 0 and lo < 0 < hi


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
