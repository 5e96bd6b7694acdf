"""The one network representation every bound engine, the MILP and the verifier use.

A :class:`Graph` is a sequence of ops acting on *flattened* batches ``(B, n)``:
affine ops (:class:`Linear`, :class:`Conv`, :class:`Scale`) and :class:`ReLU`.
Flatten is implicit (NCHW flattening in C order, as torch and ONNX do), so the
VNN-LIB variable ``X_i`` is column ``i`` of the input and ``Y_j`` column ``j`` of the output.

Every affine op offers the same small algebra:

* ``forward(x)``      x -> W x + b on ``(B, n_in)``
* ``abs_forward(r)``  r -> |W| r (no bias), for interval radii
* ``back(A)``         A -> A W for ``A`` of shape ``(..., n_out)``, the CROWN backward step
* ``bias_term(A)``    A -> A b, shape ``A.shape[:-1]``
* ``dense()``         the explicit ``(W, b)`` matrices (for MILP and simplification)

Graphs are built from a torch ``nn.Sequential`` (:func:`from_torch`, differentiable:
ops hold the module's live tensors) or from an ONNX file (:func:`from_onnx`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedModel(ValueError):
    """The model uses an operator or structure the bound engines cannot handle."""


@dataclass
class Linear:
    """``W x + b``; with ``slack`` ``r`` (``(n_out,)``, or ``(B, n_out)`` per box) the output may be off
    by up to ``r`` per neuron, as a float32 layer's rounding is: :func:`~vsbench.bounds.ibp.ibp_bounds`
    widens the output by ``r`` and :meth:`bias_term` takes the worst case, so every bound engine bounds
    each value within the slack (``forward`` stays exact)."""

    weight: torch.Tensor  # (n_out, n_in)
    bias: torch.Tensor  # (n_out,)
    slack: torch.Tensor | None = None

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    def forward(self, x):
        return x @ self.weight.T + self.bias

    def abs_forward(self, r):
        return r @ self.weight.abs().T

    def back(self, A):
        return A @ self.weight

    def bias_term(self, A):
        if self.slack is None:
            return A @ self.bias
        slack = self.slack if self.slack.ndim == 1 else self.slack.unsqueeze(1)  # per box: broadcast over specs
        return A @ self.bias - (A.abs() * slack).sum(-1)

    def dense(self):
        if self.slack is not None:
            raise UnsupportedModel("a layer with rounding slack has no exact dense form")
        return self.weight, self.bias

    def to(self, dtype):
        slack = None if self.slack is None else self.slack.detach().to(dtype)
        return Linear(self.weight.detach().to(dtype), self.bias.detach().to(dtype), slack)


@dataclass
class Conv:
    weight: torch.Tensor  # (C_out, C_in, kH, kW)
    bias: torch.Tensor  # (C_out,)
    in_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    out_shape: tuple[int, int, int] = field(init=False)

    def __post_init__(self):
        c, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        oh = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        self.out_shape = (self.weight.shape[0], oh, ow)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def _conv(self, x, weight, bias):
        y = F.conv2d(x.reshape(-1, *self.in_shape), weight, bias, self.stride, self.padding)
        return y.reshape(*x.shape[:-1], self.n_out)

    def forward(self, x):
        return self._conv(x, self.weight, self.bias)

    def abs_forward(self, r):
        return self._conv(r, self.weight.abs(), None)

    def back(self, A):
        lead = A.shape[:-1]
        kh, kw = self.weight.shape[2:]
        out_pad = tuple(
            self.in_shape[1 + i] - ((self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i] + k)
            for i, k in enumerate((kh, kw))
        )
        x = F.conv_transpose2d(
            A.reshape(-1, *self.out_shape), self.weight, None, self.stride, self.padding, out_pad
        )
        return x.reshape(*lead, self.n_in)

    def bias_term(self, A):
        per_channel = A.reshape(*A.shape[:-1], self.out_shape[0], -1).sum(-1)
        return per_channel @ self.bias

    def dense(self):
        eye = torch.eye(self.n_in, dtype=self.weight.dtype, device=self.weight.device)
        return self._conv(eye, self.weight, None).T, self.bias.repeat_interleave(
            self.out_shape[1] * self.out_shape[2]
        )

    def to(self, dtype):
        return Conv(
            self.weight.detach().to(dtype), self.bias.detach().to(dtype), self.in_shape, self.stride, self.padding
        )


@dataclass
class Scale:
    """Elementwise affine map ``y = a * x + b`` (normalisation, folded BatchNorm)."""

    a: torch.Tensor  # (n,)
    b: torch.Tensor  # (n,)

    @property
    def n_in(self) -> int:
        return self.a.shape[0]

    n_out = n_in

    def forward(self, x):
        return x * self.a + self.b

    def abs_forward(self, r):
        return r * self.a.abs()

    def back(self, A):
        return A * self.a

    def bias_term(self, A):
        return A @ self.b

    def dense(self):
        return torch.diag(self.a), self.b

    def to(self, dtype):
        return Scale(self.a.detach().to(dtype), self.b.detach().to(dtype))


class BatchNormTrain(Scale):
    """A training-mode BatchNorm as the elementwise affine map of its batch statistics.

    The first input it sees (the clean batch: :class:`vsbench.train.loop.Trainer` runs the
    clean forward pass first) fixes ``a = gamma / sqrt(var + eps)`` and ``b = beta - mean a``,
    differentiable in the batch, and updates the running statistics as torch does; the bound
    passes then treat it as that affine map (as auto_LiRPA does in training, Shi et al. 2021).
    """

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d, per: int):
        self.bn, self.per = bn, per  # per: positions per channel (H * W for BatchNorm2d, else 1)
        self.a = self.b = None

    @property
    def n_in(self) -> int:
        return self.bn.num_features * self.per

    n_out = n_in

    def forward(self, x):
        if self.a is None:
            self._fix_statistics(x)
        return super().forward(x)

    def _fix_statistics(self, x) -> None:
        bn, n = self.bn, x.shape[0] * self.per
        channels = x.reshape(x.shape[0], bn.num_features, self.per).transpose(0, 1).reshape(bn.num_features, -1)
        mean, var = channels.mean(1), channels.var(1, unbiased=False)
        a = bn.weight / torch.sqrt(var + bn.eps)
        self.a, self.b = a.repeat_interleave(self.per), (bn.bias - mean * a).repeat_interleave(self.per)
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 1.0 / (int(bn.num_batches_tracked) + 1)
            bn.running_mean.mul_(1 - m).add_(m * mean)
            bn.running_var.mul_(1 - m).add_(m * var * n / max(1, n - 1))
            bn.num_batches_tracked.add_(1)


@dataclass
class ReLU:
    def forward(self, x):
        return torch.relu(x)

    def to(self, dtype):
        return self


@dataclass
class Graft(ReLU):
    """A ReLU layer with some neurons grafted to fixed linear functions (linearity grafting):
    ``y = keep * relu(x) + (1 - keep) * (slope * x + intercept)``, all ``(n,)`` (slope and
    intercept zero where ``keep`` is 1). A grafted neuron's relaxation is exact."""

    keep: torch.Tensor
    slope: torch.Tensor
    intercept: torch.Tensor

    def forward(self, x):
        return torch.relu(x) * self.keep + x * self.slope + self.intercept

    def interval(self, lo, hi):
        a, b = self.slope * lo, self.slope * hi
        return (lo.clamp(min=0) * self.keep + torch.minimum(a, b) + self.intercept,
                hi.clamp(min=0) * self.keep + torch.maximum(a, b) + self.intercept)

    def exact(self, up, icpt, low):
        """The ReLU relaxation ``(up, icpt, low)`` with grafted neurons replaced by their line:
        ``(up, icpt, low, low_icpt)``."""
        lin = self.keep == 0
        up, low = torch.where(lin, self.slope, up), torch.where(lin, self.slope, low)
        return up, torch.where(lin, self.intercept, icpt), low, self.intercept

    def to(self, dtype):
        return Graft(*(t.detach().to(dtype) for t in (self.keep, self.slope, self.intercept)))


AFFINE = (Linear, Conv, Scale)


@dataclass
class Graph:
    ops: list
    in_shape: tuple[int, ...]  # without the batch dimension

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        for op in reversed(self.ops):
            if isinstance(op, AFFINE):
                return op.n_out
        return self.n_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for op in self.ops:
            x = op.forward(x)
        return x

    def to(self, dtype) -> "Graph":
        """A detached copy in ``dtype`` (verification runs in float64)."""
        return Graph([op.to(dtype) for op in self.ops], self.in_shape)

    def relu_count(self) -> int:
        return sum(isinstance(op, ReLU) for op in self.ops)

    def dense_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The network as ``[(W_1, b_1), ..., (W_L, b_L)]`` with a ReLU between consecutive pairs.

        Consecutive affine ops are multiplied together. Used by the MILP and by tools that want
        plain matrices; memory is ``sum(n_out * n_in)``.
        """
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        current = None
        for op in self.ops:
            if isinstance(op, Graft):
                raise UnsupportedModel("grafted ReLUs have no plain (W, b) chain form")
            if isinstance(op, ReLU):
                if current is None:
                    raise UnsupportedModel("ReLU without a preceding affine layer")
                layers.append(current)
                current = None
                continue
            W, b = op.dense()
            current = (W, b) if current is None else (W @ current[0], W @ current[1] + b)
        if current is None:  # a ReLU after the output layer: an identity layer after it
            n = layers[-1][0].shape[0]
            current = (torch.eye(n, dtype=layers[-1][0].dtype), layers[-1][0].new_zeros(n))
        layers.append(current)
        return layers

    def dense_size(self) -> int:
        """Entries of :meth:`dense_layers`'s matrices, without building them."""
        total, n_in, n_out = 0, self.n_in, self.n_in
        for op in self.ops:
            if isinstance(op, ReLU):
                total, n_in = total + n_in * n_out, n_out
            else:
                n_out = op.n_out
        return total + n_in * n_out

    @staticmethod
    def from_dense(layers: list[tuple[torch.Tensor, torch.Tensor]], in_shape=None, slack=None) -> "Graph":
        """The chain ``layers`` = ``[(W, b), ...]`` with a ReLU between; ``slack``: optional per-layer
        :class:`Linear` slack (one entry per layer, None for none)."""
        ops: list = []
        for i, (W, b) in enumerate(layers):
            if i:
                ops.append(ReLU())
            ops.append(Linear(W, b, None if slack is None else slack[i]))
        return Graph(ops, tuple(in_shape) if in_shape else (layers[0][0].shape[1],))


# --------------------------------------------------------------------------- torch


def _flat_modules(model: nn.Module):
    for m in model.children() if isinstance(model, nn.Sequential) else [model]:
        if isinstance(m, nn.Sequential):
            yield from _flat_modules(m)
        else:
            yield m


def batchnorm_affine(bn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(a, b)`` with ``bn(x) = a x + b`` under the running statistics (eval mode)."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


def from_torch(model: nn.Module, in_shape: tuple[int, ...]) -> Graph:
    """Graph of a sequential torch model. Ops reference the live (differentiable) weights.

    Supports Linear, Conv2d, ReLU, grafted ReLU (a module with ``graft()``), Flatten,
    BatchNorm1d/2d (running statistics in eval mode, :class:`BatchNormTrain` in training mode) and any module
    with an ``affine_scale(shape) -> (a, b)`` method (e.g. :class:`vsbench.nets.Normalize`).
    """
    shape = tuple(in_shape)
    ops: list = []
    for m in _flat_modules(model):
        if isinstance(m, nn.Linear):
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
            ops.append(Linear(m.weight, bias))
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or len(shape) != 3:
                raise UnsupportedModel(f"unsupported Conv2d configuration: {m}")
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_channels)
            op = Conv(m.weight, bias, shape, tuple(m.stride), tuple(m.padding))
            ops.append(op)
            shape = op.out_shape
        elif isinstance(m, nn.ReLU):
            ops.append(ReLU())
        elif hasattr(m, "graft"):  # vsbench.nets.GraftReLU
            ops.append(Graft(*m.graft()))
        elif isinstance(m, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            per = math.prod(shape[1:]) if len(shape) == 3 else 1
            if m.training:
                ops.append(BatchNormTrain(m, per))
            else:
                a, b = batchnorm_affine(m)
                ops.append(Scale(a.repeat_interleave(per), b.repeat_interleave(per)))
        elif hasattr(m, "affine_scale"):
            a, b = m.affine_scale(shape)
            ops.append(Scale(a, b))
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        else:
            raise UnsupportedModel(f"unsupported module {type(m).__name__}")
    return Graph(ops, tuple(in_shape))


# --------------------------------------------------------------------------- ONNX


def from_onnx(path: str | Path, dtype=torch.float64) -> Graph:
    """Chain graph of an ONNX model (read by :func:`vsbench.bounds.onnx_ops.load_onnx`).

    Raises :class:`UnsupportedModel` if the model is not a chain of affine layers and ReLUs (the
    DAG engines of :mod:`vsbench.bounds.dag_bounds` take any model ``load_onnx`` reads), and
    ``ValueError`` if the file is not a readable ONNX model.
    """
    from .onnx_ops import load_onnx

    graph = load_onnx(path).to_chain()
    if graph is None:
        raise UnsupportedModel("the model is not a chain of affine layers and ReLUs")
    return graph if dtype == torch.float64 else graph.to(dtype)
