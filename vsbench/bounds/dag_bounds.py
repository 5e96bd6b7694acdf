"""IBP, CROWN and alpha-CROWN over a :class:`~vsbench.bounds.dag.Dag`, batched over input boxes.

Tensors keep their node shapes (``(B, *shape)``; CROWN coefficients ``(B, S, *shape)``), so a
convolution is bounded backwards by its transposed convolution and never densified. At a fork
(residual join) the backward coefficients of the consumers are summed. ReLU uses CROWN's triangle
relaxation (:func:`vsbench.bounds.crown.relax`); MaxPool the standard one: below, the window's input
with the highest lower bound; above, that same input when its lower bound beats every other upper
bound in the window (the max is exact), else the window's highest upper bound (a constant). Sigmoid
and Tanh over ``[l, u]``: two parallel lines of the smaller end slope ``s``, through ``(l, f(l))``
below and ``(u, f(u))`` above (``f(x) - s x`` is non-decreasing on ``[l, u]``, as no slope there is
below ``s``); simple, and tight on the narrow ranges a robustness property gives.

Intermediate bounds (:func:`intermediate_bounds`): IBP for every node, then CROWN for the inputs of
ReLUs (only their unstable neurons) and of MaxPools, node by node in topological order, in chunks of
rows sized to a memory budget.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .alpha import optimize
from .crown import relax
from .dag import SSHAPE_ERROR, Affine, Dag, MaxPool, Relu, SShape

Bounds = list  # per node: (l, u) of shape (B, *node.shape), or None where not computed
ROW_BUDGET = 1 << 24  # elements of one coefficient tensor (rows x node size) per backward chunk


def _ibp_node(dag: Dag, i: int, bounds: Bounds):
    n = dag.nodes[i]
    ins = [bounds[j] for j in n.inputs]
    if isinstance(n.op, Relu):
        l, u = ins[0]
        return l.clamp(min=0), u.clamp(min=0)
    if isinstance(n.op, (MaxPool, SShape)):  # monotone
        return n.op.forward(ins[0][0]), n.op.forward(ins[0][1])
    mid = n.op.forward(*[(u + l) / 2 for l, u in ins])
    rad = n.op.radius(*[(u - l) / 2 for l, u in ins])
    return mid - rad, mid + rad


def ibp(dag: Dag, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Interval bounds of every node; ``lower``/``upper`` are ``(B, *in_shape)`` (or flat)."""
    B = lower.shape[0]
    bounds: Bounds = [(lower.reshape(B, *dag.in_shape), upper.reshape(B, *dag.in_shape))]
    for i in range(1, len(dag.nodes)):
        bounds.append(_ibp_node(dag, i, bounds))
    return bounds


def _maxpool_relaxation(op: MaxPool, l: torch.Tensor, u: torch.Tensor):
    """Per window (flattened to ``(B, C, L)``): the selected input as a one-hot over the window
    ``(B, C, kk, L)``, whether the max equals it exactly, and the window's highest upper bound."""
    B, (C, H, W) = l.shape[0], l.shape[-3:]

    def windows(x):
        x = op.padded(x.reshape(B, C, H, W))
        return F.unfold(x, op.kernel, op.dilation, 0, op.stride).reshape(B, C, math.prod(op.kernel), -1)

    lw, uw = windows(l), windows(u)
    sel = lw.argmax(2, keepdim=True)
    onehot = torch.zeros_like(lw).scatter_(2, sel, 1.0)
    others = uw.masked_fill(onehot.bool(), -math.inf).max(2).values
    exact = lw.gather(2, sel).squeeze(2) >= others
    return onehot, exact, uw.max(2).values


def _maxpool_back(op: MaxPool, A: torch.Tensor, relaxation, in_shape):
    onehot, exact, umax = relaxation
    B, S = A.shape[:2]
    C, H, W = in_shape[-3:]
    A = A.reshape(B, S, C, -1)
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    bias = (neg * torch.where(exact, 0.0, umax).unsqueeze(1)).flatten(2).sum(-1)
    coef = pos + neg * exact.unsqueeze(1)
    cols = (coef.unsqueeze(3) * onehot.unsqueeze(1)).reshape(B * S, -1, A.shape[-1])
    left, right, top, bottom = op.pads
    x = F.fold(cols, (H + top + bottom, W + left + right), op.kernel, op.dilation, 0, op.stride)
    x = x[..., top:top + H, left:left + W]
    return x.reshape(B, S, *in_shape), bias


def _sshape_relaxation(op: SShape, l: torch.Tensor, u: torch.Tensor):
    """``(s, low_icpt, up_icpt)``, ``(B, 1, *shape)`` each: ``s x + low_icpt <= f(x) <= s x + up_icpt``
    on ``[l, u]`` (see the module docstring)."""
    fl, fu = op.forward(l), op.forward(u)
    s = torch.minimum(op.slope_at_value(fl), op.slope_at_value(fu))
    return tuple(t.unsqueeze(1) for t in (s, fl - s * l, fu - s * u))


def _relax_node(dag: Dag, i: int, bounds: Bounds):
    n = dag.nodes[i]
    if isinstance(n.op, Relu):
        return tuple(t.unsqueeze(1) for t in relax(*bounds[n.inputs[0]]))  # up, icpt, low, unstable
    if isinstance(n.op, SShape):
        return _sshape_relaxation(n.op, *bounds[n.inputs[0]])
    return _maxpool_relaxation(n.op, *bounds[n.inputs[0]])


NONLINEAR = (Relu, MaxPool, SShape)


def relaxations(dag: Dag, bounds: Bounds, upto: int | None = None) -> dict:
    """The relaxation of every nonlinear node (ids ``<= upto``) given ``bounds``."""
    upto = dag.output if upto is None else upto
    return {i: _relax_node(dag, i, bounds) for i in range(1, upto + 1) if isinstance(dag.nodes[i].op, NONLINEAR)}


def backward(dag: Dag, lower, upper, C: torch.Tensor, bounds: Bounds, target: int | None = None,
             slopes: dict | None = None, relaxed: dict | None = None, extra: dict | None = None,
             keep: dict | None = None, rounding: dict | None = None) -> torch.Tensor:
    """CROWN lower bound ``(B, S)`` of ``C @ node_target(x)`` over the box, ``C (B, S, n_target)``.

    ``bounds`` must hold the inputs of every nonlinear node before ``target``; ``slopes[i]``
    (broadcastable to ``(B, S, *shape)``, in [0, 1]) replaces the lower slope of ReLU node ``i``'s
    unstable neurons (alpha-CROWN); ``extra[i]`` is added to the coefficients of ReLU node ``i``'s
    input (beta-CROWN split terms); ``relaxed``: :func:`relaxations`, when reused over many passes.
    ``keep``: a dict that receives the coefficients of every ReLU node's output and of the input (0).
    ``rounding``: per node, a bound on an additive error at its output (:func:`intermediate_bounds`'s
    float32 roundings): the bound then holds for the network computed with those errors.
    """
    target = dag.output if target is None else target
    B, S = C.shape[:2]
    if relaxed is None:
        relaxed = relaxations(dag, bounds, target)
    coef = {target: C.reshape(B, S, *dag.nodes[target].shape)}
    bias = C.new_zeros(B, S)
    for i in range(target, 0, -1):
        A = coef.pop(i, None)
        if A is None:
            continue
        n = dag.nodes[i]
        if rounding is not None and i in rounding:  # an affine op's or an S-shape's float32 error
            bias = bias - (A.abs() * rounding[i].unsqueeze(1)).flatten(2).sum(-1)
        if isinstance(n.op, Affine):
            bias = bias + n.op.bias_term(A)
            ins = n.op.back(A, [dag.nodes[j].shape for j in n.inputs])
        elif isinstance(n.op, Relu):
            up, icpt, low, unstable = relaxed[i]
            if slopes is not None and slopes.get(i) is not None:
                low = torch.where(unstable, slopes[i], low)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            bias = bias + (neg * icpt).flatten(2).sum(-1)
            ins = [pos * low + neg * up]
            if keep is not None:
                keep[i] = A
            if extra is not None and extra.get(i) is not None:
                ins[0] = ins[0] + extra[i]
        elif isinstance(n.op, SShape):
            s, low_icpt, up_icpt = relaxed[i]
            bias = bias + (A.clamp(min=0) * low_icpt + A.clamp(max=0) * up_icpt).flatten(2).sum(-1)
            ins = [A * s]
        else:
            x, b = _maxpool_back(n.op, A, relaxed[i], dag.nodes[n.inputs[0]].shape)
            bias, ins = bias + b, [x]
        for j, a in zip(n.inputs, ins):
            coef[j] = coef[j] + a if j in coef else a
    A = coef.get(0)
    if keep is not None:
        keep[0] = A if A is not None else C.new_zeros(B, S, *dag.in_shape)
    if A is None:  # the target does not depend on the input
        return bias
    lo, hi = lower.reshape(B, 1, *dag.in_shape), upper.reshape(B, 1, *dag.in_shape)
    return bias + (A * ((hi + lo) / 2)).flatten(2).sum(-1) - (A.abs() * ((hi - lo) / 2)).flatten(2).sum(-1)


def _tighten(dag: Dag, lower, upper, bounds: Bounds, i: int, relaxed: dict, only_unstable: bool, deadline=None,
             rounding=None):
    """CROWN bounds of node ``i`` (its unstable neurons only, if ``only_unstable``) meet ``bounds[i]``;
    chunks left when ``deadline`` expires keep ``bounds[i]``."""
    l, u = bounds[i]
    B = l.shape[0]
    lf, uf = l.reshape(B, -1).clone(), u.reshape(B, -1).clone()
    mask = ((lf < 0) & (uf > 0)).any(0) if only_unstable else torch.ones(lf.shape[1], dtype=torch.bool)
    cols = torch.nonzero(mask).flatten()
    widest = max(math.prod(n.shape) for n in dag.nodes[: i + 1])
    chunk = max(1, ROW_BUDGET // (2 * B * widest))
    for s in range(0, len(cols), chunk):
        if deadline is not None and deadline.expired():
            break
        cc = cols[s:s + chunk]
        k = len(cc)
        C = l.new_zeros(B, 2 * k, lf.shape[1])
        C[:, torch.arange(k), cc] = 1.0
        C[:, torch.arange(k, 2 * k), cc] = -1.0
        lb = backward(dag, lower, upper, C, bounds, i, relaxed=relaxed, rounding=rounding)
        lf[:, cc] = torch.maximum(lf[:, cc], lb[:, :k])
        uf[:, cc] = torch.minimum(uf[:, cc], -lb[:, k:])
    return lf.reshape(l.shape), uf.reshape(u.shape)


def _rounding(dag: Dag, i: int, bounds: Bounds):
    """The float32 error bound at node ``i``'s output given the ``bounds`` up to it: an affine op's
    rounding, onnxruntime's approximation of a Sigmoid / Tanh; None for ReLU, MaxPool (exact) and
    an op that only moves data."""
    from .float_error import EXTRA, TINY, gamma

    n = dag.nodes[i]
    if isinstance(n.op, SShape):
        return torch.full_like(bounds[i][0], SSHAPE_ERROR[n.op.kind])
    if not isinstance(n.op, Affine):
        return None
    terms = n.op.terms
    if terms is None:  # unknown: every input element
        terms = sum(math.prod(dag.nodes[j].shape) for j in n.inputs)
    if not terms:
        return None
    mags = [torch.maximum(l.abs(), u.abs()) for l, u in (bounds[j] for j in n.inputs)]
    bias = n.op.bias.abs() if n.op.bias is not None else 0.0
    return gamma(terms + 1 + EXTRA) * (n.op.radius(*mags) + bias) + TINY * (terms + 1)


def intermediate_bounds(dag: Dag, lower: torch.Tensor, upper: torch.Tensor, deadline=None,
                        rounding: dict | None = None) -> Bounds:
    """Bounds of every node: IBP, with the inputs of ReLUs (unstable neurons) and of MaxPools, Sigmoids
    and Tanhs (every neuron, unless it is a ReLU's output) tightened by CROWN in topological order (see the module
    docstring), except where IBP is already exact (at most one mixing affine op since the input).
    Past ``deadline`` the remaining nodes keep their IBP bounds (still sound).

    ``rounding``: a dict to receive, per affine node, the bound on its float32 rounding error (the
    model and constants of :mod:`vsbench.bounds.float_error`: ``gamma_(terms+1+EXTRA)`` of
    ``|W| |x^| + |b|``, ``x^`` the float32 input); the bounds are then of the values onnxruntime
    computes in float32, each op's rounding an extra perturbation at its output, so every CROWN bound
    given the same ``rounding`` (:func:`backward`) holds for the float32 model."""
    B = lower.shape[0]
    bounds: Bounds = [(lower.reshape(B, *dag.in_shape), upper.reshape(B, *dag.in_shape))]
    feeds = {}
    for n in dag.nodes:
        if isinstance(n.op, NONLINEAR):
            feeds[n.inputs[0]] = feeds.get(n.inputs[0], False) or isinstance(n.op, Relu)
    relaxed: dict = {}
    mixes = [0]  # mixing affine ops since the input (2: after a nonlinear op); IBP is exact below 2
    for i in range(1, len(dag.nodes)):
        n = dag.nodes[i]
        bounds.append(_ibp_node(dag, i, bounds))
        if rounding is not None and (r := _rounding(dag, i, bounds)) is not None:
            rounding[i] = r
            bounds[i] = (bounds[i][0] - r, bounds[i][1] + r)
        if isinstance(n.op, NONLINEAR):
            relaxed[i] = _relax_node(dag, i, bounds)
            mixes.append(2)
        else:
            mixes.append(min(2, max(mixes[j] for j in n.inputs) + (n.op.mixing or len(n.inputs) > 1)))
        if i in feeds and mixes[i] > 1 and not isinstance(n.op, Relu):
            bounds[i] = _tighten(dag, lower, upper, bounds, i, relaxed, feeds[i], deadline, rounding)
    return bounds


def crown_spec(dag: Dag, lower, upper, C: torch.Tensor, bounds: Bounds | None = None,
               rounding: dict | None = None) -> torch.Tensor:
    """CROWN lower bound ``(B, S)`` of ``C @ f(x)``; ``bounds``: :func:`intermediate_bounds` if None
    (``rounding``: as there)."""
    if bounds is None:
        bounds = intermediate_bounds(dag, lower, upper, rounding=rounding)
    return backward(dag, lower, upper, C, bounds, rounding=rounding)


def _clamp01(params):
    for p in params:
        p.clamp_(0, 1)


def alpha_spec(dag: Dag, lower, upper, C: torch.Tensor, bounds: Bounds, iters: int = 20, lr: float = 0.1,
               slopes: list | None = None, deadline=None, done=None, rounding: dict | None = None):
    """alpha-CROWN lower bound of ``C @ f(x)`` (the lower slopes of every ReLU optimised, starting
    from CROWN's, best iterate kept: never looser than :func:`crown_spec`); ``(lb (B, S), slopes)``."""
    relaxed = relaxations(dag, bounds)
    relus = [i for i in relaxed if isinstance(dag.nodes[i].op, Relu)]
    B, S = C.shape[:2]
    if slopes is None:
        slopes = [relaxed[i][2].expand(B, S, *relaxed[i][2].shape[2:]).clone() for i in relus]
    with torch.enable_grad():
        return optimize(lambda ps: backward(dag, lower, upper, C, bounds, slopes=dict(zip(relus, ps)), relaxed=relaxed,
                                            rounding=rounding),
                        slopes, iters, lr, _clamp01, deadline, done)


def float32_error(dag: Dag, bounds: Bounds, rows: torch.Tensor) -> torch.Tensor:
    """For each row ``c`` of ``rows`` ``(R, n_out)``, a bound on ``|c @ (y^ - y)|`` over the box of
    ``bounds`` (sound bounds of every node's exact value, e.g. :func:`intermediate_bounds`): ``y^``
    as onnxruntime computes it in float32, ``y`` exact. The rounding model and constants of
    :mod:`vsbench.bounds.float_error`, on the DAG: each op's rounding ``r_k`` (``gamma_(terms+1+EXTRA)``
    of its float32 input's magnitude: exact bound plus a forward ``|W|`` bound of its error), then
    ``sum_k |c J_k| r_k`` with ``c J_k`` propagated backwards as an interval (a ReLU's error gain is
    in ``[0, 1]``, exact where the sign is sure; a MaxPool's output error is a convex combination of
    its window's; a Sigmoid's or Tanh's gain is in ``[0, its largest slope over the range]``, plus
    its own ``SSHAPE_ERROR``): signed, so cancellation is kept, unlike a forward ``|W|`` walk."""
    from .float_error import EXTRA, TINY, gamma

    errs, rounding = [torch.zeros_like(bounds[0][0])], [None]
    for n in dag.nodes[1:]:
        e_in = [errs[j] for j in n.inputs]
        r = None
        if isinstance(n.op, Relu):
            err = e_in[0]
        elif isinstance(n.op, MaxPool):
            err = n.op.forward(e_in[0])
        elif isinstance(n.op, SShape):
            r = torch.full_like(e_in[0], SSHAPE_ERROR[n.op.kind])
            err = _sshape_gain(n.op, bounds[n.inputs[0]], e_in[0]) * e_in[0] + r
        else:
            terms = n.op.terms
            if terms is None:  # unknown: every input element
                terms = sum(math.prod(dag.nodes[j].shape) for j in n.inputs)
            err = n.op.radius(*e_in)
            if terms:
                mags = [torch.maximum(l.abs(), u.abs()) + e for (l, u), e in zip((bounds[j] for j in n.inputs), e_in)]
                bias = n.op.bias.abs() if n.op.bias is not None else 0.0
                r = gamma(terms + 1 + EXTRA) * (n.op.radius(*mags) + bias) + TINY * (terms + 1)
                err = err + r
        errs.append(err)
        rounding.append(r)
    R = rows.shape[0]
    coef = {dag.output: (rows.reshape(1, R, *dag.nodes[dag.output].shape), rows.new_zeros(()))}
    total = rows.new_zeros(R)
    for i in range(dag.output, 0, -1):
        if i not in coef:
            continue
        m, rad = coef.pop(i)
        n = dag.nodes[i]
        shapes = [dag.nodes[j].shape for j in n.inputs]
        if rounding[i] is not None:
            total = total + ((m.abs() + rad) * rounding[i].unsqueeze(1)).flatten(2).sum(-1)[0]
        if isinstance(n.op, Affine):
            ins = zip(n.op.back(m, shapes), n.op.back_abs(rad.expand_as(m), shapes))
        elif isinstance(n.op, SShape):  # error gain in [0, g]
            g = _sshape_gain(n.op, bounds[n.inputs[0]], errs[n.inputs[0]]).unsqueeze(1)
            lo, hi = (g * (m - rad)).clamp(max=0), (g * (m + rad)).clamp(min=0)
            ins = [((lo + hi) / 2, (hi - lo) / 2)]
        elif isinstance(n.op, Relu):
            j = n.inputs[0]
            (l, u), e = bounds[j], errs[j]
            sure = (l - e > 0).unsqueeze(1)
            live = (u + e > 0).unsqueeze(1)
            lo, hi = m - rad, m + rad
            lo = torch.where(live, torch.where(sure, lo, lo.clamp(max=0)), 0.0)
            hi = torch.where(live, torch.where(sure, hi, hi.clamp(min=0)), 0.0)
            ins = [((lo + hi) / 2, (hi - lo) / 2)]
        else:
            (C, H, W), (left, right, top, bottom) = shapes[0][-3:], n.op.pads
            a = (m.abs() + rad).reshape(R, C, 1, -1)  # every window input may carry the max's error
            cols = a.expand(R, C, math.prod(n.op.kernel), a.shape[-1]).reshape(R, -1, a.shape[-1])
            x = F.fold(cols, (H + top + bottom, W + left + right), n.op.kernel, n.op.dilation, 0, n.op.stride)
            x = x[..., top:top + H, left:left + W].reshape(1, R, *shapes[0])
            ins = [(torch.zeros_like(x), x)]
        for j, (mj, rj) in zip(n.inputs, ins):
            coef[j] = (coef[j][0] + mj, coef[j][1] + rj) if j in coef else (mj, rj)
    return total


def _sshape_gain(op: SShape, input_bounds, err):
    """The largest slope of ``op`` over its float32 input's range ``[l - err, u + err]``."""
    l, u = input_bounds
    return op.slope_at_value(op.forward(torch.minimum(torch.maximum(torch.zeros_like(l), l - err), u + err)))


class ReluView:
    """A Dag as the chain engines (:mod:`~vsbench.bounds.crown`, alpha, beta, the verifier's BaB) see
    a :class:`~vsbench.bounds.graph.Graph`: ReLU ``k`` is the ``k``-th ReLU node, its bounds, slopes,
    split terms and coefficients are flat ``(B, ..., n_k)``, inputs flat ``(B, n_in)``. MaxPools,
    Sigmoids and Tanhs keep the relaxation of ``root`` (bounds over the whole box: sound for every sub-domain), and every
    bound includes the float32 ``rounding`` of :func:`intermediate_bounds` when given (bounds of
    the root's magnitudes: sound for every sub-domain too)."""

    def __init__(self, dag: Dag, root: Bounds, rounding: dict | None = None):
        self.dag, self.n_in, self.rounding = dag, dag.n_in, rounding
        self.relus = [i for i, n in enumerate(dag.nodes) if isinstance(n.op, Relu)]
        self.pools = {i: _relax_node(dag, i, root) for i, n in enumerate(dag.nodes) if isinstance(n.op, (MaxPool, SShape))}

    def relu_count(self) -> int:
        return len(self.relus)

    def relu_bounds(self, bounds: Bounds) -> list:
        """The flat ``(l, u)`` of every ReLU's input, from per-node ``bounds``."""
        return [tuple(t.reshape(t.shape[0], -1) for t in bounds[self.dag.nodes[i].inputs[0]]) for i in self.relus]

    def forward(self, x):
        return self.dag.forward(x)

    def to(self, dtype):
        self.dag.to(dtype)
        return self

    def relu_backward(self, lower, upper, C, intermediate, slopes=None, extra=None, keep=False, relaxed=None):
        """:func:`vsbench.bounds.crown.backward`'s contract, on the Dag."""
        from .crown import relax_all

        if relaxed is None:
            relaxed = relax_all(intermediate)
        shape = [self.dag.nodes[i].shape for i in self.relus]

        def shaped(t, s):
            return t.reshape(*t.shape[:-1], *s) if t is not None else None

        rel = dict(self.pools)
        for i, s, (up, icpt, low, unstable) in zip(self.relus, shape, relaxed):
            rel[i] = (shaped(up, s), shaped(icpt, s), shaped(low, s), shaped(unstable.unsqueeze(1), s))
        by_node = lambda ts: None if ts is None else {i: shaped(t, s) for i, s, t in zip(self.relus, shape, ts)}  # noqa: E731
        kept = {} if keep else None
        lb = backward(self.dag, lower, upper, C, None, relaxed=rel, slopes=by_node(slopes), extra=by_node(extra),
                      keep=kept, rounding=self.rounding)
        if not keep:
            return lb, [None] * len(self.relus)
        return lb, [kept[i].flatten(2) for i in self.relus] + [kept[0].flatten(2)]
