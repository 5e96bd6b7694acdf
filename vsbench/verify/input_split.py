"""Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

Splitting ReLUs needs ever more constraints as a box stays wide; splitting the *input* box
shrinks every neuron's range at once, so for low-dimensional inputs the sub-boxes soon become
stable enough for CROWN to prove them (as alpha-beta-CROWN's input-split BaB and nnenum do).
Each step bounds a batch of the worst open sub-boxes with CROWN (alpha-CROWN optionally), drops
the proven ones and halves the others along the input dimension with the largest
``width x |coefficient|`` of the worst clause's linear bound (the bound's loss in that
dimension, which halving it cuts in half). Candidate counterexamples are the sub-boxes' centres
and the corners that minimise their linear bounds, plus PGD from the worst sub-boxes now and then.
Hand-written: auto_LiRPA / alpha-beta-CROWN are not dependencies, and this is one short loop over
the project's own bound functions.
"""

from __future__ import annotations

import torch

from vsbench.spec.api import Deadline, Region

from ..bounds.alpha import alpha_spec
from ..bounds.crown import backward
from ..bounds.float_error import ChainError
from ..bounds.graph import Graph, ReLU, UnsupportedModel
from .attack import clause_margins, pgd_attack
from .config import VerifierConfig
from .milp import TAU

MIN_WIDTH = 1e-9  # an open sub-box narrower than this in every input: input splitting cannot decide it


def suits(graph, region: Region, cfg: VerifierConfig) -> bool:
    """True for a chain :class:`Graph` (the dense path) over a region with at least one and at most
    ``cfg.input_split_max_dim`` free inputs."""
    free = int((region.upper > region.lower).sum())
    return isinstance(graph, Graph) and 0 < free <= cfg.input_split_max_dim


def _dense(graph: Graph) -> Graph:
    """The graph with consecutive affine ops merged (fewer, cheaper bound steps), when it can be."""
    try:
        return Graph.from_dense(graph.dense_layers(), graph.in_shape)
    except UnsupportedModel:
        return graph


class _Rows:
    """The region's clauses as one stacked row matrix, with per-clause reductions of row bounds."""

    def __init__(self, region: Region):
        C = [torch.as_tensor(c, dtype=torch.float64) for c, _ in region.clauses]
        self.C = torch.cat(C)
        self.rhs = torch.cat([torch.as_tensor(r, dtype=torch.float64) for _, r in region.clauses])
        ends = torch.tensor([len(c) for c in C]).cumsum(0).tolist()
        self.spans = [(e - len(c), e) for c, e in zip(C, ends)]  # each clause's rows

    def clause_bounds(self, row_lb: torch.Tensor):
        """``(B, n_rows)`` row margins -> per clause the best row's margin and that row, ``(B, n_cl)`` each
        (a clause is refuted where some row's lower bound is positive)."""
        vals, rows = [], []
        for a, b in self.spans:
            v, i = row_lb[:, a:b].max(1)
            vals.append(v)
            rows.append(i + a)
        return torch.stack(vals, 1), torch.stack(rows, 1)


def verify_box(graph: Graph, region: Region, deadline: Deadline, check, log, cfg: VerifierConfig,
               error: ChainError | None = None):
    """Input-split BaB over ``region``: ``("sat", x)`` with a point ``check`` confirmed,
    ``("unsat", margin)`` when every sub-box is proven (``margin`` the lowest clause bound that
    proved one), else ``("timeout" | "unknown", lowest open bound)``. ``error``: the float32 error
    model of the ONNX file; a sub-box then counts as proven only where a row's margin exceeds that
    row's float32 error bound over the sub-box (computed for the sub-boxes about to be proven)."""
    g = _dense(graph.to(torch.float64))
    rows = _Rows(region)
    n_cl = len(rows.spans)
    lo = torch.as_tensor(region.lower, dtype=torch.float64)[None].clone()
    hi = torch.as_tensor(region.upper, dtype=torch.float64)[None].clone()
    proven = torch.zeros(1, n_cl, dtype=torch.bool)
    box_lb = torch.full((1,), -torch.inf, dtype=torch.float64)  # lowest open clause bound, from the parent
    margin, steps = torch.inf, 0
    while len(lo):
        if deadline.expired():
            log.append(f"input split: timeout after {steps} steps, {len(lo)} open boxes")
            return "timeout", float(box_lb.min())
        if len(lo) > cfg.input_split_max_boxes:
            log.append(f"input split: gave up at {len(lo)} boxes")
            return "unknown", float(box_lb.min())
        steps += 1
        order = box_lb.argsort()
        pick, rest = order[: cfg.input_split_batch], order[cfg.input_split_batch:]
        blo, bhi, bproven = lo[pick], hi[pick], proven[pick]
        row_lb, A, inter = _bound(g, blo, bhi, rows, cfg, deadline)
        clause_lb, best_row = rows.clause_bounds(row_lb)
        if error is not None and (cand := ((clause_lb > TAU) & ~bproven).any(1)).any():
            row_lb = row_lb.clone()
            row_lb[cand] -= error(blo[cand], bhi[cand], rows.C, [(l[cand], u[cand]) for l, u in inter])
            clause_lb, best_row = rows.clause_bounds(row_lb)
        newly = (clause_lb > TAU) & ~bproven
        if newly.any():
            margin = min(margin, float(clause_lb[newly].min()))
        bproven = bproven | newly
        open_lb = torch.where(bproven, torch.inf, clause_lb)
        worst_lb, worst = open_lb.min(1)
        live = ~bproven.all(1)
        rows_b = torch.arange(len(pick))
        a = A[rows_b, best_row[rows_b, worst]]  # (B, n_in) the worst open clause's linear bound
        x = _falsify(g, region, blo[live], bhi[live], a[live], steps, cfg, check)
        if x is not None:
            log.append(f"input split: counterexample after {steps} steps")
            log.stage = "input-split"
            return "sat", x
        blo, bhi, bproven, worst_lb, a = blo[live], bhi[live], bproven[live], worst_lb[live], a[live]
        width = bhi - blo
        if len(width) and bool((width.max(1).values < MIN_WIDTH).any()):
            log.append(f"input split: an open box narrower than {MIN_WIDTH:g} after {steps} steps")
            return "unknown", float(worst_lb.min())
        dim = (width * a.abs() + 1e-9 * width).argmax(1)
        mid = ((blo + bhi) / 2).gather(1, dim[:, None])
        left_hi, right_lo = bhi.clone(), blo.clone()
        left_hi.scatter_(1, dim[:, None], mid)
        right_lo.scatter_(1, dim[:, None], mid)
        lo = torch.cat([lo[rest], blo, right_lo])
        hi = torch.cat([hi[rest], left_hi, bhi])
        proven = torch.cat([proven[rest], bproven, bproven])
        box_lb = torch.cat([box_lb[rest], worst_lb, worst_lb])
    log.append(f"input split: {steps} steps")
    log.reached("input-split")
    return "unsat", margin


def _intermediate(g: Graph, lo: torch.Tensor, hi: torch.Tensor) -> list:
    """Pre-ReLU bounds of every ReLU over each box ``(B, n_in)``: the interval of the previous
    layer's bounds, tightened by CROWN only for the neurons it leaves unstable (the only ones whose
    bounds change the relaxation; on small boxes they are few, so this is several times cheaper
    than CROWN on every neuron)."""
    bounds: list = []
    a_lo, a_hi = lo, hi
    head: list = []
    for op in g.ops:
        if not isinstance(op, ReLU):
            mid, rad = op.forward((a_hi + a_lo) / 2), op.abs_forward((a_hi - a_lo) / 2)
            a_lo, a_hi = mid - rad, mid + rad
            head.append(op)
            continue
        l, u = a_lo, a_hi
        unstable = (l < 0) & (u > 0)
        m = int(unstable.sum(1).max()) if bounds else 0  # the first layer's interval is exact
        if m:
            idx = unstable.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :m]  # unstable first
            valid = unstable.gather(1, idx)
            E = torch.zeros(len(lo), m, l.shape[1], dtype=l.dtype).scatter_(2, idx[..., None], 1.0)
            lb = backward(Graph(list(head), g.in_shape), lo, hi, torch.cat([E, -E], 1), bounds)[0]
            l_old, u_old = l.gather(1, idx), u.gather(1, idx)
            l = l.scatter(1, idx, torch.where(valid, torch.maximum(l_old, lb[:, :m]), l_old))
            u = u.scatter(1, idx, torch.where(valid, torch.minimum(u_old, -lb[:, m:]), u_old))
        bounds.append((l, u))
        a_lo, a_hi = l.clamp(min=0), u.clamp(min=0)
        head.append(op)
    return bounds


def _bound(g: Graph, lo, hi, rows: _Rows, cfg: VerifierConfig, deadline: Deadline):
    """Row margins ``(B, n_rows)`` (lower bounds of ``C y - rhs``), the rows' input coefficients
    ``(B, n_rows, n_in)`` and the pre-ReLU bounds: CROWN with CROWN intermediate bounds, then
    alpha-CROWN if configured."""
    inter = _intermediate(g, lo, hi)
    C = rows.C.expand(len(lo), -1, -1)
    lb, lams = backward(g, lo, hi, C, inter, keep=True)
    if cfg.input_split_alpha_iters:
        lb_a, slopes = alpha_spec(g, lo, hi, C, inter, iters=cfg.input_split_alpha_iters,
                                  lr=cfg.lr_alpha_init, deadline=deadline)
        with torch.no_grad():
            lb_s, lams = backward(g, lo, hi, C, inter, slopes, keep=True)
        lb = torch.maximum(lb, torch.maximum(lb_a, lb_s))
    return lb - rows.rhs, lams[-1], inter


def _falsify(g: Graph, region: Region, lo, hi, a, step: int, cfg: VerifierConfig, check):
    """A confirmed counterexample among the open boxes' centres and bound-minimising corners (and,
    every ``cfg.input_split_pgd_every`` steps, PGD from the worst boxes' centres), else None."""
    if not len(lo):
        return None
    centres = (lo + hi) / 2
    points = torch.cat([centres, torch.where(a >= 0, lo, hi)])
    with torch.no_grad():
        m = clause_margins(g.forward(points), region.clauses).min(1).values
    for i in torch.nonzero(m <= 0).flatten()[:16].tolist():
        if (x := check(region, points[i].numpy())) is not None:
            return x
    if step % cfg.input_split_pgd_every == 0:
        starts = centres[: 16].numpy()
        return pgd_attack(g, region, restarts=0, steps=cfg.bab_pgd_steps, seed=step, starts=starts,
                          confirm=lambda y: check(region, y))
    return None
