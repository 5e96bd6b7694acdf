"""Tighter intermediate bounds by splitting: each unstable neuron of layer ``k`` is bounded over
every sign pattern of the ``K`` unstable neurons of layer ``k - 1`` that weigh most on it
(beta-CROWN per pattern), and keeps the worst pattern's bound.

The patterns cover the whole box, so the minimum over them is sound. This recovers most of what an
exact MILP per neuron gives (the 256x4 mnistfc nets: the same tightening as HiGHS at 0.5 s per
neuron, in 0.5 s for a whole layer) and is what lets BaB, which keeps these bounds in every domain,
prove the hard clauses.
"""

from __future__ import annotations

import itertools

import torch

from .beta import beta_spec, split_bounds
from .crown import Bounds
from .graph import Graph

MAX_DOMAINS = 4096  # patterns x neurons bounded per beta-CROWN batch


def _gap(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Height of the triangle relaxation (0 for stable neurons)."""
    unstable = (l < 0) & (u > 0)
    return torch.where(unstable, -l * u / (u - l).clamp(min=1e-12), torch.zeros_like(l))


def _refine_layer(layers, lower, upper, bounds: Bounds, k: int, K: int, iters: int, deadline):
    l, u = bounds[k][0][0], bounds[k][1][0]
    js = torch.nonzero((l < 0) & (u > 0)).flatten()
    gap = _gap(bounds[k - 1][0][0], bounds[k - 1][1][0])
    K = min(K, int((gap > 0).sum()))
    if not len(js) or not K:
        return bounds[k]
    head = Graph.from_dense(layers[: k + 1])
    W = layers[k][0]
    top = (W[js].abs() * gap).topk(K, dim=1).indices  # (J, K): the previous layer's neurons to split
    pats = torch.tensor(list(itertools.product([1.0, -1.0], repeat=K)), dtype=l.dtype)  # (P, K)
    P, J = len(pats), len(js)
    lo_new, hi_new = l.clone(), u.clone()
    per = max(1, MAX_DOMAINS // P)
    for s in range(0, J, per):
        if deadline is not None and deadline.expired():
            break
        jj, tt = js[s:s + per], top[s:s + per]
        n = len(jj) * P
        signs = torch.zeros(len(jj), P, W.shape[1], dtype=l.dtype)
        signs.scatter_(2, tt[:, None, :].expand(-1, P, -1), pats[None].expand(len(jj), -1, -1))
        splits = [torch.zeros(n, b[0].shape[1], dtype=l.dtype) for b in bounds[: k - 1]] + [signs.reshape(n, -1)]
        dom = split_bounds([(a.expand(n, -1), b.expand(n, -1)) for a, b in bounds[:k]], splits)
        C = torch.zeros(len(jj), 2, W.shape[0], dtype=l.dtype)
        C[torch.arange(len(jj)), 0, jj] = 1.0
        C[torch.arange(len(jj)), 1, jj] = -1.0
        C = C.repeat_interleave(P, 0)
        lb = beta_spec(head, lower.expand(n, -1), upper.expand(n, -1), C, dom, splits, iters=iters,
                       lr_alpha=0.1, lr_beta=0.1, deadline=deadline)[0]
        worst = lb.reshape(len(jj), P, 2).min(1).values  # (J, 2): lower bound of z_j and of -z_j
        lo_new[jj] = torch.maximum(lo_new[jj], worst[:, 0])
        hi_new[jj] = torch.minimum(hi_new[jj], -worst[:, 1])
    return lo_new[None], hi_new[None]


def split_refine(layers, lower: torch.Tensor, upper: torch.Tensor, bounds: Bounds, K: int = 4,
                 iters: int = 20, deadline=None) -> Bounds:
    """``bounds`` (pre-ReLU ``(l, u)``, each ``(1, n_k)``, of the network ``layers`` =
    ``[(W, b), ...]`` over the box ``lower``/``upper`` ``(1, n_in)``) tightened layer by layer from
    the second ReLU on, each layer using the tightened earlier ones. Never looser than ``bounds``."""
    out = list(bounds)
    for k in range(1, len(out)):
        out[k] = _refine_layer(layers, lower, upper, out, k, K, iters, deadline)
    return out
