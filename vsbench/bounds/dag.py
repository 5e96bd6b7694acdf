"""The graph IR for verification: a DAG of ops over tensors of static shape.

A :class:`Dag` is a topologically ordered list of :class:`Node`; node 0 is the input. Each node
has the ids of its input nodes and its ONNX shape (dynamic dimensions read as 1, so the ONNX batch
dimension is a dimension of size 1 like any other). Batched tensors add one leading dimension:
``(B, *node.shape)``. Three kinds of op:

* :class:`Affine`: ``y = fn(*xs) + bias``, ``fn`` linear in its inputs (Gemm, Conv, pools,
  reshapes, residual Add, ...). Its CROWN backward step is :meth:`Affine.back` (the adjoint of
  ``fn``: transposed convolution for Conv, a vector-Jacobian product for the shape ops), so nothing
  is ever turned into a dense matrix.
* :class:`Relu`, :class:`MaxPool` and :class:`SShape` (Sigmoid, Tanh): the nonlinear ops, relaxed
  by the bound engines (:mod:`vsbench.bounds.dag_bounds`).

ONNX files are read into a Dag by :mod:`vsbench.bounds.onnx_ops`; :meth:`Dag.to_chain` gives the
chain :class:`vsbench.bounds.graph.Graph` (flattened batches, the engines BaB and the MILP use) when
the Dag is a chain of affine ops and ReLUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .graph import Conv, Graph, Linear, ReLU, Scale


@dataclass(eq=False)
class Input:
    pass


def _vjp(fn, A: torch.Tensor, in_shapes) -> tuple[torch.Tensor, ...]:
    """The adjoint of the linear ``fn`` applied to ``A (N, *out)`` (differentiable in ``A``)."""
    zeros = [A.new_zeros(A.shape[0], *s).requires_grad_() for s in in_shapes]
    with torch.enable_grad():
        return torch.autograd.grad(fn(*zeros), zeros, A, create_graph=A.requires_grad)


@dataclass(eq=False)
class Affine:
    """``y = fn(*xs) + bias`` on batched tensors; ``fn`` linear.

    ``abs_fn``: ``fn`` with every weight replaced by its absolute value (interval radii); None when
    ``fn``'s weights are all non-negative (pools, reshapes, sums). ``back_fn``: the adjoint, ``A``
    ``(N, *out)`` -> one ``(N, *in_i)`` per input; None: computed as a vector-Jacobian product.
    ``chain``: the equivalent op of a chain :class:`Graph` on flattened tensors, where there is one
    (``"flat"`` for ops that keep the flat order: Reshape, Flatten, Squeeze, Identity). ``mixing``:
    some output depends on several inputs (False for elementwise, reshaping and selecting ops: IBP
    through them loses nothing). ``terms``: how many roundings one output takes in float32 (the
    float32 error bound of :mod:`vsbench.bounds.float_error`; None counts every input element).
    """

    fn: Callable
    bias: torch.Tensor | None = None  # (*out_shape) or broadcastable to it
    abs_fn: Callable | None = None
    back_fn: Callable | None = None
    chain: object = None
    mixing: bool = True
    terms: int | None = None  # products summed per output in float32 (0: exact data movement); None: unknown

    def forward(self, *xs):
        y = self.fn(*xs)
        return y if self.bias is None else y + self.bias

    def radius(self, *rs):
        return (self.abs_fn or self.fn)(*rs)

    def back(self, A: torch.Tensor, in_shapes) -> list[torch.Tensor]:
        """``A (B, S, *out)`` -> the coefficients of each input, ``(B, S, *in_i)``."""
        flat = A.reshape(-1, *A.shape[2:])
        outs = self.back_fn(flat) if self.back_fn is not None else _vjp(self.fn, flat, in_shapes)
        return [o.reshape(*A.shape[:2], *s) for o, s in zip(outs, in_shapes)]

    def back_abs(self, A: torch.Tensor, in_shapes) -> list[torch.Tensor]:
        """The adjoint of ``abs_fn`` (of ``fn`` where its weights are non-negative)."""
        if self.abs_fn is None:
            return self.back(A, in_shapes)
        outs = _vjp(self.abs_fn, A.reshape(-1, *A.shape[2:]), in_shapes)
        return [o.reshape(*A.shape[:2], *s) for o, s in zip(outs, in_shapes)]

    def bias_term(self, A: torch.Tensor) -> torch.Tensor:
        """``<A, bias>`` per ``(B, S)``."""
        if self.bias is None:
            return A.new_zeros(A.shape[:2])
        return (A * self.bias).flatten(2).sum(-1)


@dataclass(eq=False)
class Relu:
    pass


@dataclass(eq=False)
class MaxPool:
    """2-D max pooling over ``(N, C, H, W)`` views of the input; ``pads`` as ``F.pad`` takes them."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # (left, right, top, bottom)

    def padded(self, x: torch.Tensor, value=-math.inf) -> torch.Tensor:
        return F.pad(x, self.pads, value=value) if any(self.pads) else x

    def forward(self, x):
        lead = x.shape[:-3]
        y = F.max_pool2d(self.padded(x.reshape(-1, *x.shape[-3:])), self.kernel, self.stride, 0, self.dilation)
        return y.reshape(*lead, *y.shape[1:])


# onnxruntime's float32 Sigmoid / Tanh are within this of the exact function of their float32 input:
# at least twice the largest error over every finite float32 input (1.78e-7 and 3.25e-7), measured
# exhaustively with onnxruntime 1.32 on x86-64 (`python benchmarks/activation_error.py`).
SSHAPE_ERROR = {"Sigmoid": 2.0**-21, "Tanh": 2.0**-20}


@dataclass(eq=False)
class SShape:
    """Sigmoid or Tanh: elementwise and increasing, its slope largest at 0 and falling on either side,
    so over any interval the smallest slope is at one of its ends."""

    kind: str  # "Sigmoid" or "Tanh"

    def forward(self, x):
        return torch.sigmoid(x) if self.kind == "Sigmoid" else torch.tanh(x)

    def slope_at_value(self, y):
        """The derivative where the function's value is ``y``."""
        return y * (1 - y) if self.kind == "Sigmoid" else 1 - y * y


@dataclass
class Node:
    op: object
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str = ""


@dataclass
class Dag:
    nodes: list[Node]
    output: int = field(default=-1)

    def __post_init__(self):
        if self.output < 0:
            self.output += len(self.nodes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.nodes[self.output].shape)

    def to(self, dtype) -> Dag:
        """The Dag itself (it is built in float64, the verifier's dtype); other dtypes are refused."""
        if dtype != torch.float64:
            raise ValueError("a Dag is float64")
        return self

    def users(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                out[j].append(i)
        return out

    def values(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node's value for the batch ``x`` (``(B, n_in)`` or ``(B, *in_shape)``)."""
        vals = [x.reshape(x.shape[0], *self.in_shape)]
        for n in self.nodes[1:]:
            xs = [vals[j] for j in n.inputs]
            if isinstance(n.op, Relu):
                vals.append(torch.relu(xs[0]))
            else:
                vals.append(n.op.forward(*xs))
        return vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flat outputs ``(B, n_out)`` of flat (or shaped) inputs, as :meth:`Graph.forward`."""
        return self.values(x)[self.output].reshape(x.shape[0], -1)

    @staticmethod
    def from_chain(graph: Graph) -> Dag:
        """The Dag of a chain :class:`Graph` (flat nodes; the ops' own forward and backward steps)."""
        nodes = [Node(Input(), (), (graph.n_in,))]
        for op in graph.ops:
            n = nodes[-1].shape[0]
            if isinstance(op, ReLU):
                nodes.append(Node(Relu(), (len(nodes) - 1,), (n,)))
                continue
            bias = op.forward(op.weight.new_zeros(1, n) if hasattr(op, "weight") else op.a.new_zeros(1, n))[0]
            terms = op.weight[0].numel() if hasattr(op, "weight") else 2
            affine = Affine(lambda x, op=op, bias=bias: op.forward(x) - bias, bias, op.abs_forward,
                            lambda a, op=op: (op.back(a),), op, terms=terms)
            nodes.append(Node(affine, (len(nodes) - 1,), (op.n_out,)))
        return Dag(nodes)

    def to_chain(self) -> Graph | None:
        """The equivalent chain :class:`Graph` (shares tensors), or None if this is not a chain
        of affine ops and ReLUs (with flat-order-preserving reshapes) ending at the output."""
        ops = []
        for i, n in enumerate(self.nodes[1:], 1):
            if n.inputs != (i - 1,):
                return None
            if isinstance(n.op, Relu):
                ops.append(ReLU())
            elif isinstance(n.op, Affine) and isinstance(n.op.chain, (Linear, Conv, Scale)):
                ops.append(n.op.chain)
            elif not (isinstance(n.op, Affine) and n.op.chain == "flat"):
                return None
        if self.output != len(self.nodes) - 1:
            return None
        return Graph(ops, self.in_shape)

