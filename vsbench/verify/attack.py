"""PGD falsification: search the box for an input that meets some violation clause."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..bounds.graph import Graph
from vsbench.spec.api import Deadline, Region


def clause_margins(y: torch.Tensor, clauses) -> torch.Tensor:
    """``(N, n_clauses)``: per clause, ``max_i (C_i y - rhs_i)``; a clause holds where this is <= 0."""
    cols = []
    for C, rhs in clauses:
        C, rhs = torch.as_tensor(C, dtype=y.dtype), torch.as_tensor(rhs, dtype=y.dtype)
        cols.append((y @ C.T - rhs).max(-1).values)
    return torch.stack(cols, -1)


def violation(graph: Graph, region: Region, x: np.ndarray) -> float:
    """Best clause margin at ``x`` in float64 (< 0: the property is strictly violated there)."""
    g = graph.to(torch.float64)
    y = g.forward(torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(1, -1))
    return clause_margins(y, region.clauses).min().item()


def pgd_attack(
    graph: Graph,
    region: Region,
    restarts: int = 32,
    steps: int = 50,
    deadline: Deadline | None = None,
    seed: int = 0,
    starts: np.ndarray | None = None,
    confirm: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> np.ndarray | None:
    """A point of the box where some clause holds strictly in float64, or None. With ``confirm`` (a
    point -> the confirmed counterexample or None), the first point it confirms (tried at each new
    best violation) ends the search and is returned; None when none was confirmed.

    Restarts are spread over the clauses (restart ``i`` minimises the margin of clause
    ``i % n_clauses``); ``starts`` (``(m, n_in)``) are extra starting points, e.g. MILP candidates.
    Sign-gradient steps with a geometrically decaying step size; points are clipped to the box.
    The search stops at ``deadline``.
    """
    g = graph.to(torch.float64)
    lo = torch.as_tensor(region.lower, dtype=torch.float64).reshape(1, -1)
    hi = torch.as_tensor(region.upper, dtype=torch.float64).reshape(1, -1)
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(restarts, lo.shape[1], generator=gen, dtype=torch.float64)
    if restarts:
        x[0] = (lo + hi)[0] / 2
    if starts is not None and len(starts):
        x = torch.cat([torch.as_tensor(np.asarray(starts), dtype=torch.float64).reshape(-1, lo.shape[1]), x])
    if not len(x):  # no restarts and no starts: nothing to try
        return None
    x = torch.minimum(torch.maximum(x, lo), hi)
    target = torch.arange(x.shape[0]) % len(region.clauses)
    size = (hi - lo) / 4
    decay = (1e-3) ** (1 / max(steps, 1))
    best, best_m = None, 0.0
    for _ in range(steps + 1):
        x.requires_grad_(True)
        m = clause_margins(g.forward(x), region.clauses)
        with torch.no_grad():
            mins, _ = m.min(-1)
            i = int(mins.argmin())
            if mins[i] < best_m:
                best, best_m = x[i].detach().numpy().copy(), mins[i].item()
                if confirm is not None and (cex := confirm(best)) is not None:
                    return cex
        if deadline is not None and deadline.expired():
            break
        (grad,) = torch.autograd.grad(m.gather(1, target[:, None]).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - size * grad.sign(), lo), hi)
            size = size * decay
    return best if confirm is None else None
