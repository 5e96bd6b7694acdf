"""ONNX -> :class:`~vsbench.bounds.dag.Dag`: one handler per operator, in the table :data:`OPS`.

Each handler checks its inputs' kinds (activation or constant), shapes and attribute values and
returns the node it adds; an operator or attribute not in the table, or a value a handler does not
support, is one :class:`UnsupportedModel` naming the operator, the node and the problem. Nodes whose
inputs are all constants (shape arithmetic, ``Constant``, weights built at run time) are folded by
onnx's reference evaluator. ``Shape`` of an activation is its static shape (dynamic dimensions are
read as 1: a VNN-LIB property is about one input).

Hand-written because the bound engines need each op's adjoint and interval behaviour, which no
ONNX library provides; auto_LiRPA's operator classes were the model for the split of the work.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dag import Affine, Dag, Input, MaxPool, Node, Relu, SShape
from .float_error import BN_ROUNDINGS
from .graph import Conv, Linear, Scale, UnsupportedModel

DTYPE = torch.float64


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.array(a, dtype=np.float64), dtype=DTYPE)


class _Builder:
    """The Dag under construction and the ONNX values: a node id (activation) or an array."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.values: dict[str, int | np.ndarray] = {}

    def shape(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].shape

    def add(self, op, inputs: list[int], name: str) -> int:
        """Add a node; its shape is found by running the op on zeros (which also checks it runs)."""
        xs = [torch.zeros(1, *self.shape(j), dtype=DTYPE) for j in inputs]
        with torch.no_grad():
            y = torch.relu(xs[0]) if isinstance(op, Relu) else op.forward(*xs)
        self.nodes.append(Node(op, tuple(inputs), tuple(y.shape[1:]), name))
        return len(self.nodes) - 1


class _Ctx:
    """One ONNX node being read: its inputs, attributes and an ``error`` that names it."""

    def __init__(self, b: _Builder, node, xs: list, attrs: dict):
        self.b, self.node, self.xs, self.at = b, node, xs, attrs
        self.op = node.op_type

    def error(self, problem: str) -> UnsupportedModel:
        return UnsupportedModel(f"ONNX {self.op} node '{self.node.name}': {problem}")

    def act(self, i: int = 0) -> int:
        x = self.xs[i] if i < len(self.xs) else None
        if not isinstance(x, int):
            raise self.error(f"input {i} must be an activation, not a constant")
        return x

    def const(self, i: int, default=None) -> np.ndarray | None:
        x = self.xs[i] if i < len(self.xs) else None
        if x is None:
            return default
        if isinstance(x, int):
            raise self.error(f"input {i} must be a constant (weights computed from the input are not supported)")
        return x

    def ints(self, name: str, i: int | None = None, default=None):
        """An int-list attribute, or (newer opsets) the constant input ``i``."""
        v = self.at.get(name)
        if v is None and i is not None:
            v = self.const(i)
        return default if v is None else [int(a) for a in np.asarray(v).ravel()]

    def add(self, op, inputs: list[int]) -> int:
        return self.b.add(op, inputs, self.node.name)


# --------------------------------------------------------------------------- helpers


def _bcast(x: torch.Tensor, shape: tuple, out: tuple) -> torch.Tensor:
    """Batched ``x`` of ONNX shape ``shape`` broadcast (numpy rules) to ``out``."""
    return x.reshape(x.shape[0], *([1] * (len(out) - len(shape))), *shape).expand(x.shape[0], *out)


def _as4d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *x.shape[-3:])


def _spatial(c: _Ctx, shape: tuple) -> None:
    if len(shape) != 4:
        raise c.error(f"only 2-D (N, C, H, W) inputs are supported, got shape {list(shape)}")


def _window(c: _Ctx, shape: tuple, kernel: list[int], allow_ceil=False):
    """Strides, dilations and pads ``(left, right, top, bottom)`` of a Conv or pool over ``shape``."""
    if len(kernel) != 2:
        raise c.error(f"only 2-D kernels are supported, got {kernel}")
    strides = c.ints("strides", default=[1, 1])
    dil = c.ints("dilations", default=[1, 1])
    if c.at.get("ceil_mode", 0) and not allow_ceil:
        raise c.error("ceil_mode=1 is not supported")
    mode = c.at.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "NOTSET":
        t, l, b, r = c.ints("pads", default=[0, 0, 0, 0])
    elif mode == "VALID":
        t = l = b = r = 0
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(shape[2:], kernel, strides, dil):
            total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
            small = total // 2
            pads.append((small, total - small) if mode == "SAME_UPPER" else (total - small, small))
        (t, b), (l, r) = pads
    else:
        raise c.error(f"auto_pad={mode} is not supported")
    return tuple(strides), tuple(dil), (l, r, t, b)


# --------------------------------------------------------------------------- handlers


def _gemm(c: _Ctx) -> int:
    alpha, beta = float(c.at.get("alpha", 1.0)), float(c.at.get("beta", 1.0))
    ta, tb = int(c.at.get("transA", 0)), int(c.at.get("transB", 0))
    left = isinstance(c.xs[0], int)
    x = c.act(0 if left else 1)
    other = c.const(1 if left else 0)
    if len(c.b.shape(x)) != 2 or other.ndim != 2:
        raise c.error("Gemm operands must be 2-D")
    C = c.const(2)
    out = _matmul(c, x, other.T if (tb if left else ta) else other, left, ta if left else tb, alpha)
    n = c.b.nodes[out]
    if C is not None:
        n.op.bias = _t(np.broadcast_to(beta * C, n.shape))
        if isinstance(n.op.chain, Linear):
            n.op.chain.bias = n.op.bias.reshape(-1)
    return out


def _matmul_node(c: _Ctx) -> int:
    left = isinstance(c.xs[0], int)
    x = c.act(0 if left else 1)
    if left and isinstance(c.xs[1], int):
        raise c.error("a product of two activations is not linear")
    return _matmul(c, x, c.const(1 if left else 0), left, False, 1.0)


def _matmul(c: _Ctx, x: int, M: np.ndarray, left: bool, trans_x: bool, alpha: float) -> int:
    """``alpha * x @ M`` (``left``) or ``alpha * M @ x``, with ``x`` transposed first if ``trans_x``."""
    W = _t(M) * alpha
    Wabs = W.abs()
    sx = c.b.shape(x)
    if (trans_x or not left) and len(sx) < 2:
        raise c.error("the activation operand must be at least 2-D here")

    def tr(x):
        return x.transpose(-1, -2) if trans_x else x

    if left:
        op = Affine(lambda x: tr(x) @ W, abs_fn=lambda r: tr(r) @ Wabs, terms=W.shape[-2])
        if W.dim() == 2:
            op.back_fn = lambda a: (tr(a @ W.T),)
        if W.dim() == 2 and not trans_x and len(sx) == 2 and sx[0] == 1:
            op.chain = Linear(W.T, W.new_zeros(W.shape[1]))
    else:
        op = Affine(lambda x: W @ tr(x), abs_fn=lambda r: Wabs @ tr(r), terms=W.shape[-1])
        if W.dim() == 2:
            op.back_fn = lambda a: (tr(W.T @ a),)
    return c.add(op, [x])


def _binary(c: _Ctx) -> int:
    """Add, Sub, Mul, Div: of an activation and a constant (affine) or, for Add and Sub, of two
    activations (a residual join)."""
    a, b = c.xs[:2]
    shapes = [c.b.shape(v) if isinstance(v, int) else v.shape for v in (a, b)]
    out = tuple(np.broadcast_shapes(*shapes))
    if isinstance(a, int) and isinstance(b, int):
        if c.op not in ("Add", "Sub"):
            raise c.error(f"{c.op} of two activations is not linear")
        sign = 1.0 if c.op == "Add" else -1.0
        sa, sb = shapes
        op = Affine(lambda x, y: _bcast(x, sa, out) + sign * _bcast(y, sb, out),
                    abs_fn=None if sign > 0 else lambda x, y: _bcast(x, sa, out) + _bcast(y, sb, out), terms=2)
        if sa == sb == out:
            op.back_fn = lambda A: (A, sign * A)
        return c.add(op, [a, b])
    x, first = (a, True) if isinstance(a, int) else (c.act(1), False)
    k = c.const(1 if first else 0).astype(np.float64)
    sx = shapes[0 if first else 1]
    scale, shift = 1.0, None
    if c.op == "Add":
        shift = k
    elif c.op == "Sub":
        scale, shift = (1.0, -k) if first else (-1.0, k)
    elif c.op == "Mul":
        scale = k
    elif first:  # Div
        scale = 1.0 / k
    else:
        raise c.error("division by an activation is not linear")
    return _elementwise(c, x, sx, out, scale, shift)


def _elementwise(c: _Ctx, x: int, sx: tuple, out: tuple, scale, shift, terms: int = 2) -> int:
    """``y = scale * x + shift`` with numpy broadcasting to ``out`` (``terms``: as :class:`Affine`)."""
    a = _t(np.broadcast_to(scale, out))
    op = Affine(lambda x: _bcast(x, sx, out) * a, None if shift is None else _t(np.broadcast_to(shift, out)),
                abs_fn=lambda r: _bcast(r, sx, out) * a.abs(), mixing=False, terms=terms)
    if sx == out:
        op.back_fn = lambda A: (A * a,)
        b = op.bias if op.bias is not None else torch.zeros(out, dtype=DTYPE)
        op.chain = Scale(a.reshape(-1), b.reshape(-1))
    return c.add(op, [x])


def _neg(c: _Ctx) -> int:
    sx = c.b.shape(c.act())
    return _elementwise(c, c.act(), sx, sx, -1.0, None, terms=0)


def _batchnorm(c: _Ctx) -> int:
    if c.at.get("training_mode", 0) or not c.at.get("spatial", 1):
        raise c.error("training_mode=1 and spatial=0 are not supported")
    x = c.act()
    scale, bias, mean, var = (c.const(i).astype(np.float64) for i in range(1, 5))
    sx = c.b.shape(x)
    a = scale / np.sqrt(var + float(c.at.get("epsilon", 1e-5)))
    per = (-1,) + (1,) * (len(sx) - 2)
    return _elementwise(c, x, sx, sx, a.reshape(per), (bias - mean * a).reshape(per), terms=BN_ROUNDINGS)


def _conv(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    _spatial(c, sx)
    W = _t(c.const(1))
    if W.dim() != 4:
        raise c.error("only 2-D convolutions are supported")
    kernel = c.ints("kernel_shape", default=list(W.shape[2:]))
    if kernel != list(W.shape[2:]):
        raise c.error(f"kernel_shape {kernel} does not match the weight {list(W.shape)}")
    groups = int(c.at.get("group", 1))
    if sx[1] != W.shape[1] * groups:
        raise c.error(f"{sx[1]} input channels do not match the weight {list(W.shape)} with group={groups}")
    stride, dil, pads = _window(c, sx, kernel)
    l, r, t, b = pads
    sym = l == r and t == b
    pad = (t, l) if sym else (0, 0)
    Wabs = W.abs()
    in_hw = (sx[2] + t + b, sx[3] + l + r)

    def conv(x, w):
        x4 = _as4d(x)
        y = F.conv2d(x4 if sym else F.pad(x4, pads), w, None, stride, pad, dil, groups)
        return y.reshape(x.shape[0], *sx[:-3], *y.shape[1:])

    op = Affine(lambda x: conv(x, W), abs_fn=lambda r: conv(r, Wabs), terms=math.prod(W.shape[1:]))
    bias = c.const(2)
    if bias is not None:
        op.bias = _t(bias).reshape(-1, 1, 1)
    node = c.add(op, [x])
    oh, ow = c.b.shape(node)[-2:]
    opad = [n - ((o - 1) * s + d * (k - 1) + 1 - 2 * p)
            for n, o, s, d, k, p in zip(in_hw if not sym else sx[2:], (oh, ow), stride, dil, kernel, pad)]

    def back(a):
        a4 = a.reshape(-1, *a.shape[-3:])
        g = F.conv_transpose2d(a4, W, None, stride, pad, opad, groups, dil)
        if not sym:
            g = g[..., t:t + sx[2], l:l + sx[3]]
        return (g.reshape(a.shape[0], *sx),)

    op.back_fn = back
    if sym and groups == 1 and dil == (1, 1) and sx[0] == 1:
        b_vec = op.bias.reshape(-1) if op.bias is not None else W.new_zeros(W.shape[0])
        op.chain = Conv(W, b_vec, tuple(sx[1:]), stride, pad)
    return node


def _relu(c: _Ctx) -> int:
    return c.add(Relu(), [c.act()])


def _sshape(c: _Ctx) -> int:
    return c.add(SShape(c.node.op_type), [c.act()])


def _avgpool(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    _spatial(c, sx)
    kernel = c.ints("kernel_shape")
    stride, dil, pads = _window(c, sx, kernel)
    if dil != (1, 1):
        raise c.error("dilations are not supported")
    ones = F.pad(torch.ones(1, 1, *sx[2:], dtype=DTYPE), pads)
    count = F.avg_pool2d(ones, kernel, stride) * math.prod(kernel)  # inputs in each window
    div = float(math.prod(kernel)) if c.at.get("count_include_pad", 0) else count[0, 0]

    def fn(x):
        y = F.avg_pool2d(F.pad(_as4d(x), pads), kernel, stride, divisor_override=1) / div
        return y.reshape(x.shape[0], *sx[:-3], *y.shape[1:])

    return c.add(Affine(fn, terms=math.prod(kernel) + 1), [x])


def _global_avgpool(c: _Ctx) -> int:
    x = c.act()
    dims = tuple(range(3, len(c.b.shape(x)) + 1))
    hw = math.prod(c.b.shape(x)[2:])
    return c.add(Affine(lambda x: x.mean(dims, keepdim=True), terms=hw + 1), [x])


def _maxpool(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    _spatial(c, sx)
    if len([o for o in c.node.output if o]) > 1:
        raise c.error("the Indices output is not supported")
    kernel = c.ints("kernel_shape")
    stride, dil, pads = _window(c, sx, kernel)
    return c.add(MaxPool(tuple(kernel), stride, dil, pads), [x])


def _pad(c: _Ctx) -> int:
    mode = c.at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise c.error(f"mode={mode} is not supported")
    x = c.act()
    sx = c.b.shape(x)
    pads = c.ints("pads", 1)
    value = c.at.get("value")
    if value is None:
        v = c.const(2)
        value = float(v.ravel()[0]) if v is not None and v.size else 0.0
    axes = c.ints("axes", 3) if len(c.xs) > 3 else None
    axes = [a % len(sx) for a in (axes if axes is not None else range(len(sx)))]
    begin, end = dict(zip(axes, pads[: len(axes)])), dict(zip(axes, pads[len(axes):]))
    tpads = [p for d in reversed(range(len(sx))) for p in (begin.get(d, 0), end.get(d, 0))]
    op = Affine(lambda x: F.pad(x, tpads), mixing=False, terms=0)
    if value:
        op.bias = F.pad(torch.zeros(1, *sx, dtype=DTYPE), tpads, value=value)[0] - F.pad(
            torch.zeros(1, *sx, dtype=DTYPE), tpads)[0]
    return c.add(op, [x])


def _reshape_to(c: _Ctx, x: int, out: tuple) -> int:
    if math.prod(out) != math.prod(c.b.shape(x)):
        raise c.error(f"cannot reshape {list(c.b.shape(x))} to {list(out)}")
    return c.add(Affine(lambda v: v.reshape(v.shape[0], *out), chain="flat", mixing=False, terms=0), [x])


def _flatten(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    axis = int(c.at.get("axis", 1)) % (len(sx) + 1) if sx else 0
    return _reshape_to(c, x, (math.prod(sx[:axis]), math.prod(sx[axis:])))


def _reshape(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    target = [int(v) for v in c.const(1).ravel()]
    if not c.at.get("allowzero", 0):
        target = [sx[i] if v == 0 else v for i, v in enumerate(target)]
    if target.count(-1) > 1:
        raise c.error(f"shape {target} has more than one -1")
    if -1 in target:
        known = math.prod(v for v in target if v != -1)
        target[target.index(-1)] = math.prod(sx) // max(known, 1)
    return _reshape_to(c, x, tuple(target))


def _squeeze(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    axes = c.ints("axes", 1)
    dummy = np.empty(sx)
    try:
        if c.op == "Squeeze":
            out = np.squeeze(dummy, tuple(axes) if axes is not None else None).shape
        else:
            out = np.expand_dims(dummy, tuple(axes)).shape
    except Exception as exc:
        raise c.error(f"axes {axes} do not fit the shape {list(sx)}: {exc}") from exc
    return _reshape_to(c, x, tuple(out))


def _transpose(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    perm = c.ints("perm", default=list(reversed(range(len(sx)))))
    if sorted(perm) != list(range(len(sx))):
        raise c.error(f"perm {perm} is not a permutation of {len(sx)} axes")
    inv = list(np.argsort(perm))
    op = Affine(lambda v: v.permute(0, *[p + 1 for p in perm]),
                back_fn=lambda a: (a.permute(0, *[p + 1 for p in inv]),), mixing=False, terms=0)
    return c.add(op, [x])


def _concat(c: _Ctx) -> int:
    axis = int(c.at["axis"])
    acts = [v for v in c.xs if isinstance(v, int)]
    rank = len(c.b.shape(acts[0]))
    axis %= rank
    parts = [v if isinstance(v, int) else _t(v) for v in c.xs]

    def fn(*xs):
        it = iter(xs)
        n = xs[0].shape[0]
        return torch.cat([next(it) if isinstance(p, int) else p.new_zeros(n, *p.shape) for p in parts], axis + 1)

    def bias_part(p):
        return torch.zeros(c.b.shape(p), dtype=DTYPE) if isinstance(p, int) else p

    op = Affine(fn, mixing=False, terms=0)
    if len(acts) < len(parts):
        op.bias = torch.cat([bias_part(p) for p in parts], axis)
    return c.add(op, acts)


def _select(c: _Ctx, x: int, axis: int, idx: np.ndarray) -> int:
    """``x`` indexed along ``axis`` by the integer array ``idx`` (its shape replaces that axis)."""
    sx = c.b.shape(x)
    axis %= len(sx)
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < -sx[axis] or idx.max() >= sx[axis]):
        raise c.error(f"indices out of range for axis {axis} of shape {list(sx)}")
    flat = torch.as_tensor(idx.ravel() % sx[axis])
    out = (*sx[:axis], *idx.shape, *sx[axis + 1:])
    return c.add(Affine(lambda v: v.index_select(axis + 1, flat).reshape(v.shape[0], *out), mixing=False,
                        terms=0), [x])


def _gather(c: _Ctx) -> int:
    return _select(c, c.act(), int(c.at.get("axis", 0)), c.const(1))


def _slice(c: _Ctx) -> int:
    x = c.act()
    sx = c.b.shape(x)
    starts, ends = c.ints("starts", 1), c.ints("ends", 2)
    axes = c.ints("axes", 3 if len(c.xs) > 3 else None, default=list(range(len(starts))))
    steps = c.ints("steps", 4 if len(c.xs) > 4 else None, default=[1] * len(starts))
    node = x
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= len(sx)
        node = _select(c, node, a, np.arange(sx[a])[slice(s, e, st)])
    return node


def _identity(c: _Ctx) -> int:
    if c.op == "Dropout":
        mode = c.const(2) if len(c.xs) > 2 else None
        if mode is not None and bool(mode):
            raise c.error("training_mode=True is not supported")
        if len([o for o in c.node.output if o]) > 1:
            raise c.error("the mask output is not supported")
    if c.op == "Cast" and int(c.at["to"]) not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise c.error("only casts between floating point types are supported")
    return _reshape_to(c, c.act(), c.b.shape(c.act()))


def _window_attrs(*extra):
    return frozenset({"auto_pad", "kernel_shape", "pads", "strides", *extra})


# op type -> (handler, attributes it understands)
OPS = {
    "Gemm": (_gemm, frozenset({"alpha", "beta", "transA", "transB"})),
    "MatMul": (_matmul_node, frozenset()),
    "Add": (_binary, frozenset()),
    "Sub": (_binary, frozenset()),
    "Mul": (_binary, frozenset()),
    "Div": (_binary, frozenset()),
    "Neg": (_neg, frozenset()),
    "Conv": (_conv, _window_attrs("dilations", "group")),
    "BatchNormalization": (_batchnorm, frozenset({"epsilon", "momentum", "training_mode", "spatial"})),
    "Relu": (_relu, frozenset()),
    "Sigmoid": (_sshape, frozenset()),
    "Tanh": (_sshape, frozenset()),
    "AveragePool": (_avgpool, _window_attrs("ceil_mode", "count_include_pad", "dilations")),
    "GlobalAveragePool": (_global_avgpool, frozenset()),
    "MaxPool": (_maxpool, _window_attrs("ceil_mode", "dilations", "storage_order")),
    "Pad": (_pad, frozenset({"mode", "pads", "value"})),
    "Flatten": (_flatten, frozenset({"axis"})),
    "Reshape": (_reshape, frozenset({"allowzero"})),
    "Transpose": (_transpose, frozenset({"perm"})),
    "Squeeze": (_squeeze, frozenset({"axes"})),
    "Unsqueeze": (_squeeze, frozenset({"axes"})),
    "Concat": (_concat, frozenset({"axis"})),
    "Gather": (_gather, frozenset({"axis"})),
    "Slice": (_slice, frozenset({"starts", "ends", "axes"})),
    "Identity": (_identity, frozenset()),
    "Dropout": (_identity, frozenset({"ratio", "seed", "is_test"})),
    "Cast": (_identity, frozenset({"to", "saturate"})),
}


# --------------------------------------------------------------------------- reading a model


def _fold(node, args: list[np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    try:
        feeds = {name: a for name, a in zip(node.input, args) if name}
        return ReferenceEvaluator(node).run(None, feeds)
    except Exception as exc:
        raise UnsupportedModel(
            f"ONNX {node.op_type} node '{node.name}': cannot fold its constant inputs ({exc})") from exc


def load_onnx(path: str | Path) -> Dag:
    """The :class:`Dag` of an ONNX model with one input and one output (float64).

    Raises :class:`UnsupportedModel` naming the first operator, attribute or structure it cannot
    read, and ``ValueError`` if the file is not a readable ONNX model.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, google.protobuf errors, OSError, ...
        raise ValueError(f"not a readable ONNX model ({type(exc).__name__})") from exc
    g = model.graph
    b = _Builder()
    for t in g.initializer:
        b.values[t.name] = numpy_helper.to_array(t)
    inputs = [i for i in g.input if i.name not in b.values]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedModel("the model must have exactly one input and one output")
    dims = tuple(d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim)
    b.nodes.append(Node(Input(), (), dims, inputs[0].name))
    b.values[inputs[0].name] = 0
    for node in g.node:
        xs = []
        for name in node.input:
            if name and name not in b.values:
                raise UnsupportedModel(f"ONNX {node.op_type} node '{node.name}' reads '{name}', which no node produces")
            xs.append(b.values[name] if name else None)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Shape" and isinstance(xs[0], int):
            shape = np.array(b.shape(xs[0]), dtype=np.int64)
            b.values[node.output[0]] = shape[attrs.get("start", 0): attrs.get("end", len(shape))]
            continue
        if not any(isinstance(x, int) for x in xs):
            for name, value in zip(node.output, _fold(node, xs)):
                b.values[name] = np.asarray(value)
            continue
        if node.op_type not in OPS:
            raise UnsupportedModel(f"unsupported ONNX operator {node.op_type} (node '{node.name}')")
        handler, known = OPS[node.op_type]
        unknown = sorted(set(attrs) - known)
        if unknown:
            raise UnsupportedModel(f"ONNX {node.op_type} node '{node.name}': unsupported attribute {unknown[0]}")
        try:
            b.values[node.output[0]] = handler(_Ctx(b, node, xs, attrs))
        except RuntimeError as exc:  # torch's message on inputs that do not fit (shapes)
            raise UnsupportedModel(f"ONNX {node.op_type} node '{node.name}': {exc}") from exc
    out = b.values.get(g.output[0].name)
    if not isinstance(out, int):
        raise UnsupportedModel("the model output does not depend on its input")
    return _prune(Dag(b.nodes, out))


def _prune(dag: Dag) -> Dag:
    """Only the nodes the output depends on, renumbered (still in topological order)."""
    need = {dag.output}
    for i in range(dag.output, -1, -1):
        if i in need:
            need.update(dag.nodes[i].inputs)
    need.add(0)
    keep = sorted(need)
    new_id = {old: new for new, old in enumerate(keep)}
    nodes = [Node(n.op, tuple(new_id[j] for j in n.inputs), n.shape, n.name) for n in (dag.nodes[i] for i in keep)]
    return Dag(nodes, new_id[dag.output])

