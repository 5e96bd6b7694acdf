"""PGD falsification ends at the first point its ``confirm`` accepts and returns only confirmed points."""

import numpy as np
import torch

from vsbench.bounds.graph import Graph
from vsbench.spec.api import Region
from vsbench.verify.attack import pgd_attack


def _identity_problem():
    """y = x on [0, 1]^2; the clause Y_0 >= 0.5 holds strictly where x_0 > 0.5."""
    g = Graph.from_dense([(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))])
    return g, Region(np.zeros(2), np.ones(2), [(np.array([[-1.0, 0.0]]), np.array([-0.5]))])


def test_pgd_stops_at_the_first_confirmed_point():
    g, region = _identity_problem()
    calls = []

    def confirm(x):
        calls.append(x.copy())
        return x if x[0] > 0.5 else None

    x = pgd_attack(g, region, restarts=8, steps=50, confirm=confirm)
    assert x is not None and x[0] > 0.5
    assert len(calls) == 1  # later, better points were never tried: the search ended at the first


def test_pgd_returns_only_confirmed_points():
    g, region = _identity_problem()
    calls = []

    def reject(x):  # confirms nothing
        calls.append(x.copy())

    assert pgd_attack(g, region, restarts=8, steps=50, confirm=reject) is None
    assert len(calls) > 1  # each new best violation was tried
    best = pgd_attack(g, region, restarts=8, steps=50)  # without confirm: the best float64 violation
    assert best is not None and best[0] > 0.5
