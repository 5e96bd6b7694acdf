"""Layers that store only their active weights, and sparse kernels for training with them.

A :class:`SparseLayer` replaces a masked Linear / Conv2d during sparse-from-scratch training: it
keeps the active weights as one trainable vector ``values`` at the sorted flat positions ``index``
(the optimiser, gradient clipping and Adam's moments see only those). In the bound graph a sparse
Linear layer whose density is at most :data:`SPARSE_MAX_DENSITY` becomes a
:class:`SparseLinearOp`: forward, IBP and CROWN products are CSR x dense matmuls and the gradient
of the values is taken only at the active positions (sampled dense-dense product), never the dense
weight gradient. Denser Linear layers and Conv2d layers compute with the scattered dense weight,
which is also what steps that need the dense weight gradient (RigL regrowth) use.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vsbench.bounds.graph import Conv, Graph, Linear, from_torch

warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")

# Measured on one core (AMD EPYC, MKL, batch 128, benchmarks/sparse_kernels.py): for a 100x784
# layer the CSR products beat dense ones up to density ~0.2 (0.08: 3x faster, 0.008: 10x);
# for 100x100 and smaller the gain is at most a few microseconds, below the op's own overhead.
SPARSE_MAX_DENSITY = 0.1
SPARSE_MIN_WEIGHTS = 20_000


class Pattern:
    """Positions ``(rows, cols)`` of a ``shape`` matrix's nonzeros in row-major order (CSR)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]):
        self.rows, self.cols, self.shape = rows, cols, shape
        self.crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
        self.crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
        self._t: tuple[Pattern, torch.Tensor] | None = None

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape, check_invariants=False)

    def transpose(self) -> tuple["Pattern", torch.Tensor]:
        """``(pattern of the transpose, perm)``: the transpose's values are ``values[perm]``."""
        if self._t is None:
            perm = torch.argsort(self.cols * self.shape[0] + self.rows)
            t = Pattern(self.cols[perm], self.rows[perm], (self.shape[1], self.shape[0]))
            t._t = (self, torch.argsort(perm))
            self._t = (t, perm)
        return self._t


class _SpMM(torch.autograd.Function):
    """``x @ S.T`` for ``S = pattern.csr(values)``; the gradient of ``values`` only at the pattern.

    Fastest when ``x.T`` is contiguous (see :func:`feature_major`): the result is then returned
    in the same layout, so a chain of sparse layers needs no transposes.
    """

    @staticmethod
    def forward(ctx, values, x, pattern):
        ctx.save_for_backward(values, x)
        ctx.pattern = pattern
        return (pattern.csr(values) @ x.T.contiguous()).T

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        p = ctx.pattern
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.sparse.sampled_addmm(p.csr(values), grad.T, x, beta=0).values()
        if ctx.needs_input_grad[1]:
            t, perm = p.transpose()
            grad_x = (t.csr(values[perm]) @ grad.T.contiguous()).T
        return grad_values, grad_x, None


class _Scatter(torch.autograd.Function):
    """A ``numel`` vector holding ``values`` at ``index`` and zeros elsewhere (gradient: a gather)."""

    @staticmethod
    def forward(ctx, values, index, numel):
        ctx.save_for_backward(index)
        return values.new_zeros(numel).scatter_(0, index, values)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.take(index), None, None


def spmm(values: torch.Tensor, x: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """``x @ S.T`` (``x`` of shape ``(B, n_in)``) for the sparse ``S`` of ``pattern`` and ``values``."""
    return _SpMM.apply(values, x, pattern)


class SparseLinearOp(Linear):
    """A bound-graph Linear op computing with CSR kernels; ``weight`` gives the dense matrix."""

    def __init__(self, values: torch.Tensor, bias: torch.Tensor, pattern: Pattern):
        self.values, self.bias, self.pattern = values, bias, pattern

    @property
    def weight(self) -> torch.Tensor:
        p = self.pattern
        return self.values.new_zeros(p.shape).index_put((p.rows, p.cols), self.values)

    @property
    def n_in(self) -> int:
        return self.pattern.shape[1]

    @property
    def n_out(self) -> int:
        return self.pattern.shape[0]

    def forward(self, x):
        return spmm(self.values, x, self.pattern) + self.bias

    def abs_forward(self, r):
        return spmm(self.values.abs(), r, self.pattern)

    def back(self, A):
        t, perm = self.pattern.transpose()
        out = spmm(self.values[perm], A.reshape(-1, self.n_out), t)
        return out.reshape(*A.shape[:-1], self.n_in)


class SparseLayer(nn.Module):
    """A Linear / Conv2d layer holding only its active weights: ``values`` at flat ``index``."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, index: torch.Tensor, in_shape: tuple[int, ...]):
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        self.shape = tuple(layer.weight.shape)
        self.in_shape = tuple(in_shape)
        self.out_shape: tuple[int, ...] = (self.shape[0],)
        if self.conv:
            self.stride, self.padding = tuple(layer.stride), tuple(layer.padding)
            self.out_shape = (self.shape[0], *((n + 2 * p - k) // s + 1 for n, k, s, p in
                                               zip(in_shape[1:], self.shape[2:], self.stride, self.padding)))
        index = index.sort().values
        self.register_buffer("index", index)
        self.values = nn.Parameter(layer.weight.detach().reshape(-1)[index].clone())
        bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(self.shape[0])
        self.bias = nn.Parameter(bias.detach().clone())
        self._pattern: Pattern | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def sparse_compute(self) -> bool:
        """Whether the bound graph uses CSR kernels for this layer (see :data:`SPARSE_MAX_DENSITY`)."""
        return (not self.conv and self.numel >= SPARSE_MIN_WEIGHTS
                and self.index.numel() <= SPARSE_MAX_DENSITY * self.numel)

    def weight(self) -> torch.Tensor:
        """The dense weight (zeros at inactive positions), differentiable in ``values``."""
        return _Scatter.apply(self.values, self.index, self.numel).view(self.shape)

    def pattern(self) -> Pattern:
        if self._pattern is None:
            n_in = self.shape[1]
            self._pattern = Pattern(self.index // n_in, self.index % n_in, self.shape)
        return self._pattern

    def op(self, dense: bool = False):
        """This layer's bound-graph op; ``dense``: compute with the dense weight (its gradient
        is then available to the step, e.g. for regrowth)."""
        if self.sparse_compute and not dense:
            return SparseLinearOp(self.values, self.bias, self.pattern())
        if self.conv:
            return Conv(self.weight(), self.bias, self.in_shape, self.stride, self.padding)
        return Linear(self.weight(), self.bias)

    def forward(self, x):
        if self.conv:
            return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding)
        return F.linear(x, self.weight(), self.bias)

    @torch.no_grad()
    def rewire(self, index: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Move to the active set ``index`` (same size): kept weights and their optimiser state
        stay, new positions start at zero."""
        index = index.sort().values
        old = self.index.clone()
        state = optimizer.state.get(self.values, {}) if optimizer is not None else {}
        for t in [self.values.data] + [v for v in state.values() if v.shape == self.values.shape]:
            dense = t.new_zeros(self.numel)
            dense[old] = t
            t.copy_(dense[index])
        self.index.copy_(index)
        self._pattern = None

    def to_layer(self) -> nn.Linear | nn.Conv2d:
        """A plain layer with the dense weight (zeros at inactive positions)."""
        if self.conv:
            layer = nn.Conv2d(self.shape[1], self.shape[0], self.shape[2:], self.stride, self.padding)
        else:
            layer = nn.Linear(self.shape[1], self.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight())
            layer.bias.copy_(self.bias)
        return layer.to(self.values.device)


def sparse_layers(model: nn.Module) -> list[SparseLayer]:
    return [m for m in model.modules() if isinstance(m, SparseLayer)]


def to_sparse(model: nn.Sequential, masks: list[torch.Tensor], in_shape: tuple[int, ...]) -> nn.Sequential:
    """Replace the Linear / Conv2d children of ``model`` (in order) by :class:`SparseLayer` s
    keeping the positions where ``masks`` are nonzero; in place, returns ``model``."""
    x = torch.zeros(1, *in_shape, device=next(model.parameters()).device)
    masks = list(masks)
    training = model.training
    model.eval()  # the shape probe must not touch BatchNorm statistics
    with torch.no_grad():
        for i, m in enumerate(model):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                model[i] = SparseLayer(m, masks.pop(0).reshape(-1).nonzero().squeeze(1), tuple(x.shape[1:]))
            x = model[i](x)
    model.train(training)
    if masks:
        raise ValueError(f"{len(masks)} masks left over: the model has nested Linear / Conv2d layers")
    return model


def to_dense(model: nn.Sequential) -> nn.Sequential:
    """Replace every :class:`SparseLayer` child by its plain layer; in place, returns ``model``."""
    for i, m in enumerate(model):
        if isinstance(m, SparseLayer):
            model[i] = m.to_layer()
    return model


def train_graph(model: nn.Sequential, in_shape: tuple[int, ...], dense: bool = False) -> Graph:
    """:func:`from_torch`, with each :class:`SparseLayer` contributing its own op (``dense``: as
    a dense-weight op)."""
    if not any(isinstance(m, SparseLayer) for m in model):
        return from_torch(model, in_shape)
    ops, segment, shape = [], [], tuple(in_shape)
    for m in [*model, None]:
        if m is not None and not isinstance(m, SparseLayer):
            segment.append(m)
            continue
        if segment:  # the plain modules since the last sparse layer
            ops += from_torch(segment[0] if len(segment) == 1 else nn.Sequential(*segment), shape).ops
        if m is not None:
            ops.append(m.op(dense))
            segment, shape = [], m.out_shape
    return Graph(ops, tuple(in_shape))


def feature_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the same shape and values, stored so that ``x.reshape(B, -1).T`` is contiguous
    (what the CSR kernels of :class:`SparseLinearOp` read; elementwise ops keep this layout)."""
    flat = x.reshape(len(x), -1)
    return flat.T.contiguous().T.reshape(x.shape)
