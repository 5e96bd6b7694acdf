"""Exact MILP of a ReLU network clause with HiGHS (big-M encoding over known pre-activation bounds)."""

from __future__ import annotations

import highspy
import numpy as np

TAU = 1e-6  # float64 slack: a clause counts as infeasible only if min t > TAU (float32 error: see float_error)
SLACK = 1e-7  # widening of the pre-activation bounds (variable bounds and big-M rows) against rounding


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy().astype(np.float64) if hasattr(a, "detach") else np.asarray(a, dtype=np.float64)


class _Model:
    """Rows and columns accumulated in plain lists, passed to HiGHS at once."""

    def __init__(self):
        self.lo, self.hi, self.cost, self.integer = [], [], [], []
        self.rows = []  # (cols, vals, lower, upper)

    def cols(self, lo, hi, integer=False) -> np.ndarray:
        start = len(self.lo)
        self.lo += list(lo)
        self.hi += list(hi)
        self.cost += [0.0] * len(lo)
        self.integer += [integer] * len(lo)
        return np.arange(start, len(self.lo))

    def row(self, cols, vals, lower, upper):
        self.rows.append((np.asarray(cols, dtype=np.int32), np.asarray(vals, dtype=np.float64), lower, upper))

    def solve(self, time_limit: float, stop=None):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", max(float(time_limit), 0.01))
        h.setOptionValue("threads", 1)
        # no presolve: its reductions are where a wrong infeasibility claim would come from, and
        # without it the search proves these clauses about as fast (256x4 prop_5_0.03 clauses 6 and 3:
        # 12 and 22 s off, 16 and 16 s on), so one solve decides instead of a presolved one plus a re-check
        h.setOptionValue("presolve", "off")
        if stop is not None:  # polled by HiGHS between MIP nodes; True ends it (status interrupted)
            h.cbMipInterrupt += lambda e: e.interrupt() if stop() else None
        n = len(self.lo)
        h.addVars(n, np.array(self.lo), np.array(self.hi))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(self.cost))
        ints = np.flatnonzero(self.integer).astype(np.int32)
        if len(ints):
            h.changeColsIntegrality(len(ints), ints, np.full(len(ints), highspy.HighsVarType.kInteger))
        starts = np.cumsum([0] + [len(r[0]) for r in self.rows[:-1]]).astype(np.int32)
        h.addRows(
            len(self.rows),
            np.array([r[2] for r in self.rows], dtype=np.float64),
            np.array([r[3] for r in self.rows], dtype=np.float64),
            int(sum(len(r[0]) for r in self.rows)),
            starts,
            np.concatenate([r[0] for r in self.rows]),
            np.concatenate([r[1] for r in self.rows]),
        )
        h.run()
        return h


def milp_clause(layers, lower, upper, bounds, C, rhs, time_limit: float, stop=None, slack=None):
    """Decide one clause ``C @ f(x) <= rhs`` (all rows) over the box exactly.

    ``layers``: ``[(W, b), ...]`` with a ReLU between; ``bounds``: sound ``(l, u)`` pre-activation
    bounds per ReLU (1-D). Minimises ``t`` s.t. ``C y - rhs <= t``. Returns ``(status, x, lb)``:
    ``("unsat", None, lb)`` if ``t > TAU`` is proven, ``("sat", x, lb)`` with a candidate ``x``
    where ``t <= 0`` (re-check it!), else ``("unknown", x_or_None, lb)`` (time limit, tolerance, or
    ``stop()`` turned True). ``slack``: optional per-layer rounding slack ``r`` (each layer's output
    anywhere within ``r`` of ``W a + b``, as in :meth:`~vsbench.bounds.graph.Graph.from_dense`).
    """
    inf = highspy.kHighsInf
    m = _Model()
    prev = m.cols(_np(lower).ravel(), _np(upper).ravel())  # columns holding the current activation
    prev_w = np.ones(len(prev))  # activation = prev_w * column (0 where the neuron is dead)
    slack = [np.zeros(len(b)) for _, b in layers] if slack is None else [_np(r).ravel() for r in slack]
    for (W, b), (l, u), r in zip(layers[:-1], bounds, slack):
        W, b, l, u = _np(W), _np(b), _np(l).ravel(), _np(u).ravel()
        lw, uw = l - SLACK, u + SLACK  # the variable bounds and the big-M rows both use the widened bounds
        z = m.cols(lw, uw)
        live = np.flatnonzero(prev_w)
        for j in range(len(b)):
            w = W[j, live]
            nz = np.flatnonzero(w)
            m.row(np.append(prev[live[nz]], z[j]), np.append(-w[nz], 1.0), b[j] - r[j], b[j] + r[j])
        act, act_w = z.copy(), (u > 0).astype(np.float64)
        for j in np.flatnonzero((l < 0) & (u > 0)):
            a, d = m.cols([0.0], [uw[j]])[0], m.cols([0.0], [1.0], integer=True)[0]
            m.row([a, z[j]], [1.0, -1.0], 0.0, inf)  # a >= z
            m.row([a, d], [1.0, -uw[j]], -inf, 0.0)  # a <= uw d
            m.row([a, z[j], d], [1.0, -1.0, -lw[j]], -inf, -lw[j])  # a <= z - lw (1 - d)
            act[j] = a
        prev, prev_w = act, act_w
    W, b = _np(layers[-1][0]), _np(layers[-1][1])
    CW, Cb = _np(C) @ W, _np(C) @ b - np.abs(_np(C)) @ slack[-1]  # each row's worst rounding
    t = m.cols([-inf], [TAU])[0]
    m.cost[t] = 1.0
    live = np.flatnonzero(prev_w)
    for i in range(len(Cb)):
        w = CW[i, live]
        nz = np.flatnonzero(w)
        m.row(np.append(prev[live[nz]], t), np.append(w[nz], -1.0), -inf, _np(rhs).ravel()[i] - Cb[i])
    h = m.solve(time_limit, stop)
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return "unsat", None, TAU
    info = h.getInfo()
    lb = info.mip_dual_bound if any(m.integer) else info.objective_function_value
    x = None
    if info.primal_solution_status == 2:  # feasible
        sol = np.array(h.getSolution().col_value)
        x = sol[: len(_np(lower).ravel())]
        if sol[t] <= 0:
            return "sat", x, lb
    if status == highspy.HighsModelStatus.kOptimal and lb > TAU:
        return "unsat", None, lb
    return "unknown", x, lb
