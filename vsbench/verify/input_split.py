"""Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

Splitting ReLUs needs ever more constraints as a box stays wide; splitting the *input* box
shrinks every neuron's range at once, so for low-dimensional inputs the sub-boxes soon become
stable enough for linear bounds to prove them (as alpha-beta-CROWN's input-split BaB and nnenum do).
Each step bounds a batch of the worst open sub-boxes in two stages: forward linear bounds
(:mod:`vsbench.bounds.forward`, cheap) with CROWN on the property's rows, then, for the boxes that
stay open, intermediate bounds tightened by CROWN on their unstable neurons (alpha-CROWN optionally).
Each open box is then clipped to the bounding box of the part where its linear bounds allow a
violation (domain clipping, as alpha-beta-CROWN does), and halved along the input dimension with the
largest ``width x |coefficient|`` of the worst clause's linear bound (the bound's loss in that
dimension, which halving it cuts in half). Candidate counterexamples are the sub-boxes' centres
and the corners that minimise their linear bounds, plus PGD from the worst sub-boxes now and then.
The deadline is checked between the stages and layers of a step, so a step never runs long past it.
Hand-written: auto_LiRPA / alpha-beta-CROWN are not dependencies, and this is one short loop over
the project's own bound functions.
"""

from __future__ import annotations

import torch

from vsbench.spec.api import Deadline, Region

from ..bounds.alpha import alpha_spec
from ..bounds.crown import backward
from ..bounds.float_error import ChainError
from ..bounds.forward import forward_bounds
from ..bounds.graph import Graph, UnsupportedModel
from .attack import clause_margins, pgd_attack
from .config import VerifierConfig
from .milp import TAU

MIN_WIDTH = 1e-9  # an open sub-box narrower than this in every input: input splitting cannot decide it
EDGE_POINTS = 64  # points tried on each edge of the box before splitting (at most 8 x 128 edges)
LOOKAHEAD_CHUNK = 8192  # candidate halves bounded at once (memory), with a deadline check between


class _Expired(Exception):
    """The deadline passed inside a step."""


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
               error: ChainError | None = None, slack: list | None = None):
    """Input-split BaB over ``region``: ``("sat", x)`` with a point ``check`` confirmed,
    ``("unsat", margin)`` when every sub-box is proven (``margin`` the lowest clause bound that
    proved one; ``TAU`` for a clause proven by clipping its box to nothing), else
    ``("timeout" | "unknown", lowest open bound)``. ``error``, ``slack``: the float32 error model of
    the ONNX file and its :func:`~vsbench.bounds.float_error.layer_slack` over the region (for the
    merged layers of ``graph``); the bounds then take each layer's float32 rounding as slack (the
    region's at first, then each sub-box's own from its bounds, inherited by its children), so they
    bound the float32 model itself."""
    g = _dense(graph.to(torch.float64))
    rows = _Rows(region)
    n_cl = len(rows.spans)
    lo = torch.as_tensor(region.lower, dtype=torch.float64)[None].clone()
    hi = torch.as_tensor(region.upper, dtype=torch.float64)[None].clone()
    proven = torch.zeros(1, n_cl, dtype=torch.bool)
    box_lb = torch.full((1,), -torch.inf, dtype=torch.float64)  # lowest open clause bound, from the parent
    margin, steps, bounded = torch.inf, 0, 0
    slack = _Slack(g, error, slack)
    slacks = slack.region  # (boxes, total width) or None
    if (x := _falsify_edges(g, region, lo[0], hi[0], check)) is not None:
        log.append("input split: counterexample on an edge of the box")
        log.stage = "input-split"
        return "sat", x
    try:
        while len(lo):
            if deadline.expired():
                raise _Expired
            if len(lo) > cfg.input_split_max_boxes:
                log.append(f"input split: gave up at {len(lo)} boxes")
                return "unknown", float(box_lb.min())
            steps += 1
            order = box_lb.argsort()
            pick, rest = order[: cfg.input_split_batch], order[cfg.input_split_batch:]
            blo, bhi, bproven = lo[pick], hi[pick], proven[pick]
            bslack = None if slacks is None else slacks[pick]
            bounded += len(pick)
            row_lb, A, inter, lb1 = _bound_two_stages(slack.graph(bslack), blo, bhi, rows, bproven, cfg, deadline)
            bslack = slack.tighten(bslack, blo, bhi, inter)
            clause_lb = _proof_margins(row_lb, rows, bproven)
            newly = (clause_lb > TAU) & ~bproven
            if newly.any():
                margin = min(margin, float(clause_lb[newly].min()))
            bproven = bproven | newly
            blo, bhi, empty = _clip(blo, bhi, row_lb, A, TAU, rows, bproven)
            if (empty & ~bproven).any():
                margin = min(margin, TAU)
            bproven = bproven | empty
            worst_lb, worst = torch.where(bproven, torch.inf, clause_lb).min(1)
            live = ~bproven.all(1)
            best_row = rows.clause_bounds(row_lb)[1]
            a = A[torch.arange(len(pick)), best_row.gather(1, worst[:, None])[:, 0]]  # the worst open clause's bound
            x = _falsify(g, region, blo[live], bhi[live], a[live], steps, cfg, check, deadline)
            if x is not None:
                log.append(f"input split: counterexample after {steps} steps, {bounded} boxes bounded")
                log.stage = "input-split"
                return "sat", x
            blo, bhi, bproven, lb1, worst_lb, a = (t[live] for t in (blo, bhi, bproven, lb1, worst_lb, a))
            bslack = None if bslack is None else bslack[live]
            width = bhi - blo
            if len(width) and bool((width.max(1).values < MIN_WIDTH).any()):
                log.append(f"input split: an open box narrower than {MIN_WIDTH:g} after {steps} steps")
                return "unknown", float(worst_lb.min())
            c_lo, c_hi, c_lb = _lookahead(slack, bslack, blo, bhi, rows, bproven, lb1, width * a.abs(), cfg, deadline)
            c_proven = bproven.repeat(2, 1) | (c_lb > TAU)
            if (c_lb > TAU).any():
                margin = min(margin, float(c_lb[c_lb > TAU].min()))
            keep = ~c_proven.all(1)
            c_lb = torch.maximum(torch.where(c_proven, torch.inf, c_lb).min(1).values, worst_lb.repeat(2))
            lo, hi = torch.cat([lo[rest], c_lo[keep]]), torch.cat([hi[rest], c_hi[keep]])
            proven = torch.cat([proven[rest], c_proven[keep]])
            if slacks is not None:
                slacks = torch.cat([slacks[rest], bslack.repeat(2, 1)[keep]])
            box_lb = torch.cat([box_lb[rest], c_lb[keep]])
    except _Expired:
        log.append(f"input split: timeout after {steps} steps, {bounded} boxes bounded, {len(lo)} open")
        return "timeout", float(box_lb.min())
    log.append(f"input split: {steps} steps, {bounded} boxes bounded")
    log.reached("input-split")
    return "unsat", margin


class _Slack:
    """The float32 rounding slack of the merged layers of ``g``, per sub-box: ``region`` ``(1, total
    width)``, the whole region's ``slack`` (None without one: the bounds are of the exact model);
    :meth:`graph` is ``g`` with a batch of boxes' slack, :meth:`tighten` a batch's slack from their
    own bounds."""

    def __init__(self, g: Graph, error: ChainError | None, slack: list | None):
        self.g, self.error, self.region = g, error, None
        if error is not None and slack is not None:
            self.layers = g.dense_layers()
            self.region, self.sizes = torch.cat(slack)[None], [len(r) for r in slack]

    def graph(self, slack) -> Graph:
        if slack is None:
            return self.g
        return Graph.from_dense(self.layers, self.g.in_shape, list(slack.split(self.sizes, 1)))

    def tighten(self, slack, lo, hi, inter):
        """The smaller of each box's ``slack`` and its own over its float32 pre-ReLU bounds ``inter``."""
        if slack is None:
            return None
        own = torch.cat(self.error.layer_rounding(lo, hi, inter, float32_bounds=True), 1)
        return torch.minimum(slack, own)


def _bound_two_stages(g: Graph, lo, hi, rows: _Rows, proven, cfg: VerifierConfig, deadline: Deadline):
    """:func:`_bound` of the boxes, CROWN-tightened (``tighten``) only for the boxes the cheap bound leaves
    an open clause; each row keeps the better of its two bounds (with that bound's coefficients). Also
    returns the cheap bound's clause margins (:func:`_proof_margins`), which :func:`_lookahead` compares
    its children with."""
    row_lb, A, inter = _bound(g, lo, hi, rows, cfg, deadline, tighten=False)
    lb1 = _proof_margins(row_lb, rows, proven)
    need = (lb1 <= TAU).any(1)
    if need.any():
        row_lb2, A2, inter2 = _bound(g, lo[need], hi[need], rows, cfg, deadline, tighten=True)
        better = row_lb2 >= row_lb[need]
        row_lb[need] = torch.where(better, row_lb2, row_lb[need])
        A[need] = torch.where(better[..., None], A2, A[need])
        inter = [(l.index_put((need,), l2), u.index_put((need,), u2)) for (l, u), (l2, u2) in zip(inter, inter2)]
    return row_lb, A, inter, lb1


def _lookahead(slack: _Slack, box_slack, lo, hi, rows: _Rows, proven, parent_lb, tie, cfg: VerifierConfig,
               deadline: Deadline):
    """Halve each box along the input whose two halves' cheap bounds (:func:`_bound`, forward linear
    bounds) leave the least shortfall: the sum over both halves and the open clauses of how far each
    clause's margin (never below the parent's ``parent_lb``) stays under zero; ``tie`` ``(B, n_in)``
    breaks ties (``width x |coefficient|``). Returns the halves ``(lo, hi)`` (all first halves, then
    all second ones) and their clause margins ``(2B, n_cl)``, sound bounds for them.

    Looking ahead costs ``2 n_in`` cheap bounds per box, far less than one CROWN-tightened bound, and
    picks far better splits than ``width x |coefficient|`` alone: that score ignores how the halves'
    relaxations tighten, and on ACAS Xu it kept halving inputs that changed nothing. The halves are
    bounded with their box's ``box_slack``."""
    B, n = lo.shape
    mid = (lo + hi) / 2
    eye = torch.eye(n, dtype=torch.bool)
    # candidate halves, (n, B, n_in) each: first halves [lo, mid_i], second halves [mid_i, hi] along input i
    first_hi = torch.where(eye[:, None], mid, hi)
    second_lo = torch.where(eye[:, None], mid, lo)
    margins = []
    c_slack = None if box_slack is None else box_slack.repeat(n, 1)  # candidate i * B + b: box b's
    for c_lo, c_hi in ((lo.expand(n, B, n), first_hi), (second_lo, hi.expand(n, B, n))):
        parts = []
        for i in range(0, n * B, LOOKAHEAD_CHUNK):
            if deadline.expired():
                raise _Expired
            sl = slice(i, i + LOOKAHEAD_CHUNK)
            g = slack.graph(None if c_slack is None else c_slack[sl])
            row_lb = _bound(g, c_lo.reshape(-1, n)[sl], c_hi.reshape(-1, n)[sl], rows, cfg, deadline, tighten=False)[0]
            parts.append(row_lb)
        row_lb = torch.cat(parts) if parts else lo.new_zeros(0, len(rows.C))
        m = _proof_margins(row_lb, rows, proven.repeat(n, 1))
        margins.append(torch.maximum(m, parent_lb.repeat(n, 1)).reshape(n, B, len(rows.spans)))
    shortfall = sum(m.clamp(max=0).sum(-1) for m in margins)  # (n, B), <= 0
    scale = tie.max(1, keepdim=True).values.clamp(min=1e-300)
    dim = (shortfall.T + 1e-6 * tie / scale).argmax(1)  # (B,)
    rows_b = torch.arange(B)
    c_lo = torch.cat([lo, second_lo[dim, rows_b]])
    c_hi = torch.cat([first_hi[dim, rows_b], hi])
    return c_lo, c_hi, torch.cat([margins[0][dim, rows_b], margins[1][dim, rows_b]])


def _proof_margins(row_lb, rows: _Rows, proven):
    """Per clause ``(B, n_cl)``: the best row's margin; ``inf`` for clauses already ``proven``."""
    return torch.where(proven, torch.inf, rows.clause_bounds(row_lb)[0])


def _clip(lo, hi, row_lb, A, thr, rows: _Rows, proven):
    """Each box shrunk to the bounding box of the points where an open clause can be violated, and
    which clauses it leaves no such point for (``(B, n_cl)``).

    A row's linear bound ``A x + c`` (lowest value ``row_lb`` over the box) is a lower bound of its
    margin; the clause can be violated only where every row's margin is at most ``thr``, hence only
    where ``A x + c <= thr`` for every row of the clause. Along one input
    ``i``, with the others at their minimising corner, that bounds ``x_i`` by
    ``corner_i + (thr - row_lb) / A_i``; the box keeps the hull over the open clauses of those bounds."""
    gap = (thr - row_lb).clamp(min=0)  # (B, R); a row above thr proves its clause, handled by proven
    a = A
    with torch.no_grad():
        step = gap[..., None] / a.abs().clamp(min=1e-300)  # (B, R, n): how far from the corner x_i may go
        row_hi = torch.where(a > 0, lo[:, None] + step, hi[:, None])
        row_lo = torch.where(a < 0, hi[:, None] - step, lo[:, None])
        new_lo = torch.full_like(lo, torch.inf)
        new_hi = torch.full_like(hi, -torch.inf)
        empty = torch.zeros_like(proven)
        for k, (s, e) in enumerate(rows.spans):
            c_lo = torch.maximum(row_lo[:, s:e].max(1).values, lo)
            c_hi = torch.minimum(row_hi[:, s:e].min(1).values, hi)
            empty[:, k] = (c_lo > c_hi).any(1)
            use = (~proven[:, k] & ~empty[:, k])[:, None]
            new_lo = torch.where(use, torch.minimum(new_lo, c_lo), new_lo)
            new_hi = torch.where(use, torch.maximum(new_hi, c_hi), new_hi)
        done = new_lo.isinf().all(1, keepdim=True)  # no open clause left: keep the box as it was
        return torch.where(done, lo, new_lo), torch.where(done, hi, new_hi), empty


def _crown_unstable(lo, hi, deadline: Deadline):
    """A :func:`forward_bounds` ``tighten`` hook: CROWN bounds for the neurons the layer's bounds leave
    unstable (the only ones whose bounds change the relaxation; on small boxes they are few, so this
    is several times cheaper than CROWN on every neuron). Raises :class:`_Expired` past the deadline."""

    def tighten(head: Graph, l, u, bounds):
        if deadline.expired():
            raise _Expired
        unstable = (l < 0) & (u > 0)
        m = int(unstable.sum(1).max())
        if not m:
            return l, u
        idx = unstable.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :m]  # unstable first
        valid = unstable.gather(1, idx)
        E = torch.zeros(len(lo), m, l.shape[1], dtype=l.dtype).scatter_(2, idx[..., None], 1.0)
        lb = backward(head, lo, hi, torch.cat([E, -E], 1), bounds)[0]
        l_old, u_old = l.gather(1, idx), u.gather(1, idx)
        l = l.scatter(1, idx, torch.where(valid, torch.maximum(l_old, lb[:, :m]), l_old))
        u = u.scatter(1, idx, torch.where(valid, torch.minimum(u_old, -lb[:, m:]), u_old))
        return l, u

    return tighten


def _bound(g: Graph, lo, hi, rows: _Rows, cfg: VerifierConfig, deadline: Deadline, tighten: bool):
    """Row margins ``(B, n_rows)`` (lower bounds of ``C y - rhs``), the input coefficients
    ``(B, n_rows, n_in)`` of the linear bound each margin is the minimum of, and the pre-ReLU bounds:
    CROWN over forward intermediate bounds (``tighten``: CROWN-tightened, then alpha-CROWN if configured)."""
    inter = forward_bounds(g, lo, hi, tighten=_crown_unstable(lo, hi, deadline) if tighten else None)
    C = rows.C.expand(len(lo), -1, -1)
    lb, lams = backward(g, lo, hi, C, inter, keep=True)
    A = lams[-1]
    if tighten and cfg.input_split_alpha_iters and not deadline.expired():
        _, slopes = alpha_spec(g, lo, hi, C, inter, iters=cfg.input_split_alpha_iters,
                               lr=cfg.lr_alpha_init, deadline=deadline)
        with torch.no_grad():
            lb_s, lams = backward(g, lo, hi, C, inter, slopes, keep=True)
        better = lb_s > lb
        lb, A = torch.where(better, lb_s, lb), torch.where(better[..., None], lams[-1], A)
    return lb - rows.rhs, A, inter


def _falsify(g: Graph, region: Region, lo, hi, a, step: int, cfg: VerifierConfig, check, deadline: Deadline):
    """A confirmed counterexample among the open boxes' centres and bound-minimising corners (and,
    every ``cfg.input_split_pgd_every`` steps, PGD from the worst boxes' centres), else None."""
    if not len(lo):
        return None
    centres = (lo + hi) / 2
    if (x := _confirm_first(g, region, torch.cat([centres, torch.where(a >= 0, lo, hi)]), check)) is not None:
        return x
    if step % cfg.input_split_pgd_every == 0:
        starts = centres[: 16].numpy()
        return pgd_attack(g, region, restarts=0, steps=cfg.bab_pgd_steps, seed=step, starts=starts,
                          deadline=deadline, confirm=lambda y: check(region, y))
    return None


def _confirm_first(g: Graph, region: Region, points, check):
    """The first of (at most 16 of) the ``points`` where ``g`` violates ``region`` that ``check``
    confirms, else None."""
    with torch.no_grad():
        margins = clause_margins(g.forward(points), region.clauses).min(1).values
    for i in torch.nonzero(margins <= 0).flatten()[:16].tolist():
        if (x := check(region, points[i].numpy())) is not None:
            return x
    return None


def _falsify_edges(g: Graph, region: Region, lo, hi, check):
    """A confirmed counterexample among ``EDGE_POINTS`` evenly spaced points on each edge of the box
    ``[lo, hi]`` (over its free inputs), else None. A piecewise-linear margin takes its extremes at
    vertices of its linear pieces, often on the box's boundary; on ACAS Xu 1_9 prop_7 the violations
    lie on one edge, and PGD from 10,000 random starts finds none."""
    free = torch.nonzero(hi > lo).flatten()
    d = len(free)
    corners = (torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=lo.dtype)] * (d - 1)).reshape(-1, d - 1)
               if d > 1 else lo.new_zeros(1, 0))
    corners = corners.repeat_interleave(EDGE_POINTS, 0)
    t = torch.linspace(0, 1, EDGE_POINTS, dtype=lo.dtype).repeat(len(corners) // EDGE_POINTS)[:, None]
    points = lo.repeat(d * len(corners), 1)
    for i in range(d):  # the edges along free input i: the others at each corner
        frac = torch.cat([corners[:, :i], t, corners[:, i:]], 1)
        points[i * len(corners):(i + 1) * len(corners), free] = lo[free] + (hi[free] - lo[free]) * frac
    return _confirm_first(g, region, points, check)
