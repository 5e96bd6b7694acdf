"""Uncertainty of verified accuracy: intervals, paired tests, multiple-testing correction.

- :func:`clopper_pearson`: exact 95 % binomial interval (scipy's ``binomtest(...).proportion_ci``).
- :func:`mcnemar_exact`: exact McNemar test, a two-sided binomial test on the discordant pairs (scipy).
- :func:`paired_difference`: difference of two paired proportions with the adjusted Wald interval of
  Bonett & Price (2012), "Adjusted Wald confidence interval for a difference of binomial proportions
  based on paired data", J. Educational and Behavioral Statistics 37(4):479-488. Hand-written (three
  lines): scipy has no paired-proportion interval and statsmodels is not a dependency.
- :func:`holm`: Holm's (1979) step-down adjustment of p-values for the number of rows (hand-written:
  scipy only ships Benjamini-Hochberg, which controls a different error rate).
"""

from __future__ import annotations

import math

from scipy.stats import binomtest, norm


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion; ``(nan, nan)`` when ``n == 0``."""
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar_exact(base_only: int, cand_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: images only the baseline verifies
    and images only the candidate verifies (1.0 when there are none)."""
    n = base_only + cand_only
    if n == 0:
        return 1.0
    return float(binomtest(int(cand_only), n, 0.5).pvalue)


def paired_difference(base_only: int, cand_only: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """``(difference, lo, hi)`` of candidate minus baseline accuracy over ``n`` paired images.

    The point estimate is the plain ``(cand_only - base_only) / n``; the interval is Bonett & Price's
    adjusted Wald interval (add one to each discordant count and two to ``n``), clipped to [-1, 1].
    """
    if n == 0:
        return math.nan, math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p12, p21 = (cand_only + 1) / (n + 2), (base_only + 1) / (n + 2)
    centre = p12 - p21
    half = z * math.sqrt(max(0.0, p12 + p21 - centre ** 2) / (n + 2))
    return (cand_only - base_only) / n, max(-1.0, centre - half), min(1.0, centre + half)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): compare each with 0.05 to control the
    family-wise error rate over all rows."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
