"""Interval bound propagation (IBP), batched over inputs; differentiable in the weights."""

from __future__ import annotations

import torch

from .graph import AFFINE, Graft, Graph, Linear, ReLU


def ibp_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Interval bounds of every ReLU input, then of the network output.

    ``lower``/``upper`` are ``(B, n_in)`` (any trailing shape is flattened). Returns one
    ``(l, u)`` pair per ReLU, in order, followed by the output bounds: ``len == relu_count + 1``.
    """
    lo, hi = lower.reshape(lower.shape[0], -1), upper.reshape(upper.shape[0], -1)
    out = []
    for op in graph.ops:
        if isinstance(op, ReLU):
            out.append((lo, hi))
            lo, hi = op.interval(lo, hi) if isinstance(op, Graft) else (lo.clamp(min=0), hi.clamp(min=0))
        elif isinstance(op, AFFINE):
            mid, rad = op.forward((hi + lo) / 2), op.abs_forward((hi - lo) / 2)
            if isinstance(op, Linear) and op.slack is not None:
                rad = rad + op.slack
            lo, hi = mid - rad, mid + rad
    out.append((lo, hi))
    return out


def ibp_spec(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Lower bound of ``C @ f(x)`` over the box, ``C`` of shape ``(B, S, n_out)`` -> ``(B, S)``.

    The last affine op is merged into ``C`` before the interval step (as in CROWN-IBP),
    which is never looser than bounding the outputs first.
    """
    last = max(i for i, op in enumerate(graph.ops) if isinstance(op, AFFINE))
    head = Graph(graph.ops[:last], graph.in_shape)
    lo, hi = ibp_bounds(head, lower, upper)[-1]
    op = graph.ops[last]
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    # C (W mid + b) - |C W| rad, as broadcast products: batched matrix-vector products (bmm)
    # of these shapes cost ~3x more per training step on a CPU
    center = (C * op.forward(mid).unsqueeze(-2)).sum(-1)
    radius = (op.back(C).abs() * rad.unsqueeze(-2)).sum(-1)
    if isinstance(op, Linear) and op.slack is not None:
        radius = radius + (C.abs() * (op.slack if op.slack.ndim == 1 else op.slack.unsqueeze(-2))).sum(-1)
    return center - radius
