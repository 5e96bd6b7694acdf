"""CROWN: backward linear relaxation bounds, batched over inputs and specs; differentiable.

The backward pass (:func:`backward`) is shared by CROWN, alpha-CROWN (optimised lower ReLU slopes)
and beta-CROWN (Lagrangian terms for split constraints on pre-activations).
"""

from __future__ import annotations

import torch

from .graph import AFFINE, Graft, Graph, ReLU
from .ibp import ibp_bounds

Bounds = list[tuple[torch.Tensor, torch.Tensor]]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def relax(l: torch.Tensor, u: torch.Tensor):
    """Upper line (slope, intercept) and default lower slope of ReLU over ``[l, u]``, per neuron.

    Stable neurons are exact (slope 1 or 0); unstable ones get the chord above and the adaptive
    lower slope (1 if ``u > -l`` else 0) below.
    """
    active, dead = l >= 0, u <= 0
    unstable = ~(active | dead)
    chord = u / (u - l).clamp(min=1e-12)
    up = torch.where(active, torch.ones_like(u), torch.where(unstable, chord, torch.zeros_like(u)))
    icpt = torch.where(unstable, -chord * l, torch.zeros_like(u))
    low = torch.where(active, torch.ones_like(u), torch.where(unstable, (u > -l).to(u.dtype), torch.zeros_like(u)))
    return up, icpt, low, unstable


def relax_all(intermediate: Bounds) -> list:
    """:func:`relax` of every ``(l, u)``, shaped for :func:`backward`: ``(up, icpt, low)`` as
    ``(B, 1, n_k)`` (broadcast over specs) and ``unstable`` as ``(B, n_k)``."""
    out = []
    for l, u in intermediate:
        up, icpt, low, unstable = relax(l, u)
        out.append((up.unsqueeze(1), icpt.unsqueeze(1), low.unsqueeze(1), unstable))
    return out


def backward(
    graph: Graph,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor,
    intermediate: Bounds,
    slopes: list | None = None,
    extra: list | None = None,
    keep: bool = False,
    relaxed: list | None = None,
):
    """Lower bound of ``C @ f(x)`` over the box given pre-ReLU bounds ``intermediate``.

    ``slopes[k]`` (broadcastable to ``(B, S, n_k)``, values in [0, 1]) replaces the lower slope of
    unstable neurons of ReLU ``k``; ``extra[k]`` is added to the coefficients of the ReLU ``k``
    pre-activation (beta-CROWN split terms). Returns ``(lb (B, S), lams)`` where ``lams[k]`` is the
    coefficient of the ReLU ``k`` output and ``lams[-1]`` that of the input (only when ``keep``; used
    for branching and for the box corner that minimises the linear bound). ``relaxed``: the
    :func:`relax` of every ``intermediate`` pair, when the caller reuses them over many passes.
    A graph with its own ``relu_backward`` (:class:`vsbench.bounds.dag_bounds.ReluView`) runs that.
    """
    if hasattr(graph, "relu_backward"):
        return graph.relu_backward(lower, upper, C, intermediate, slopes, extra, keep, relaxed)
    lo, hi = _flat(lower), _flat(upper)
    A = C
    bias = C.new_zeros(C.shape[:2])
    k = graph.relu_count()
    lams = [None] * k
    if relaxed is None:
        relaxed = relax_all(intermediate[:k])
    for op in reversed(graph.ops):
        if isinstance(op, ReLU):
            k -= 1
            up, icpt, low, unstable = relaxed[k]
            if slopes is not None and slopes[k] is not None:
                low = torch.where(unstable.unsqueeze(1), slopes[k], low)
            if keep:
                lams[k] = A
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            if isinstance(op, Graft):  # grafted neurons: their exact line, with its intercept
                up, icpt, low, low_icpt = op.exact(up, icpt, low)
                bias = bias + (pos * low_icpt).sum(-1)
            bias = bias + (neg * icpt).sum(-1)
            A = pos * low + neg * up
            if extra is not None and extra[k] is not None:
                A = A + extra[k]
        elif isinstance(op, AFFINE):
            bias = bias + op.bias_term(A)
            A = op.back(A)
    if keep:
        lams.append(A)
    if lo.shape[0] == 1 or lo.stride(0) == hi.stride(0) == 0:  # one box for the whole batch
        lo, hi = lo[0], hi[0]
        lb = A @ ((hi + lo) / 2) - A.abs() @ ((hi - lo) / 2)
    else:  # broadcast products: a batched matrix-vector product (bmm) is several times slower
        lb = (A * ((hi + lo) / 2).unsqueeze(1)).sum(-1) - (A.abs() * ((hi - lo) / 2).unsqueeze(1)).sum(-1)
    return lb + bias, lams


def _relu_positions(graph: Graph) -> list[int]:
    return [i for i, op in enumerate(graph.ops) if isinstance(op, ReLU)]


def _pm_eye(B: int, n: int, like: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return torch.cat([eye, -eye]).expand(B, 2 * n, n)


def layerwise_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, bound_layer) -> Bounds:
    """Bounds of every ReLU input, then of the output (layout of :func:`ibp_bounds`).

    ``bound_layer(head, C, bounds, k)`` lower-bounds ``C @ head(x)`` for the sub-network ``head``
    ending at layer ``k``, given the earlier layers' ``bounds``; each result is intersected with IBP.
    Only the ReLU inputs that IBP leaves unstable (in some batch element) are bounded this way; the
    others keep their IBP bounds, which already fix their ReLU's relaxation (identity or zero), so
    every later bound is the same as when all neurons are bounded.
    """
    ibp = ibp_bounds(graph, lower, upper)
    B = lower.shape[0]
    bounds: Bounds = []
    ends = _relu_positions(graph) + [len(graph.ops)]
    for k, end in enumerate(ends):
        head = Graph(graph.ops[:end], graph.in_shape)
        l_ibp, u_ibp = ibp[k]
        n = l_ibp.shape[1]
        if k < len(ends) - 1:
            idx = torch.nonzero(((l_ibp < 0) & (u_ibp > 0)).any(0)).flatten()
        else:
            idx = torch.arange(n)
        m = len(idx)
        if m == 0:
            bounds.append((l_ibp, u_ibp))
            continue
        C = _pm_eye(B, n, l_ibp)[:, torch.cat([idx, idx + n])]
        lb = bound_layer(head, C, bounds, k)
        lo, hi = l_ibp.clone(), u_ibp.clone()
        lo[:, idx] = torch.maximum(lb[:, :m], l_ibp[:, idx])
        hi[:, idx] = torch.minimum(-lb[:, m:], u_ibp[:, idx])
        bounds.append((lo, hi))
    return bounds


def crown_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """CROWN bounds of every ReLU input, then of the output, each layer intersected with IBP."""
    return layerwise_bounds(graph, lower, upper, lambda head, C, bounds, k: backward(head, lower, upper, C, bounds)[0])


def crown_spec(
    graph: Graph,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor,
    intermediate: Bounds | None = None,
    slopes: list | None = None,
) -> torch.Tensor:
    """Lower bound of ``C @ f(x)`` over the box; ``C (B, S, n_out)`` -> ``(B, S)``.

    ``intermediate``: pre-ReLU bounds, one ``(l, u)`` per ReLU (CROWN layer by layer if None).
    ``slopes``: optional lower ReLU slopes for unstable neurons (alpha-CROWN).
    """
    if intermediate is None:
        intermediate = crown_bounds(graph, lower, upper)
    return backward(graph, lower, upper, C, intermediate[: graph.relu_count()], slopes)[0]


def crown_ibp_spec(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """CROWN-IBP: :func:`crown_spec` with IBP intermediate bounds (certified training)."""
    return crown_spec(graph, lower, upper, C, ibp_bounds(graph, lower, upper)[:-1])
