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

3. Rounding as slack. Instead of a separate error bound, the same per-op roundings summed per
   merged affine layer (:meth:`ChainError.layer_rounding`) can widen that layer's bias: bound
   engines then bound the float32 model itself, and a margin loses only ``sum_k |Lambda_k| r_k``
   with their own (CROWN) coefficients. Its magnitudes ``|x^|`` come from the exact network's
   bounds plus the forward error, or from bounds that already hold for the float32 values.

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
CHUNK = 1024  # row vectors propagated backwards at once (more when there are more boxes: one row each)


def gamma(k: int) -> float:
    if k * U >= 1:
        raise ValueError(f"a dot product of {k} terms has no float32 error bound")
    return k * U / (1 - k * U)


@dataclass
class _Step:
    """One op as the backward pass sees it: a linear map (``back``/``back_abs`` map rows ``(N, n_out)``
    at its output to rows ``(N, n_in)`` at its input, flat, the same for every box), the rounding it
    adds at its output, and for a ReLU the range ``[d_lo, d_hi]`` of its error gain (``(B, n)`` each)."""

    back: Callable | None = None
    back_abs: Callable | None = None
    rounding: torch.Tensor | None = None  # (B, n) at the output, flat
    d_lo: torch.Tensor | None = None
    d_hi: torch.Tensor | None = None


def _backward(steps: list[_Step], rows: torch.Tensor) -> torch.Tensor:
    """``(B, R)``: ``sum_k |c J_k| r_k`` for each box ``b`` and each row ``c`` of ``rows[b]`` (``(B, R, n)``,
    flat, at the output of ``steps[-1]``)."""
    B, R = rows.shape[:2]
    mid, rad = rows, rows.new_zeros(())
    total = rows.new_zeros(B, R)
    for s in reversed(steps):
        if s.rounding is not None:
            total += torch.einsum("brn,bn->br", mid.abs() + rad, s.rounding)
        if s.d_lo is not None:  # gains in {0, 1}: [lo, hi] * [d_lo, d_hi]
            lo, hi = mid - rad, mid + rad
            sure, live = s.d_lo[:, None], s.d_hi[:, None]
            lo = torch.where(live, torch.where(sure, lo, lo.clamp(max=0)), 0.0)
            hi = torch.where(live, torch.where(sure, hi, hi.clamp(min=0)), 0.0)
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
        else:
            rad = s.back_abs(rad.expand_as(mid).reshape(B * R, -1)).reshape(B, R, -1)
            mid = s.back(mid.reshape(B * R, -1)).reshape(B, R, -1)
    return total


def _error(steps: list[_Step], rows: torch.Tensor | Callable, R: int, B: int) -> torch.Tensor:
    """:func:`_backward` in chunks of the ``R`` rows per box (at most ``CHUNK`` row vectors over all ``B``
    boxes at once, or one row per box); ``rows``: ``(B, R, n)`` or a function ``(i, j) -> rows[:, i:j]``."""
    step = max(1, CHUNK // B)
    part = rows if callable(rows) else lambda i, j: rows[:, i:j]
    return torch.cat([_backward(steps, part(i, i + step)) for i in range(0, R, step)], 1)


def _torch_back(fn, in_shape):
    """Rows at the output of the linear map ``fn`` (on batches of ``in_shape``) -> rows at its input."""

    def back(rows: torch.Tensor) -> torch.Tensor:
        x = torch.zeros((len(rows), *in_shape[1:]), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            y = fn(x)
            (g,) = torch.autograd.grad(y, x, rows.reshape(y.shape))
        return g.reshape(len(rows), -1)

    return back


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Affine:
    """A Gemm / MatMul / Conv: ``fn`` without the bias, its ``|W|`` twin, backward maps, the bias,
    the number of terms of each output's dot product and the underflow term ``TINY (|W| 1 + n + 1)``."""

    fn: Callable
    fn_abs: Callable
    back: Callable
    back_abs: Callable
    bias: torch.Tensor
    terms: int
    tiny: torch.Tensor


@dataclass
class _Scale:
    """An elementwise affine op ``a x + shift`` (Add / Sub / Mul / Div by a constant, BatchNormalization)
    with rounding ``k (|a| (|x^| + extra) + const) + TINY``."""

    a: torch.Tensor
    shift: torch.Tensor
    k: float
    extra: torch.Tensor | float
    const: torch.Tensor


class ChainError:
    """The float32 error model of a sequential ONNX chain, read once and evaluated over batches of
    boxes (see the module docstring). It follows the ONNX ops as onnxruntime runs them (a MatMul and
    the Add after it round separately), whatever merging the bound engines do."""

    def __init__(self, onnx_path: str | Path):
        import onnx
        from onnx import numpy_helper

        from vsbench.bounds.graph import UnsupportedModel
        from vsbench.onnx_io import check_finite

        check_finite(onnx_path)
        g = onnx.load(str(onnx_path)).graph
        consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
        inp = next(i for i in g.input if i.name not in consts)
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim] or [1]
        self.in_shape, self.n_in = tuple(dims), math.prod(dims)
        if dims[0] != 1:
            raise UnsupportedModel("the float32 error bound needs a batch dimension of 1")
        self.ops: list = []  # per-sample target shape (reshape), "relu", _Affine or _Scale
        shape, current = self.in_shape, inp.name
        for node in g.node:
            op, at = node.op_type, _attrs(node)
            if op == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(at["value"]).astype(np.float64)
                continue
            cvals = [consts[i] for i in node.input if i in consts]
            if [i for i in node.input if i and i not in consts] != [current]:
                raise UnsupportedModel(f"{op} node '{node.name}' is not part of a sequential chain")
            if op in ("Flatten", "Reshape"):
                if op == "Flatten" and at.get("axis", 1) != 1:
                    raise UnsupportedModel("Flatten with an axis other than 1 is unsupported")
                spec = [1, -1] if op == "Flatten" else [int(s) for s in cvals[0]]
                spec = [shape[i] if s == 0 else s for i, s in enumerate(spec)]
                new = np.empty(shape).reshape(spec).shape
                if new[0] != 1:
                    raise UnsupportedModel(f"{op} node '{node.name}' changes the batch dimension")
                self.ops.append(new)
                shape = new
            elif op == "Relu":
                self.ops.append("relu")
            elif op in ("Gemm", "MatMul", "Conv"):
                if node.input[0] != current:
                    raise UnsupportedModel(f"{op} node '{node.name}' takes the activation as its second operand")
                aff = self._affine(op, at, cvals, shape)
                self.ops.append(aff)
                shape = tuple(aff.fn(torch.zeros(shape, dtype=torch.float64)).shape)
            elif op in ("Add", "Sub", "Mul", "Div"):
                c, first = cvals[0], node.input[0] == current
                if op == "Div" and not first:
                    raise UnsupportedModel("Div of a constant by the activation is not affine")
                scale = c if op == "Mul" else 1 / c if op == "Div" else -1.0 if op == "Sub" and not first else 1.0
                shift = c if op == "Add" or (op == "Sub" and not first) else -c if op == "Sub" else 0.0
                a, b = (torch.as_tensor(np.broadcast_to(v, shape).copy()) for v in (scale, shift))
                self.ops.append(_Scale(a, b, U, 0.0, b.abs()))
            elif op == "BatchNormalization":
                scale, bias, mean, var = (c.reshape((-1,) + (1,) * (len(shape) - 2)) for c in cvals[:4])
                a = scale / np.sqrt(var + at.get("epsilon", 1e-5))
                a, shift, extra, const = (torch.as_tensor(np.broadcast_to(v, shape).copy())
                                          for v in (a, bias - a * mean, np.abs(mean), np.abs(bias)))
                self.ops.append(_Scale(a, shift, gamma(BN_ROUNDINGS), extra, const))
            else:
                raise UnsupportedModel(f"no float32 error bound for ONNX operator {op}")
            current = node.output[0]
        if current != g.output[0].name:
            raise UnsupportedModel("the graph output is not the end of the sequential chain")
        self.n_out = math.prod(shape)

    @staticmethod
    def _affine(op: str, at: dict, cvals: list, in_shape) -> _Affine:
        from vsbench.bounds.graph import UnsupportedModel

        W = torch.as_tensor(cvals[0])
        if op == "Conv":
            pads = at.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3] or len(in_shape) != 4:
                raise UnsupportedModel("Conv with asymmetric padding or a non-NCHW input is unsupported")
            kw = {"stride": tuple(at.get("strides", [1, 1])), "padding": (pads[0], pads[1]),
                  "dilation": tuple(at.get("dilations", [1, 1])), "groups": at.get("group", 1)}
            b = torch.as_tensor(cvals[1] if len(cvals) > 1 else np.zeros(W.shape[0])).reshape(-1, 1, 1)
            fn, fn_abs = (lambda x: F.conv2d(x, W, None, **kw)), (lambda x: F.conv2d(x, W.abs(), None, **kw))
            back, back_abs, n = _torch_back(fn, in_shape), _torch_back(fn_abs, in_shape), math.prod(W.shape[1:])
        else:
            if op == "Gemm":
                if at.get("transA", 0) or len(in_shape) != 2:
                    raise UnsupportedModel("Gemm with transA or a non-2D input is unsupported")
                W = (W.T if at.get("transB", 0) else W) * at.get("alpha", 1.0)
                b = torch.as_tensor(cvals[1] * at.get("beta", 1.0) if len(cvals) > 1 else 0.0)
            else:
                b = torch.zeros(())
            if W.ndim != 2:
                raise UnsupportedModel(f"{op} with a {W.ndim}-D weight is unsupported")
            fn, fn_abs = (lambda x: x @ W), (lambda x: x @ W.abs())
            back, back_abs, n = _torch_back(fn, in_shape), _torch_back(fn_abs, in_shape), W.shape[0]
        ones = torch.ones(in_shape, dtype=torch.float64)
        b = b + torch.zeros_like(fn(ones))[0]  # broadcast to one sample's output
        return _Affine(fn, fn_abs, back, back_abs, b, n, TINY * (fn_abs(ones)[0] + n + 1))

    def __call__(self, lower: torch.Tensor, upper: torch.Tensor, rows: torch.Tensor, relu_bounds=None) -> torch.Tensor:
        """``(B, R)``: for each box ``[lower[b], upper[b]]`` (``(B, n_in)``) and row ``c`` of ``rows``
        ``(R, n_out)``, a bound on ``|c @ (y^ - y)|`` over every float32 input in the box (``y^`` the
        output as onnxruntime computes it in float32, ``y`` the exact one). ``relu_bounds``: optional
        sound ``(l, u)`` (``(B, n_k)`` each) of the exact input of each ReLU over each box, in order
        (e.g. CROWN's), tightening the interval bounds this walk computes."""
        steps, _ = self._walk(lower, upper, relu_bounds)
        B = len(lower)
        rows = rows.to(torch.float64).reshape(-1, self.n_out).expand(B, -1, -1)
        return _error(steps, rows, rows.shape[1], B)

    def layer_rounding(self, lower: torch.Tensor, upper: torch.Tensor, relu_bounds=None,
                       float32_bounds: bool = False) -> list[torch.Tensor]:
        """Per ReLU, then for the output: ``(B, n_k)`` bounds ``r`` on the rounding of the affine ops
        between the previous ReLU and this one, as seen at this one's input: the float32 pre-activation
        is ``z^ = L(a^) + d`` with ``|d| <= r``, ``L`` those ops in exact arithmetic and ``a^`` the
        float32 activation they read. Bound engines that widen each layer's bias by ``r`` bound the
        float32 model itself. Same arguments as :meth:`__call__`; with ``float32_bounds`` the
        ``relu_bounds`` bound the float32 pre-activations ``z^`` (e.g. such engines' own bounds), and
        no error needs carrying from layer to layer (cheaper and tighter)."""
        return self._walk(lower, upper, relu_bounds, float32_bounds)[1]

    def _walk(self, lower, upper, relu_bounds, float32_bounds=False):
        """The forward interval walk over the boxes: the backward :class:`_Step` list and
        :meth:`layer_rounding`'s per-layer roundings (``float32_bounds``: see there; the steps are then
        not for :func:`_backward`)."""
        B = len(lower)
        lo = lower.to(torch.float64).reshape(B, *self.in_shape[1:])
        hi = upper.to(torch.float64).reshape(B, *self.in_shape[1:])
        err = torch.zeros_like(lo)
        layer = torch.zeros_like(lo)  # rounding since the last ReLU, at the current op's output
        steps: list[_Step] = []
        layers: list[torch.Tensor] = []
        k = 0
        for op in self.ops:
            mag = torch.maximum(lo.abs(), hi.abs()) + (layer if float32_bounds else err)  # of the float32 input
            if isinstance(op, tuple):
                lo, hi, err, layer = (t.reshape(B, *op[1:]) for t in (lo, hi, err, layer))
            elif op == "relu":
                if float32_bounds:  # lo, hi: the exact map of the float32 input; z^ is within ``layer``
                    lo, hi = lo - layer, hi + layer
                if relu_bounds is not None:  # tighter bounds of the pre-activation
                    l, u = (b.to(torch.float64).reshape(lo.shape) for b in relu_bounds[k])
                    lo, hi = torch.maximum(lo, l), torch.minimum(hi, u)
                k += 1
                layers.append(layer.flatten(1))
                layer = torch.zeros_like(layer)
                if float32_bounds:  # lo, hi bound the float32 values: nothing to carry
                    lo, hi = lo.clamp(min=0), hi.clamp(min=0)
                    continue
                err = self._refine(steps, lo, hi, err)
                steps.append(_Step(d_lo=((lo - err) > 0).flatten(1), d_hi=((hi + err) > 0).flatten(1)))
                lo, hi, err = lo.clamp(min=0), hi.clamp(min=0), torch.where(hi + err > 0, err, 0.0)
            elif isinstance(op, _Affine):
                mid = op.fn((lo + hi) / 2) + op.bias
                rad = op.fn_abs((hi - lo) / 2)
                r = gamma(op.terms + 1 + EXTRA) * (op.fn_abs(mag) + op.bias.abs()) + op.tiny
                steps.append(_Step(op.back, op.back_abs, r.flatten(1)))
                lo, hi, err, layer = mid - rad, mid + rad, op.fn_abs(err) + r, op.fn_abs(layer) + r
            else:
                a = op.a
                ends = (a * lo + op.shift, a * hi + op.shift)
                lo, hi = torch.minimum(*ends), torch.maximum(*ends)
                r = op.k * (a.abs() * (mag + op.extra) + op.const) + TINY
                a_flat = a.flatten()
                steps.append(_Step(lambda v, a=a_flat: v * a, lambda v, a=a_flat: v * a.abs(), r.flatten(1)))
                err, layer = a.abs() * err + r, a.abs() * layer + r
        layers.append(layer.flatten(1))
        return steps, layers

    @staticmethod
    def _refine(steps: list[_Step], lo, hi, err):
        """``err`` at a ReLU's input, tightened by the backward bound (the identity as rows) for the
        neurons whose error gain the forward bound leaves unsure (those it changes)."""
        l, u, e = lo.flatten(1), hi.flatten(1), err.flatten(1)
        unsure = ((l > 0) & (l - e <= 0)) | ((u <= 0) & (u + e > 0))
        m = int(unsure.sum(1).max())
        if not m:
            return err
        idx = unsure.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :m]  # each box's own

        def rows(i, j):  # one-hot rows of the neurons idx[:, i:j]
            return torch.zeros(len(e), idx[:, i:j].shape[1], e.shape[1], dtype=torch.float64).scatter_(
                2, idx[:, i:j, None], 1.0)

        old = e.gather(1, idx)
        new = torch.where(unsure.gather(1, idx), torch.minimum(old, _error(steps, rows, m, len(e))), old)
        return e.scatter(1, idx, new).reshape(err.shape)


def row_error(onnx_path: str | Path, lower: np.ndarray, upper: np.ndarray, rows: np.ndarray,
              relu_bounds=None) -> np.ndarray:
    """For each row ``c`` of ``rows`` ``(k, n_out)``, a bound on ``|c @ (y^ - y)|`` over every float32
    input in the box ``[lower, upper]`` (flat): :class:`ChainError` over one box. ``relu_bounds``:
    optional sound ``(l, u)`` of the exact input of each ReLU, in order. Raises ``ValueError`` for
    non-finite weights or bounds and :class:`~vsbench.bounds.graph.UnsupportedModel` for an op it
    cannot bound."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ValueError("the input box has non-finite bounds")
    model = ChainError(onnx_path)
    if lower.size != model.n_in:
        raise ValueError(f"the box has {lower.size} inputs, the model {model.n_in}")
    rb = None if relu_bounds is None else [(torch.as_tensor(np.asarray(l))[None], torch.as_tensor(np.asarray(u))[None])
                                           for l, u in relu_bounds]
    rows = torch.as_tensor(np.asarray(rows, dtype=np.float64))
    err = model(torch.as_tensor(lower)[None], torch.as_tensor(upper)[None], rows, rb)[0]
    return err.numpy()


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


def layer_slack(error: ChainError, dense: list, lower: torch.Tensor, upper: torch.Tensor) -> list | None:
    """Per layer of the chain ``dense`` (``[(W, b), ...]``, the merged affine layers of ``error``'s
    model), its :meth:`ChainError.layer_rounding` over the box ``(1, n_in)`` from the exact network's
    CROWN bounds, each ``(n_k,)``: the slack (:meth:`~vsbench.bounds.graph.Graph.from_dense`) with
    which the bound engines, BaB and the MILP bound the float32 model itself; None when the ONNX ops
    do not line up with the layers."""
    from vsbench.bounds.crown import crown_bounds
    from vsbench.bounds.graph import Graph

    relu_bounds = crown_bounds(Graph.from_dense(dense), lower, upper)[:-1]
    slack = [r[0] for r in error.layer_rounding(lower, upper, relu_bounds)]
    if [len(r) for r in slack] != [len(b) for _, b in dense]:
        return None
    return slack
