"""The HiGHS MILP is exact: it matches a dense grid search and lies within the bound engines."""

import numpy as np
import pytest
import torch

from vsbench.bounds.crown import crown_bounds, crown_spec
from vsbench.bounds.graph import Graph
from vsbench.verify.milp import milp_clause


def tiny_layers(seed, widths=(2, 6, 5, 3)):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(o, i, generator=gen, dtype=torch.float64), torch.randn(o, generator=gen, dtype=torch.float64))
        for i, o in zip(widths[:-1], widths[1:])
    ]


@pytest.mark.parametrize("seed", range(6))
def test_milp_matches_grid_and_bounds(seed):
    layers = tiny_layers(seed)
    g = Graph.from_dense(layers)
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    bounds = crown_bounds(g, lo, hi)
    C, rhs = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]), np.array([0.5, 0.0]) + 5.0 * (seed % 2)
    status, x, lb = milp_clause(layers, lo[0], hi[0], [(l[0], u[0]) for l, u in bounds[:-1]], C, rhs, 10)
    axis = torch.linspace(-1, 1, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    t = (g.forward(grid) @ torch.as_tensor(C).T - torch.as_tensor(rhs)).max(1).values
    t_grid = float(t.min())
    crown = (crown_spec(g, lo, hi, torch.as_tensor(C)[None], bounds[:-1]) - torch.as_tensor(rhs)).max().item()
    assert crown <= t_grid + 1e-9  # a row lower bound is a clause lower bound
    if status == "unsat":
        assert t_grid > 0 and crown <= t_grid
    else:
        assert status == "sat" and x is not None
        t_x = float((g.forward(torch.as_tensor(x)[None]) @ torch.as_tensor(C).T - torch.as_tensor(rhs)).max())
        assert t_x <= 1e-6 and abs(t_x - lb) < 1e-5  # the optimum is attained at the returned point
        assert lb <= t_grid + 1e-6 and t_grid - lb < 0.05  # grid spacing 1/300, small Lipschitz constant
        assert np.all(x >= -1 - 1e-9) and np.all(x <= 1 + 1e-9)


def test_big_m_rows_tolerate_bounds_rounded_too_tight():
    """Pre-activation bounds a rounding error too tight (1 - 5e-8 for a true maximum of 1) must not turn
    a property that is violated exactly at that maximum into ``unsat``: the big-M rows use the widened
    bounds as well as the variable bounds (a large outgoing weight makes the gap exceed ``TAU``)."""
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    layers = [(one(1.0), torch.zeros(1, dtype=torch.float64)), (one(-1000.0), torch.zeros(1, dtype=torch.float64))]
    bounds = [(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0 - 5e-8], dtype=torch.float64))]
    # violated where -1000 relu(x) <= -1000, i.e. only at x = 1
    status, x, lb = milp_clause(layers, -torch.ones(1), torch.ones(1), bounds, np.array([[1.0]]), np.array([-1000.0]), 10)
    assert status == "sat" and abs(float(x[0]) - 1.0) < 1e-6, (status, lb)


def test_rounding_slack_is_taken_as_worst_case():
    """y = relu(x) on x = 1 with the property y >= 1.0005 violated nowhere exactly (margin 5e-4), but a
    rounding slack of 1e-3 on the output layer (or 2e-3 on the hidden one) lets y drop by that much: the
    MILP, IBP and CROWN over the slack all find that margin, and without slack all prove it."""
    from vsbench.bounds.ibp import ibp_spec

    one = torch.ones(1, 1, dtype=torch.float64)
    layers = [(one.clone(), torch.zeros(1, dtype=torch.float64)), (one.clone(), torch.zeros(1, dtype=torch.float64))]
    C, rhs = np.array([[-1.0]]), np.array([-1.0005])
    z, d = torch.zeros(1, dtype=torch.float64), torch.full((1,), 1e-3, dtype=torch.float64)
    for slack, proven in [(None, True), ([z, d], False), ([2 * d, z], False)]:
        g = Graph.from_dense(layers, slack=slack)
        bounds = crown_bounds(g, one, one)
        status, _, lb = milp_clause(layers, one[0], one[0], [(l[0], u[0]) for l, u in bounds[:-1]], C, rhs, 10,
                                    slack=slack)
        margins = [lb, float(crown_spec(g, one, one, torch.as_tensor(C)[None])[0, 0] - rhs[0]),
                   float(ibp_spec(g, one, one, torch.as_tensor(C)[None])[0, 0] - rhs[0])]
        assert (status == "unsat") == proven, (slack, status)
        if proven:  # (an infeasible MILP reports its threshold as the bound)
            assert all(m > 1e-6 for m in margins[1:]), margins
        else:
            worst = 5e-4 - float(sum(r.max() for r in slack))  # the largest drop of y
            assert all(m == pytest.approx(worst, abs=1e-9) for m in margins), margins
