"""Forward linear bounds: every neuron's lower and upper bound as a linear function of the input,
carried forward layer by layer (symbolic intervals, as ReluVal / Neurify and auto_LiRPA's forward
mode do).

For ``d`` inputs a layer costs ``O(n_in n_out d)`` per box, while CROWN's backward pass from every
neuron of layer ``k`` costs ``O(k n^3)``: on networks with few inputs (ACAS Xu: 5) this is the cheap
bound of input splitting, looser than CROWN on wide boxes and about as tight on small ones. An
optional ``tighten`` hook (e.g. CROWN on the neurons left unstable) improves each layer's bounds
before the next layer is relaxed with them. Hand-written: a few lines over the graph's own op algebra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .crown import Bounds, relax
from .graph import Graft, Graph, Linear, ReLU


def _concretize(coef: torch.Tensor, const: torch.Tensor, mid: torch.Tensor, rad: torch.Tensor):
    """Min and max over the box ``mid +- rad`` (``(B, d)``) of ``x @ coef + const`` (``(B, d, n)``, ``(B, n)``)."""
    centre = torch.einsum("bd,bdn->bn", mid, coef) + const
    spread = torch.einsum("bd,bdn->bn", rad, coef.abs())
    return centre - spread, centre + spread


def forward_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor,
                   tighten: Callable | None = None) -> Bounds:
    """Bounds ``(l, u)`` (``(B, n_k)`` each) of every ReLU's input over the boxes ``[lower, upper]``
    (``(B, d)``): the forward linear bounds, intersected with interval bounds. ``tighten(head, l, u,
    bounds) -> (l, u)`` may tighten each ReLU's bounds (``head``: the ops before that ReLU, ``bounds``:
    the earlier ReLUs' bounds) before they relax it."""
    B, d = lower.shape
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    # lower and upper linear functions x @ coef + const of the current layer's values, and its interval
    lo_coef = torch.eye(d, dtype=lower.dtype).expand(B, d, d)
    up_coef = lo_coef
    lo_const = up_const = lower.new_zeros(B, d)
    a_lo, a_hi = lower, upper
    bounds: Bounds = []
    head: list = []
    for op in graph.ops:
        if not isinstance(op, ReLU):
            # W L and W U as W (L + U) / 2 -+ |W| (U - L) / 2: the same as splitting W by sign
            m_coef, r_coef = op.forward((up_coef + lo_coef) / 2), op.abs_forward((up_coef - lo_coef) / 2)
            bias = op.forward(lower.new_zeros(1, lo_coef.shape[-1]))
            m_coef = m_coef - bias  # coefficients take no bias
            m_const, r_const = op.forward((up_const + lo_const) / 2), op.abs_forward((up_const - lo_const) / 2)
            lo_coef, up_coef = m_coef - r_coef, m_coef + r_coef
            lo_const, up_const = m_const - r_const, m_const + r_const
            c, r = op.forward((a_hi + a_lo) / 2), op.abs_forward((a_hi - a_lo) / 2)
            if isinstance(op, Linear) and op.slack is not None:  # the layer's output within its slack
                lo_const, up_const, r = lo_const - op.slack, up_const + op.slack, r + op.slack
            a_lo, a_hi = c - r, c + r
            head.append(op)
            continue
        l, u = _concretize(lo_coef, lo_const, mid, rad)[0], _concretize(up_coef, up_const, mid, rad)[1]
        l, u = torch.maximum(l, a_lo), torch.minimum(u, a_hi)
        if tighten is not None and bounds:  # the first ReLU's bounds are exact already
            l, u = tighten(Graph(list(head), graph.in_shape), l, u, bounds)
        bounds.append((l, u))
        up, icpt, low, _ = relax(l, u)
        low_icpt = torch.zeros_like(l)
        if isinstance(op, Graft):
            up, icpt, low, low_icpt = op.exact(up, icpt, low)
        # relu(z) <= up z + icpt and >= low z + low_icpt; a negative slope swaps the bounds it takes
        new_up_coef = up.clamp(min=0)[:, None] * up_coef + up.clamp(max=0)[:, None] * lo_coef
        new_lo_coef = low.clamp(min=0)[:, None] * lo_coef + low.clamp(max=0)[:, None] * up_coef
        up_const, lo_const = (up.clamp(min=0) * up_const + up.clamp(max=0) * lo_const + icpt,
                              low.clamp(min=0) * lo_const + low.clamp(max=0) * up_const + low_icpt)
        up_coef, lo_coef = new_up_coef, new_lo_coef
        a_lo, a_hi = op.interval(l, u) if isinstance(op, Graft) else (l.clamp(min=0), u.clamp(min=0))
        head.append(op)
    return bounds
