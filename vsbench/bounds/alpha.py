"""alpha-CROWN: CROWN with the lower ReLU slopes optimised by projected gradient ascent (Adam).

Every iterate is a valid bound, so the best bound seen per spec is returned (never looser than
CROWN, which is the starting point).
"""

from __future__ import annotations

import torch

from .crown import Bounds, backward, layerwise_bounds, relax, relax_all
from .graph import Graph


def init_slopes(intermediate: Bounds, S: int) -> list[torch.Tensor]:
    """CROWN's adaptive lower slopes, one ``(B, S, n_k)`` tensor per ReLU."""
    return [relax(l, u)[2].unsqueeze(1).expand(-1, S, -1).clone() for l, u in intermediate]


def optimize(fn, params: list[torch.Tensor], iters: int, lr: float | list[float], project, deadline=None, done=None):
    """Maximise ``fn() -> (B, S)`` elementwise over ``params`` (``lr``: one, or one per param);
    stops early once ``done(best)`` holds everywhere. Returns (best bound, best params)."""
    params = [p.detach().requires_grad_(True) for p in params]
    if not params or iters <= 0:
        with torch.no_grad():
            return fn(params), [p.detach() for p in params]
    lrs = lr if isinstance(lr, list) else [lr] * len(params)
    groups: dict[float, list[torch.Tensor]] = {}
    for p, r in zip(params, lrs):
        groups.setdefault(r, []).append(p)
    # fused: one kernel per group and step instead of a dozen small ops per parameter tensor
    opt = torch.optim.Adam([{"params": ps, "lr": r} for r, ps in groups.items()], fused=True)
    best, best_params = None, [p.detach().clone() for p in params]
    for i in range(iters + 1):
        lb = fn(params)
        with torch.no_grad():
            if best is None:
                best = lb.detach().clone()
            else:
                better = lb > best
                best = torch.where(better, lb, best)
                for bp, p in zip(best_params, params):
                    m = better.reshape(*better.shape, *([1] * (p.dim() - better.dim())))
                    bp.copy_(torch.where(m, p, bp))
        if i == iters or (deadline is not None and deadline.expired()) or (done is not None and bool(done(best).all())):
            break
        opt.zero_grad()
        (-lb.sum()).backward()
        opt.step()
        with torch.no_grad():
            project(params)
    return best, best_params


def _clamp01(params):
    for p in params:
        p.clamp_(0, 1)


def alpha_spec(
    graph: Graph,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor,
    intermediate: Bounds,
    iters: int = 20,
    lr: float = 0.1,
    slopes: list | None = None,
    deadline=None,
):
    """alpha-CROWN lower bound of ``C @ f(x)``, ``C (B, S, n_out)``; returns ``(lb (B, S), slopes)``."""
    intermediate = intermediate[: graph.relu_count()]
    if slopes is None:
        slopes = init_slopes(intermediate, C.shape[1])
    relaxed = relax_all(intermediate)
    with torch.enable_grad():
        lb, slopes = optimize(
            lambda s: backward(graph, lower, upper, C, intermediate, s, relaxed=relaxed)[0],
            slopes, iters, lr, _clamp01, deadline,
        )
    return lb, slopes


def alpha_bounds(
    graph: Graph, lower: torch.Tensor, upper: torch.Tensor, iters: int = 20, lr: float = 0.1, deadline=None
) -> Bounds:
    """Pre-ReLU and output bounds (layout of ``ibp_bounds``), each layer tightened by alpha-CROWN.

    Layers are done in order, each using the optimised bounds of the earlier ones; the result is
    intersected with IBP and so never looser than IBP or CROWN.
    """
    return layerwise_bounds(
        graph, lower, upper,
        lambda head, C, bounds, k: alpha_spec(head, lower, upper, C, bounds, iters if k else 0, lr, deadline=deadline)[0],
    )
