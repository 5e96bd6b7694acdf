"""A sound bound on how far onnxruntime's float32 outputs of an ONNX model can be from the exact ones.

The verifiers prove margins in float64 about the model's exact (real-arithmetic) function of its
float32 weights; the deployed model is that ONNX file run by onnxruntime in float32. An ``unsat``
is only sound for the deployed model when each proven margin ``c @ y - rhs`` exceeds the bound
:func:`row_error` gives for ``c``. Hand-written because no library bounds onnxruntime's rounding;
it walks the ONNX nodes (not the bound graph) since the rounding happens per ONNX op.

Derivation (standard forward error analysis, Higham, *Accuracy and Stability of Numerical
Algorithms*, ch. 3), with ``u = 2^-24`` and ``gamma_k = k u / (1 - k u)``:

1. Rounding of one op, on the float32 inputs it got. A dot product plus bias of ``n`` terms,
   summed in float32 in *any* order, blocked or with FMA, is within
   ``r = gamma_(n+1+EXTRA) (|w|.|x^| + |b|)`` of its exact value; ``n`` is a Gemm row's length or a
   Conv's ``C_in kH kW``, and ``EXTRA`` roundings cover what onnxruntime's graph optimiser folds
   into the weights (Gemm ``alpha``/``beta``, a following Add, Mul or BatchNormalization fused into
   a Conv or Gemm). One elementwise Add / Sub / Mul / Div by a constant rounds once:
   ``r = u |out^|``. BatchNormalization ``a (x - mean) + bias`` (``a = scale / sqrt(var + eps)``,
   itself rounded) is within ``gamma_BN_ROUNDINGS (|a| (|x^| + |mean|) + |bias|)``. ``|x^|`` bounds
   the float32 input: interval bounds of the exact activation over the box, plus its error bound.
   Each underflowing (or flushed) operation adds at most ``2^-126``, counted per term.
2. Propagation. ReLU changes an error ``z^ - z`` into ``d (z^ - z)`` with ``d`` in ``[0, 1]``,
   exactly 1 where both ``z`` and ``z^`` are surely positive, 0 where both are surely ``<= 0``.
   So the output error is ``sum_k J_k r_k``-bounded, ``J_k`` the product of the later linear maps
   and those ``d``: for a row ``c`` it is bounded by ``sum_k |c J_k| r_k``, with ``c J_k``
   propagated backwards as an interval vector (signed weights: cancellation is kept, unlike a
   product of ``|W|``). The error bound of each ReLU's input (which decides its ``d``) is the same
   backward bound with the identity as ``c``.

Conv is assumed to be computed as sums of products (im2col or direct, as onnxruntime's CPU kernels
do), not by Winograd or FFT transforms, which this bound does not cover.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

U = 2.0**-24  # float32 unit roundoff
TINY = 2.0**-126  # absolute error of an underflowing or flushed operation
EXTRA = 4  # roundings onnxruntime's constant folding may add to a Gemm / Conv's weights and bias
BN_ROUNDINGS = 8  # roundings in BatchNormalization: var + eps, sqrt, scale / ., x - mean, * a, + bias
CHUNK = 1024  # identity rows propagated backwards at once


def gamma(k: int) -> float:
    if k * U >= 1:
        raise ValueError(f"a dot product of {k} terms has no float32 error bound")
    return k * U / (1 - k * U)


@dataclass
class _Step:
    """One op as the backward pass sees it: a linear map (``back``/``back_abs`` map a batch of rows at
    its output to rows at its input), the rounding it adds at its output, and for a ReLU the range
    ``[d_lo, d_hi]`` of its error gain."""

    back: Callable
    back_abs: Callable
    rounding: np.ndarray | None = None  # at the output, flat
    d_lo: np.ndarray | None = None
    d_hi: np.ndarray | None = None


def _backward(steps: list[_Step], rows: np.ndarray) -> np.ndarray:
    """``sum_k |c J_k| r_k`` for each row ``c`` (flat, at the output of ``steps[-1]``)."""
    lo, hi = rows.copy(), rows.copy()
    total = np.zeros(len(rows))
    for s in reversed(steps):
        if s.rounding is not None:
            total += np.maximum(np.abs(lo), np.abs(hi)) @ s.rounding
        if s.d_lo is not None:
            ends = [lo * s.d_lo, lo * s.d_hi, hi * s.d_lo, hi * s.d_hi]
            lo, hi = np.minimum.reduce(ends), np.maximum.reduce(ends)
        else:
            mid, rad = s.back((lo + hi) / 2), s.back_abs((hi - lo) / 2)
            lo, hi = mid - rad, mid + rad
    return total


def _torch_back(fn, in_shape):
    """Rows at the output of the linear map ``fn`` (on batches of ``in_shape``) -> rows at its input."""

    def back(rows: np.ndarray) -> np.ndarray:
        x = torch.zeros((len(rows), *in_shape[1:]), dtype=torch.float64, requires_grad=True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.as_tensor(rows).reshape(y.shape))
        return g.reshape(len(rows), -1).numpy()

    return back


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Analysis:
    """Walks the ONNX chain once: interval bounds, per-op roundings and ReLU gains."""

    def __init__(self, onnx_path: str | Path, lower: np.ndarray, upper: np.ndarray, relu_bounds=None):
        import onnx
        from onnx import numpy_helper

        from vsbench.bounds.graph import UnsupportedModel
        from vsbench.onnx_io import check_finite

        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
            raise ValueError("the input box has non-finite bounds")
        check_finite(onnx_path)
        g = onnx.load(str(onnx_path)).graph
        consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
        inp = next(i for i in g.input if i.name not in consts)
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim] or [1]
        if math.prod(dims) != lower.size:
            raise ValueError(f"the box has {lower.size} inputs, the model {math.prod(dims)}")
        self.steps: list[_Step] = []
        relus: list[str] = []
        current = inp.name
        lo, hi, err = lower.reshape(dims), upper.reshape(dims), np.zeros(dims)
        for node in g.node:
            op, at = node.op_type, _attrs(node)
            if op == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(at["value"]).astype(np.float64)
                continue
            cvals = [consts[i] for i in node.input if i in consts]
            if [i for i in node.input if i and i not in consts] != [current]:
                raise UnsupportedModel(f"{op} node '{node.name}' is not part of a sequential chain")
            mag = np.maximum(np.abs(lo), np.abs(hi)) + err  # of the float32 input
            if op in ("Flatten", "Reshape"):
                shape = [1, -1] if op == "Flatten" else [int(s) for s in cvals[0]]
                shape = [lo.shape[i] if s == 0 else s for i, s in enumerate(shape)]
                lo, hi, err = lo.reshape(shape), hi.reshape(shape), err.reshape(shape)
            elif op == "Relu":
                if relu_bounds is not None:  # tighter bounds of the exact pre-activation
                    l, u = (np.asarray(b, dtype=np.float64).reshape(lo.shape) for b in relu_bounds[len(relus)])
                    lo, hi = np.maximum(lo, l), np.minimum(hi, u)
                relus.append(node.name)
                err = np.minimum(err, self._error(np.eye(err.size)).reshape(err.shape))
                d_lo = ((lo - err) > 0).astype(np.float64).ravel()
                d_hi = ((hi + err) > 0).astype(np.float64).ravel()
                self.steps.append(_Step(None, None, d_lo=d_lo, d_hi=d_hi))
                lo, hi, err = np.maximum(lo, 0), np.maximum(hi, 0), np.where(hi + err > 0, err, 0.0)
            elif op in ("Gemm", "MatMul", "Conv"):
                fn, fn_abs, bias, n = self._affine(op, at, cvals, lo.shape)
                x = torch.as_tensor
                mid = fn(x((lo + hi) / 2)).numpy() + bias
                rad = fn_abs(x((hi - lo) / 2)).numpy()
                r = gamma(n + 1 + EXTRA) * (fn_abs(x(mag)).numpy() + np.abs(bias))
                r += TINY * (fn_abs(x(np.ones_like(lo))).numpy() + n + 1)
                self.steps.append(_Step(_torch_back(fn, lo.shape), _torch_back(fn_abs, lo.shape), r.ravel()))
                lo, hi, err = mid - rad, mid + rad, fn_abs(x(err)).numpy() + r
            elif op in ("Add", "Sub", "Mul", "Div"):
                c = cvals[0]
                if op == "Div" and node.input[0] != current:
                    raise UnsupportedModel("Div of a constant by the activation is not affine")
                scale = {"Add": 1.0, "Sub": 1.0 if node.input[0] == current else -1.0, "Mul": c, "Div": 1 / c}[op]
                shift = {"Add": c, "Sub": -c if node.input[0] == current else c}.get(op, 0.0)
                a, b = np.broadcast_to(scale, lo.shape), np.broadcast_to(shift, lo.shape)
                lo, hi = np.minimum(a * lo, a * hi) + b, np.maximum(a * lo, a * hi) + b
                r = U * (np.abs(a) * mag + np.abs(b)) + TINY
                self._scale(a, r)
                err = np.abs(a) * err + r
            elif op == "BatchNormalization":
                scale, bias, mean, var = (c.reshape((-1,) + (1,) * (lo.ndim - 2)) for c in cvals[:4])
                a = np.broadcast_to(scale / np.sqrt(var + at.get("epsilon", 1e-5)), lo.shape)
                ends = (a * (lo - mean) + bias, a * (hi - mean) + bias)
                lo, hi = np.minimum(*ends), np.maximum(*ends)
                r = gamma(BN_ROUNDINGS) * (np.abs(a) * (mag + np.abs(mean)) + np.abs(bias)) + TINY
                self._scale(a, r)
                err = np.abs(a) * err + r
            else:
                raise UnsupportedModel(f"no float32 error bound for ONNX operator {op}")
            current = node.output[0]
        if current != g.output[0].name:
            raise UnsupportedModel("the graph output is not the end of the sequential chain")
        self.n_out = lo.size

    def _scale(self, a: np.ndarray, r: np.ndarray) -> None:
        a = a.ravel()
        abs_a = np.abs(a)
        self.steps.append(_Step(lambda rows: rows * a, lambda rows: rows * abs_a, r.ravel()))

    @staticmethod
    def _affine(op: str, at: dict, cvals: list, in_shape):
        """``(fn, fn_abs, bias, n_terms)`` of a Gemm / MatMul / Conv (``fn`` without the bias)."""
        from vsbench.bounds.graph import UnsupportedModel

        W = torch.as_tensor(cvals[0])
        if op == "Conv":
            pads = at.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3] or len(in_shape) != 4:
                raise UnsupportedModel("Conv with asymmetric padding or a non-NCHW input is unsupported")
            kw = {"stride": tuple(at.get("strides", [1, 1])), "padding": (pads[0], pads[1]),
                  "dilation": tuple(at.get("dilations", [1, 1])), "groups": at.get("group", 1)}
            b = cvals[1] if len(cvals) > 1 else np.zeros(W.shape[0])
            return (lambda x: F.conv2d(x, W, None, **kw), lambda x: F.conv2d(x, W.abs(), None, **kw),
                    b.reshape(-1, 1, 1), math.prod(W.shape[1:]))
        if op == "Gemm":
            if at.get("transA", 0):
                raise UnsupportedModel("Gemm with transA is unsupported")
            W = (W.T if at.get("transB", 0) else W) * at.get("alpha", 1.0)
            b = cvals[1] * at.get("beta", 1.0) if len(cvals) > 1 else 0.0
        else:
            b = 0.0
        return lambda x: x @ W, lambda x: x @ W.abs(), np.broadcast_to(b, (W.shape[1],)), W.shape[0]

    def _error(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([_backward(self.steps, rows[i:i + CHUNK]) for i in range(0, len(rows), CHUNK)])


def row_error(onnx_path: str | Path, lower: np.ndarray, upper: np.ndarray, rows: np.ndarray,
              relu_bounds=None) -> np.ndarray:
    """For each row ``c`` of ``rows`` ``(k, n_out)``, a bound on ``|c @ (y^ - y)|`` over every float32
    input in the box ``[lower, upper]`` (flat): ``y^`` the model's output as onnxruntime computes it
    in float32, ``y`` the exact one. ``relu_bounds``: optional sound ``(l, u)`` of the exact input of
    each ReLU, in order (e.g. CROWN's), tightening the interval bounds this walk computes. Raises ``ValueError`` for non-finite weights or bounds and
    :class:`~vsbench.bounds.graph.UnsupportedModel` for an op it cannot bound."""
    analysis = _Analysis(onnx_path, lower, upper, relu_bounds)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, analysis.n_out)
    return analysis._error(rows)


def dag_row_error(dag, lower: np.ndarray, upper: np.ndarray, rows: np.ndarray, node_bounds=None) -> np.ndarray:
    """:func:`row_error` for a :class:`~vsbench.bounds.dag.Dag` (any graph the ONNX op table reads):
    :func:`vsbench.bounds.dag_bounds.float32_error` over ``node_bounds`` (the Dag's CROWN
    intermediate bounds over the box when None)."""
    from vsbench.bounds.dag_bounds import float32_error, intermediate_bounds

    lo, hi = (torch.as_tensor(np.asarray(b, dtype=np.float64))[None] for b in (lower, upper))
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("the input box has non-finite bounds")
    if node_bounds is None:
        node_bounds = intermediate_bounds(dag, lo, hi)
    rows = torch.as_tensor(np.asarray(rows, dtype=np.float64)).reshape(-1, dag.n_out)
    err = float32_error(dag, node_bounds, rows)
    if not torch.isfinite(err).all():
        raise ValueError("the float32 error bound is not finite (non-finite weights?)")
    return err.numpy()
