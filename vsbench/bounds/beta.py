"""beta-CROWN: bounds of branch-and-bound domains with ReLU split constraints.

A domain is the input box plus split signs ``s`` per ReLU neuron (+1: ``z >= 0``, -1: ``z <= 0``,
0: free). Its pre-activation bounds already have split neurons clamped (so they are stable). The
split constraints enter the CROWN backward pass by Lagrangian relaxation: ``-beta * s`` is added to
the coefficients of the pre-activation, with ``beta >= 0``; ``beta = 0`` gives alpha-CROWN, and any
``beta >= 0`` gives a valid lower bound. Slopes and betas are optimised jointly (Adam).
"""

from __future__ import annotations

import torch

from .alpha import init_slopes, optimize
from .crown import Bounds, backward, relax_all
from .graph import Graph


def split_bounds(bounds: Bounds, splits: list[torch.Tensor]) -> Bounds:
    """Pre-activation bounds with each split neuron clamped to its side (``l = 0`` or ``u = 0``)."""
    return [
        (torch.where(s > 0, l.clamp(min=0), l), torch.where(s < 0, u.clamp(max=0), u))
        for (l, u), s in zip(bounds, splits)
    ]


def beta_bound(graph: Graph, lower, upper, C, bounds: Bounds, splits, slopes, betas, signs=None,
               relaxed=None) -> torch.Tensor:
    """The beta-CROWN lower bound ``(D, S)`` of ``C @ f(x)`` for given slopes and betas (no
    optimisation); ``signs``/``relaxed``: precomputed split signs and ReLU relaxations."""
    if signs is None:
        signs = [s.to(C.dtype).unsqueeze(1) for s in splits]
    extra = [-b * s for b, s in zip(betas, signs)]
    return backward(graph, lower, upper, C, bounds, slopes, extra, relaxed=relaxed)[0]


def beta_spec(
    graph: Graph,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor,
    bounds: Bounds,
    splits: list[torch.Tensor],
    slopes: list | None = None,
    betas: list | None = None,
    iters: int = 10,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.1,
    deadline=None,
    done=None,
):
    """Lower bound of ``C @ f(x)`` over each domain (batch row = domain).

    ``bounds``: per-ReLU ``(l, u)`` of shape ``(D, n_k)`` (clamped by :func:`split_bounds`);
    ``splits``: per-ReLU signs ``(D, n_k)``. Returns ``(lb (D, S), slopes, betas, lams)`` with
    ``lams`` the coefficients of each ReLU output and of the input at the best parameters (see
    :func:`vsbench.bounds.crown.backward`).
    """
    S = C.shape[1]
    if slopes is None:
        slopes = init_slopes(bounds, S)
    if betas is None:
        betas = [torch.zeros_like(s) for s in slopes]
    n = len(slopes)
    signs = [s.to(C.dtype).unsqueeze(1) for s in splits]
    relaxed = relax_all(bounds)

    def fn(params):
        return beta_bound(graph, lower, upper, C, bounds, splits, params[:n], params[n:], signs, relaxed)

    def project(params):
        for p in params[:n]:
            p.clamp_(0, 1)
        for p in params[n:]:
            p.clamp_(min=0)

    with torch.enable_grad():
        lb, params = optimize(fn, list(slopes) + list(betas), iters, [lr_alpha] * n + [lr_beta] * n, project, deadline, done)
    with torch.no_grad():
        extra = [-b * s for b, s in zip(params[n:], signs)]
        _, lams = backward(graph, lower, upper, C, bounds, params[:n], extra, keep=True, relaxed=relaxed)
    return lb, params[:n], params[n:], lams
