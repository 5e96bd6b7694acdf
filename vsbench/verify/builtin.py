"""The built-in complete verifier: PGD -> CROWN -> alpha-CROWN -> BaB with beta-CROWN -> MILP.

Soundness rules: ``unsat`` only when every clause of every region has a sound float64 lower bound
``> TAU`` (bound propagation, BaB leaves decided by LP, or the MILP) above the bound on the float32
error of the ONNX model in onnxruntime (:func:`float32_region`); ``sat`` only with a point that
:func:`vsbench.onnx_io.confirm_point` confirms (without an ONNX file: violated in float64 on the graph).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import onnx  # noqa: F401 - these three load with the module (a Ray worker starts with it), not on
import onnxruntime  # noqa: F401 - the first instance's clock: together seconds on a loaded machine
import torch
import torch._dynamo  # noqa: F401 - (torch.optim imports it at the first optimiser)

from ..bounds.alpha import alpha_bounds, alpha_spec
from ..bounds.beta import beta_bound, beta_spec, split_bounds
from ..bounds.crown import crown_bounds, crown_spec
from ..bounds import dag_bounds
from ..bounds.dag import Dag
from ..bounds.dag_bounds import ReluView
from ..bounds.float_error import ChainError, dag_row_error, layer_slack, row_error
from ..bounds.graph import Graph, UnsupportedModel
from ..bounds.onnx_ops import load_onnx
from ..bounds.refine import split_refine
from vsbench.onnx_io import confirm_point, input_dtype, round_inside
from vsbench.spec.api import Deadline, Instance, Property, Region, Verdict
from . import input_split
from .attack import pgd_attack
from .config import VerifierConfig
from .milp import TAU, milp_clause

STAGES = ("attack", "ibp", "crown", "alpha", "input-split", "bab", "milp")  # cheapest first
DENSE_LIMIT = 20_000_000  # chain nets with at most this many dense-matrix entries take the dense path (BaB, MILP)


# --------------------------------------------------------------------------- simplification


def simplify(layers, lower: torch.Tensor, upper: torch.Tensor, slack=None):
    """Drop unused inputs, dead or constant neurons and neurons nothing reads (exactly equivalent).

    ``lower``/``upper`` are ``(1, n_in)``; ``slack``: optional per-layer rounding slack (each ``(n_k,)``,
    see :meth:`Graph.from_dense`). Returns ``(layers, keep, bounds, slack)``: the smaller layers, the
    kept input columns, CROWN bounds (layout of ``crown_bounds``) of the smaller network and its
    slack (None without one).
    """
    keep = torch.nonzero(layers[0][0].abs().sum(0) > 0).flatten()
    if len(keep) == 0:
        keep = torch.arange(1)
    layers = [(layers[0][0][:, keep], layers[0][1])] + list(layers[1:])
    slack = None if slack is None else list(slack)
    bounds = crown_bounds(Graph.from_dense(layers, slack=slack), lower[:, keep], upper[:, keep])
    out, out_slack = [], []
    for k in range(len(layers) - 1):
        (W, b), (Wn, bn) = layers[k], layers[k + 1]
        r = torch.zeros_like(b) if slack is None else slack[k]
        l, u = bounds[k][0][0], bounds[k][1][0]
        const = W.abs().sum(1) == 0  # pre-activation is b (within r): fold relu of it into the next bias
        lo, hi = (b - r)[const].clamp(min=0), (b + r)[const].clamp(min=0)
        bn = bn + Wn[:, const] @ ((lo + hi) / 2)
        if slack is not None:
            slack[k + 1] = slack[k + 1] + Wn[:, const].abs() @ ((hi - lo) / 2)
        alive = ~((u <= 0) | const | (Wn.abs().sum(0) == 0))
        if not alive.any():  # keep one dead neuron so every layer has a width
            W, b, r, Wn, l, u = W[:1] * 0, b[:1] * 0, r[:1] * 0, Wn[:, :1] * 0, l[:1] * 0, u[:1] * 0
            alive = torch.ones(1, dtype=torch.bool)
        out.append((W[alive], b[alive]))
        out_slack.append(r[alive])
        bounds[k] = (l[alive][None], u[alive][None])
        layers[k + 1] = (Wn[:, alive], bn)
    out.append(layers[-1])
    out_slack.append(torch.zeros_like(layers[-1][1]) if slack is None else slack[-1])
    return out, keep, bounds, (None if slack is None else out_slack)


# --------------------------------------------------------------------------- counterexamples


class _Checker:
    """Confirms candidate points: rounded into the region as the model's input dtype, then judged by
    :func:`vsbench.onnx_io.confirm_point` on the ONNX file (in float64 on the graph when there is none)."""

    def __init__(self, graph: Graph, prop: Property, onnx_path=None):
        self.graph, self.prop, self.onnx_path = graph, prop, onnx_path
        self.dtype = np.float32 if onnx_path is None else input_dtype(onnx_path)

    def __call__(self, region: Region, x: np.ndarray) -> np.ndarray | None:
        xf = round_inside(x, region.lower, region.upper, self.dtype)
        if self.onnx_path is not None:
            return confirm_point(self.onnx_path, self.prop, xf)[0]
        y = self.graph.forward(torch.as_tensor(xf)[None]).numpy()
        return xf if self.prop.violated_by(xf, y) else None


def float32_region(graph: Graph | Dag, region: Region, onnx_path) -> tuple[Region, float]:
    """``region`` with each clause row's ``rhs`` raised by the bound on the float32 error of that row
    of ``C @ y`` in onnxruntime (:func:`vsbench.bounds.float_error.row_error` over CROWN bounds for
    chains, :func:`~vsbench.bounds.float_error.dag_row_error` otherwise), so that a margin proven above
    ``TAU`` holds for the float32 model; and the largest raise."""
    if not region.clauses:
        return region, 0.0
    rows = np.concatenate([C for C, _ in region.clauses])
    if isinstance(graph, Dag):
        err = dag_row_error(graph, region.lower, region.upper, rows)
    else:
        lo, hi = torch.as_tensor(region.lower)[None], torch.as_tensor(region.upper)[None]
        relu_bounds = [(l[0].numpy(), u[0].numpy()) for l, u in crown_bounds(graph, lo, hi)[:-1]]
        try:
            err = row_error(onnx_path, region.lower, region.upper, rows, relu_bounds)
        except UnsupportedModel:  # a chain for the bound engines, but ONNX ops the backward walk lacks
            err = dag_row_error(load_onnx(onnx_path), region.lower, region.upper, rows)
    ends = np.cumsum([len(rhs) for _, rhs in region.clauses])[:-1]
    clauses = [(C, rhs + e) for (C, rhs), e in zip(region.clauses, np.split(err, ends))]
    return Region(region.lower, region.upper, clauses), float(err.max(initial=0.0))


def _raised(graph: Graph, region: Region, onnx_path, log) -> Region:
    """:func:`float32_region`, logged."""
    region, err = float32_region(graph, region, onnx_path)
    log.append(f"float32 error bound {err:.1e}")
    return region


# --------------------------------------------------------------------------- one region


@dataclass
class _Region:
    region: Region
    layers: list | None  # dense layers; None on the DAG path (no MILP, no refinement)
    keep: torch.Tensor
    lo: torch.Tensor  # (1, n_kept)
    hi: torch.Tensor
    bounds: list  # pre-ReLU (l, u), each (1, n_k)
    graph: Graph | ReluView | None = None  # None: the graph of ``layers``
    slack: list | None = None  # per-layer float32 rounding of ``layers`` (see :meth:`Graph.from_dense`)

    def __post_init__(self):
        if self.graph is None:
            self.graph = Graph.from_dense(self.layers, slack=self.slack)

    def milp(self, C, rhs, time_limit: float, check, stop=None):
        """The exact MILP of one clause over the region: ``(status, lb, cex)``, ``cex`` the confirmed
        counterexample of a ``sat`` (None when ``check`` rejects its point); ``unknown`` on the DAG path."""
        if self.layers is None:
            return "unknown", -float("inf"), None
        st, x, lb = milp_clause(self.layers, self.lo[0], self.hi[0], self.bounds, C, rhs, time_limit, stop, self.slack)
        return st, lb, (check(self.region, self.full_x(x)) if st == "sat" else None)

    def full_x(self, x_kept) -> np.ndarray:
        x = (self.region.lower + self.region.upper) / 2
        x[self.keep.numpy()] = np.asarray(x_kept, dtype=np.float64).ravel()[: len(self.keep)]
        return x


class Trace(list):
    """The log lines of one verification and the stage that decided it: for ``sat`` the stage that
    found the point, for ``unsat`` the latest stage (in :data:`STAGES` order) any clause needed."""

    stage: str | None = None

    def reached(self, stage: str) -> None:
        if self.stage is None or STAGES.index(stage) > STAGES.index(self.stage):
            self.stage = stage


class _Found(Exception):
    def __init__(self, x):
        self.x = x


def _leaf(p: _Region, bounds, C, rhs, deadline, check) -> bool:
    """Decide a domain with every ReLU fixed by LP: True if infeasible; raises _Found on a cex."""
    if p.layers is None:  # the DAG path has no LP
        return False
    status, x, _ = milp_clause(p.layers, p.lo[0], p.hi[0], bounds, C, rhs, max(deadline.left(), 0.01), slack=p.slack)
    if status == "unsat":
        return True
    if x is not None:
        cex = check(p.region, p.full_x(x))
        if cex is not None:
            raise _Found(cex)
    return False


class _BaB:
    """Branch and bound over ReLU splits for several clauses at once, all with ``R`` rows.

    Every domain belongs to one clause (``owner``): it is proven when ``max_r (C x - rhs)_r > TAU``
    holds over it for its clause's rows. Domains of all clauses share each batch, so early steps
    (few domains per clause) cost one bound computation, not one per clause. Resumable: :meth:`run`
    can be called again after a ``timeout`` and continues where it stopped.
    """

    def __init__(self, p: _Region, clauses, full_graph: Graph, cfg: VerifierConfig):
        """``clauses``: ``(C (R, n_out), rhs (R,), slopes)`` with alpha-CROWN slopes ``(1, R, n_k)``."""
        self.p, self.clauses, self.full_graph, self.cfg = p, clauses, full_graph, cfg
        n = len(clauses)
        self.Ct = torch.stack([torch.as_tensor(C, dtype=torch.float64) for C, _, _ in clauses])
        self.rt = torch.stack([torch.as_tensor(r, dtype=torch.float64) for _, r, _ in clauses])
        self.owner = torch.arange(n)
        self.bounds = [(l.expand(n, -1).clone(), u.expand(n, -1).clone()) for l, u in p.bounds]
        self.splits = [torch.zeros_like(l) for l, _ in self.bounds]
        slopes = [torch.cat([s[k] for _, _, s in clauses]) for k in range(len(p.bounds))]
        self.lb, self.slopes, self.betas, self.lams = self._bound(self.owner, self.bounds, self.splits, slopes, None, 0)
        self.proven, self.undecided, self.steps = float("inf"), set(), 0

    def clause_lbs(self) -> torch.Tensor:
        """Lowest bound per clause over its open domains: ``inf`` for a clause with none left (proven,
        unless it is in :attr:`undecided`)."""
        out = torch.full((len(self.clauses),), torch.inf, dtype=self.lb.dtype)
        return out.scatter_reduce(0, self.owner, self.lb, "amin")

    def drop(self, clauses: list[int]):
        """Forget the domains of ``clauses`` (decided elsewhere)."""
        keep = ~torch.isin(self.owner, torch.as_tensor(clauses, dtype=self.owner.dtype))
        self.lb, self.owner = self.lb[keep], self.owner[keep]
        self.bounds = [(l[keep], u[keep]) for l, u in self.bounds]
        self.splits, self.slopes, self.betas, self.lams = (
            [t[keep] for t in ts] for ts in (self.splits, self.slopes, self.betas, self.lams))

    def _bound(self, owner, bounds, splits, slopes, betas, iters, deadline=None):
        """beta-CROWN over domains owned by ``owner``: ``(lb - rhs, slopes, betas, lams)``."""
        p, n, rhs = self.p, len(owner), self.rt[owner]
        lb, slopes, betas, lams = beta_spec(p.graph, p.lo.expand(n, -1), p.hi.expand(n, -1), self.Ct[owner],
                                            bounds, splits, slopes, betas, iters, self.cfg.lr_alpha, self.cfg.lr_beta, deadline,
                                            done=lambda lb: (lb - rhs).max(-1).values > TAU)
        return (lb - rhs).max(-1).values, slopes, betas, lams

    def _scores(self, pick) -> torch.Tensor:
        """BaBSR scores ``(len(pick), n_neurons)`` (flat over layers): the bound lost to the upper
        chord's intercept; -1 for neurons that cannot be split (stable or already split)."""
        scores = []
        for (l, u), s, lam in zip(self.bounds, self.splits, self.lams):
            l, u, s, lam = l[pick], u[pick], s[pick], lam[pick].sum(1)
            free = (l < 0) & (u > 0) & (s == 0)
            gap = -l * u / (u - l).clamp(min=1e-12)
            score = (-lam).clamp(min=0) * gap + 1e-9 * gap
            scores.append(torch.where(free, score, torch.full_like(l, -1.0)))
        return torch.cat(scores, 1)

    def _branch(self, pick):
        """Neuron to split (flat index) per picked domain, -1 for leaves: filtered smart branching,
        i.e. of the ``cfg.candidates`` best BaBSR neurons, the one whose better child bound is highest
        (children bounded with the parent's slopes and betas, no optimisation)."""
        scores = self._scores(pick)
        top, cand = scores.topk(min(self.cfg.candidates, scores.shape[1]), dim=1)
        D, K = cand.shape
        ok = top.reshape(-1) >= 0
        go, idx = pick.repeat_interleave(K)[ok], cand.reshape(-1)[ok]
        value = torch.full((D * K,), -torch.inf, dtype=top.dtype)
        if len(go):
            owner, bounds, splits, slopes, betas = self._split(go, idx)
            n = len(owner)
            lb = beta_bound(self.p.graph, self.p.lo.expand(n, -1), self.p.hi.expand(n, -1), self.Ct[owner],
                            bounds, splits, slopes, betas)
            lb = (lb - self.rt[owner]).max(-1).values
            value[ok] = torch.maximum(lb[: len(go)], lb[len(go):])
        best = value.view(D, K).argmax(1)
        rows = torch.arange(D)
        return torch.where(top[rows, best] < 0, -1, cand[rows, best])

    def _split(self, go, idx):
        """Owners, bounds, splits, slopes and betas of the children of domains ``go`` split at flat
        neuron ``idx`` (first ``len(go)`` rows the active side, then the inactive side)."""
        m = len(go)
        offs = np.cumsum([0] + [l.shape[1] for l, _ in self.bounds])
        splits = []
        for k, s in enumerate(self.splits):
            s2 = torch.cat([s[go], s[go]])
            rows = torch.nonzero((idx >= offs[k]) & (idx < offs[k + 1])).flatten()
            cols = idx[rows] - int(offs[k])
            s2[rows, cols] = 1.0
            s2[rows + m, cols] = -1.0
            splits.append(s2)
        two = lambda ts: [torch.cat([t[go], t[go]]) for t in ts]  # noqa: E731
        bounds = split_bounds([(torch.cat([l[go], l[go]]), torch.cat([u[go], u[go]])) for l, u in self.bounds], splits)
        return torch.cat([self.owner[go], self.owner[go]]), bounds, splits, two(self.slopes), two(self.betas)

    def _children(self, go, idx, deadline):
        owner, bounds, splits, slopes, betas = self._split(go, idx)
        lb, slopes, betas, lams = self._bound(owner, bounds, splits, slopes, betas, self.cfg.beta_iters, deadline)
        parent_lb = torch.cat([self.lb[go], self.lb[go]])  # a subdomain is never looser than its parent
        return torch.maximum(lb, parent_lb), owner, bounds, splits, slopes, betas, lams

    def _falsify(self, lb, owner, A, check):
        """Try the box corners minimising the linear bounds of the ``cfg.falsify`` worst domains (and
        every ``cfg.bab_pgd_every`` steps PGD from them); raises :class:`_Found` with a confirmed
        counterexample."""
        worst = lb.argsort()[: self.cfg.falsify]
        p = self.p
        x = torch.where(A[worst].sum(1) >= 0, p.lo, p.hi)
        own = owner[worst]
        t = (torch.einsum("bo,bro->br", p.graph.forward(x), self.Ct[own]) - self.rt[own]).max(-1).values
        starts = np.stack([p.full_x(xi) for xi in x.numpy()])
        for i in torch.nonzero(t <= 0).flatten().tolist():
            if (cex := check(p.region, starts[i])) is not None:
                raise _Found(cex)
        if self.steps % self.cfg.bab_pgd_every != 1 % self.cfg.bab_pgd_every:
            return
        region = Region(p.region.lower, p.region.upper, [(C, r) for C, r, _ in self.clauses])
        cex = pgd_attack(self.full_graph, region, restarts=0, steps=self.cfg.bab_pgd_steps, seed=self.steps,
                         starts=starts, confirm=lambda y: check(p.region, y))
        if cex is not None:
            raise _Found(cex)

    def run(self, deadline: Deadline, check, log: list, pause_s: float = float("inf"),
            skip: frozenset = frozenset()) -> tuple[str, float]:
        """``("unsat", proven_lb)``, ``("timeout", lb)``, ``("paused", lb)`` (after the first step that
        ends ``pause_s`` seconds or more from now) or ``("unknown", lb)`` (too many domains or an LP
        leaf left undecided); raises :class:`_Found` with a confirmed counterexample. Domains of the
        clauses ``skip`` (indices into ``clauses``: the MILP is on them) wait while others are open."""
        pause_at = time.monotonic() + pause_s
        while len(self.lb):
            if deadline.expired():
                return "timeout", float(self.lb.min())
            if time.monotonic() >= pause_at:
                return "paused", float(self.lb.min())
            if len(self.lb) > self.cfg.max_domains:
                log.append(f"bab: gave up at {len(self.lb)} domains")
                return "unknown", float(self.lb.min())
            self.steps += 1
            order = self.lb.argsort()
            if skip:
                later = torch.isin(self.owner[order], torch.as_tensor(sorted(skip), dtype=self.owner.dtype))
                if not later.all():
                    order = torch.cat([order[~later], order[later]])
            pick, rest = order[: self.cfg.batch], order[self.cfg.batch:]
            idx = self._branch(pick)
            for d in pick[idx < 0].tolist():
                C, rhs, _ = self.clauses[int(self.owner[d])]
                if _leaf(self.p, [(l[d], u[d]) for l, u in self.bounds], C, rhs, deadline, check):
                    self.proven = min(self.proven, TAU)
                else:
                    self.undecided.add(int(self.owner[d]))
            go, idx = pick[idx >= 0], idx[idx >= 0]
            if len(go):
                lb, owner, bounds, splits, slopes, betas, lams = self._children(go, idx, deadline)
                self._falsify(lb, owner, lams[-1], check)
                done = lb > TAU
                if done.any():
                    self.proven = min(self.proven, float(lb[done].min()))
                live = ~done
            else:
                lb, owner, bounds, splits, slopes, betas, lams = (
                    self.lb, self.owner, self.bounds, self.splits, self.slopes, self.betas, self.lams)
                live = torch.zeros(len(self.lb), dtype=torch.bool)
            cat = lambda a, b: torch.cat([a[rest], b[live]])  # noqa: E731
            self.lb, self.owner = cat(self.lb, lb), cat(self.owner, owner)
            self.bounds = [(cat(l, cl), cat(u, cu)) for (l, u), (cl, cu) in zip(self.bounds, bounds)]
            self.splits = [cat(a, b) for a, b in zip(self.splits, splits)]
            self.slopes = [cat(a, b) for a, b in zip(self.slopes, slopes)]
            self.betas = [cat(a, b) for a, b in zip(self.betas, betas)]
            self.lams = [cat(a, b) for a, b in zip(self.lams, lams)]
        log.append(f"bab: {self.steps} steps, {len(self.clauses)} clauses")
        return ("unknown" if self.undecided else "unsat"), self.proven


def _verify_region(graph: Graph | Dag, region: Region, deadline: Deadline, check, log: list, milp_thread: bool,
                   cfg: VerifierConfig):
    """``("sat", x)``, ``("unsat", margin)``, ``("timeout"|"unknown", best_lb)`` (``None`` when the
    deadline passed before any bound) for one region;
    ``milp_thread``: run clause MILPs in a thread beside BaB (see :class:`_MilpWorker`). A chain
    :class:`Graph` is simplified to dense layers (MILP, refinement); a :class:`Dag` is bounded as a
    DAG (:class:`ReluView`: BaB over its ReLUs, no MILP)."""
    if not region.clauses:  # nothing can violate it
        return "unsat", float("inf")

    def attack():  # the DAG path bounds first: its CROWN pass costs less than the attack there
        cex = pgd_attack(graph, region, restarts=cfg.attack_restarts, steps=cfg.attack_steps, deadline=deadline,
                         seed=0, confirm=lambda x: check(region, x))
        if cex is not None:
            log.append("pgd: counterexample")
            log.stage = "attack"
            return cex
        return None

    if not isinstance(graph, Dag) and (cex := attack()) is not None:
        return "sat", cex
    if deadline.expired():  # no time left for a bound: stop on time (the runner kills overruns)
        return "timeout", None
    error, slack = None, None  # on chains: the float32 error model and each layer's rounding over the region
    raise_rhs = check.onnx_path is not None and not isinstance(graph, Dag)  # the DAG path bounds float32 itself
    lower = torch.as_tensor(region.lower, dtype=torch.float64)[None]
    upper = torch.as_tensor(region.upper, dtype=torch.float64)[None]
    dense = None if isinstance(graph, Dag) else graph.dense_layers()
    if raise_rhs:
        try:
            error = ChainError(check.onnx_path)
            slack = layer_slack(error, dense, lower, upper)
        except UnsupportedModel:  # ONNX ops the chain model lacks: only the whole region's bound
            pass
    if slack is not None:
        log.append(f"float32 rounding bound {max(float(r.max()) for r in slack):.1e}")
    elif raise_rhs:
        region = _raised(graph, region, check.onnx_path, log)
    if cfg.input_split and input_split.suits(graph, region, cfg):
        st, val = input_split.verify_box(graph, region, deadline, check, log, cfg, error, slack)
        if st in ("sat", "unsat") or deadline.expired():
            return st, val
    if isinstance(graph, Dag):
        # bounds of the float32 model as onnxruntime runs it: each op's rounding a perturbation
        rounding = {} if check.onnx_path is not None else None
        node_bounds = dag_bounds.intermediate_bounds(graph, lower, upper, deadline, rounding)
        if rounding:
            log.append(f"float32 rounding bound {max(float(r.max()) for r in rounding.values()):.1e}")
        view = ReluView(graph, node_bounds, rounding)
        p = _Region(region, None, torch.arange(graph.n_in), lower, upper, view.relu_bounds(node_bounds), view)
        log.append(f"dag: unstable {[int(((l < 0) & (u > 0)).sum()) for l, u in p.bounds]}")
    else:
        layers, keep, bounds, slack = simplify(dense, lower, upper, slack)
        p = _Region(region, layers, keep, lower[:, keep], upper[:, keep], bounds[:-1], slack=slack)
        widths = [W.shape[0] for W, _ in layers[:-1]]
        log.append(f"simplified hidden widths {widths}, inputs {len(keep)}")

    rows = [(c, np.asarray(C, dtype=np.float64), np.asarray(r, dtype=np.float64)) for c, (C, r) in enumerate(region.clauses)]
    n_cl = len(rows)
    Call = torch.as_tensor(np.concatenate([C for _, C, _ in rows]))[None]
    rall = torch.as_tensor(np.concatenate([r for _, _, r in rows]))
    owner = np.concatenate([[c] * len(r) for c, _, r in rows])

    def clause_lb(row_lb):
        return np.array([row_lb[owner == c].max() for c in range(n_cl)])

    best = clause_lb((crown_spec(p.graph, p.lo, p.hi, Call, p.bounds) - rall)[0].numpy())
    log.append(f"crown: {int((best > TAU).sum())}/{n_cl} clauses")
    if (best > TAU).any():
        log.reached("crown")
    open_ = [c for c in range(n_cl) if best[c] <= TAU]
    if open_ and isinstance(graph, Dag) and (cex := attack()) is not None:
        return "sat", cex
    row_slopes = None
    if open_ and p.layers is not None:
        ab = alpha_bounds(p.graph, p.lo, p.hi, iters=cfg.alpha_bound_iters, lr=cfg.lr_alpha_init, deadline=deadline)
        p.bounds = [(torch.maximum(l, al), torch.minimum(u, au)) for (l, u), (al, au) in zip(p.bounds, ab)]
    if open_:
        sel = torch.as_tensor(np.isin(owner, open_))
        lb, row_slopes = alpha_spec(p.graph, p.lo, p.hi, Call[:, sel], p.bounds, iters=cfg.alpha_spec_iters,
                                     lr=cfg.lr_alpha_init, deadline=deadline)
        row_lb = np.full(len(owner), -np.inf)
        row_lb[sel.numpy()] = (lb - rall[sel])[0].numpy()
        if (clause_lb(row_lb) > TAU).any():
            log.reached("alpha")
        best = np.maximum(best, clause_lb(row_lb))
        log.append(f"alpha: {int((best > TAU).sum())}/{n_cl} clauses")
        sel_rows = np.flatnonzero(sel.numpy())
        open_ = [c for c in range(n_cl) if best[c] <= TAU]
    if open_:  # on the clauses still open, within its share of the time left
        cex = pgd_attack(graph, Region(region.lower, region.upper, [region.clauses[c] for c in open_]),
                         restarts=cfg.attack2_restarts, steps=cfg.attack2_steps, seed=1,
                         deadline=Deadline(deadline.left() * cfg.attack2_time_fraction),
                         confirm=lambda x: check(region, x))
        if cex is not None:
            log.append("pgd: counterexample")
            log.stage = "attack"
            return "sat", cex
    if open_ and deadline.expired():  # every BaB would start with a bound computation past the deadline
        return "timeout", float(best.min())
    groups: dict[int, list] = {}  # clauses with the same row count share one BaB
    for c in open_:
        pos = np.flatnonzero(np.isin(sel_rows, np.flatnonzero(owner == c)))
        _, C, r = rows[c]
        groups.setdefault(len(r), []).append((c, (C, r, [s[:, pos] for s in row_slopes])))
    babs = [([c for c, _ in g], _BaB(p, [cl for _, cl in g], graph, cfg))
            for g in groups.values()]

    def refine(babs, left):
        """Tighter intermediate bounds for the region (:func:`split_refine`, at most
        ``cfg.refine_time_fraction`` of the time left: on wide nets it is cut short, keeping what it
        tightened); BaB starts over with them on the clauses still ``left``."""
        t = time.monotonic()
        share = Deadline(deadline.left() * cfg.refine_time_fraction)
        p.bounds = split_refine(p.layers, p.lo, p.hi, p.bounds, cfg.refine_splits, deadline=share, slack=p.slack)
        unstable = [int(((l < 0) & (u > 0)).sum()) for l, u in p.bounds]
        log.append(f"refine: {time.monotonic() - t:.1f} s, unstable {unstable}")
        out = []
        for cs, bab in babs:
            fresh = _BaB(p, bab.clauses, graph, cfg)
            fresh.drop([i for i, c in enumerate(cs) if c not in left])
            out.append((cs, fresh))
        return out

    if p.layers is None or not cfg.refine:
        refine = None
    if not milp_thread:
        return _decide(p, rows, babs, best, deadline, check, log, None, refine, cfg)
    worker = _MilpWorker(p, rows, deadline, check)
    try:
        return _decide(p, rows, babs, best, deadline, check, log, worker, refine, cfg)
    finally:
        worker.close()


def dense_path(model: Graph | Dag) -> Graph | None:
    """The chain graph of ``model`` when the dense path (BaB with beta-CROWN, refinement, MILP) can
    take it: a chain of affine layers and ReLUs whose dense matrices have at most ``DENSE_LIMIT``
    entries; else None (the DAG path)."""
    chain = model.to_chain() if isinstance(model, Dag) else model
    return chain if chain is not None and chain.dense_size() <= DENSE_LIMIT else None


class _MilpWorker:
    """The exact MILP of one clause at a time, in a thread beside BaB (HiGHS releases the GIL, so it
    runs on a second core). It takes the first untried clause of :meth:`update`'s ranking; a clause
    decided meanwhile (or the deadline) interrupts its MILP."""

    def __init__(self, p: _Region, rows, deadline: Deadline, check):
        self.p, self.rows, self.deadline, self.check = p, rows, deadline, check
        self.proven: dict[int, float] = {}  # clause -> lower bound of its margin
        self.cex, self.error, self.current = None, None, None  # current: the clause being solved
        self.tried: set[int] = set()
        self.left: set[int] = set()
        self.ranking: list[int] = []
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def update(self, left: set[int], ranking: list[int]):
        with self.cond:
            self.left, self.ranking = set(left), list(ranking)
            self.cond.notify()

    def idle(self) -> bool:
        """Nothing running and nothing in the ranking left to try."""
        with self.cond:
            return self.current is None and self._next() is None

    def close(self):
        """Stop the MILP (at its next MIP node, or its time limit: the deadline) and wait for it, so
        no solver outlives the verdict (it would take CPU from the next one)."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()

    def _next(self):
        return next((c for c in self.ranking if c in self.left and c not in self.tried), None)

    def _run(self):
        try:
            while True:
                with self.cond:
                    while not self.closed and self._next() is None:
                        self.cond.wait()
                    if self.closed:
                        return
                    c = self._next()
                    self.tried.add(c)
                    self.current = c
                _, C, r = self.rows[c]
                st, lb, cex = self.p.milp(C, r, self.deadline.left(), self.check,
                                          stop=lambda: self.closed or c not in self.left)
                with self.cond:
                    self.current = None
                    if st == "unsat":
                        self.proven[c] = lb
                if cex is not None:
                    self.cex = cex
                    return
        except Exception as exc:  # noqa: BLE001 - re-raised in the BaB thread
            self.error = exc


def _decide(p: _Region, rows, babs, best, deadline: Deadline, check, log: list, worker: _MilpWorker | None,
            refine, cfg: VerifierConfig):
    """Decide the open clauses: BaB groups in round robin slices of ``cfg.slice_s``; clauses BaB gives up
    on go to the MILP (unless ``cfg.milp`` is off). With a worker, its MILP also takes the other clauses from the highest BaB bound
    down while BaB, skipping the MILP's clause, bounds the lowest domains first. Clauses left after
    the first round get ``refine(babs, left) -> babs`` (tighter bounds, BaB restarted) first.
    ``("sat", x)`` or ``(status, margin)``."""
    left = {c for cs, _ in babs for c in cs}
    failed: set[int] = set()  # BaB cannot decide these (an LP leaf undecided, too many domains)
    gave_up: set[int] = set()  # nor could the MILP

    def settle(c, lb):
        left.discard(c)
        best[c] = max(best[c], lb)
        for cs, bab in babs:
            if c in cs:
                bab.drop([cs.index(c)])

    while left:
        if worker is not None:
            if worker.error is not None:
                raise worker.error
            if worker.cex is not None:
                log.append("milp: counterexample")
                log.stage = "milp"
                return "sat", worker.cex
            with worker.cond:
                proven = dict(worker.proven)
            for c in proven.keys() & left:
                log.append("milp: unsat")
                log.reached("milp")
                settle(c, proven[c])
        if not left or deadline.expired():
            break
        lbs, ran = {}, False
        for cs, bab in babs:
            if not any(c in left and c not in failed for c in cs):
                continue
            ran = True
            milp_on = worker.current if worker is not None else None
            st, _ = bab.run(deadline, check, log, cfg.slice_s, frozenset(i for i, c in enumerate(cs) if c == milp_on))
            for i, (c, lb) in enumerate(zip(cs, bab.clause_lbs().tolist())):
                if c not in left or c in failed:
                    continue
                if i in bab.undecided or (st == "unknown" and lb < float("inf")):
                    failed.add(c)
                    bab.drop([i])
                elif lb == float("inf"):
                    log.reached("bab")
                    settle(c, bab.proven)  # the lowest bound of any domain BaB proved
                else:
                    lbs[c] = lb
        if refine is not None and left - failed and not deadline.expired():
            babs, refine = refine(babs, left - failed), None
            continue
        if worker is None:
            for c in sorted(failed & left):  # the exact MILP gets the rest of the time
                if deadline.expired():
                    break
                if not cfg.milp:
                    left.discard(c)
                    gave_up.add(c)
                    continue
                _, C, r = rows[c]
                st, lb, cex = p.milp(C, r, deadline.left(), check)
                log.append(f"milp: {st}")
                if cex is not None:
                    log.stage = "milp"
                    return "sat", cex
                if st == "unsat":
                    log.reached("milp")
                    settle(c, lb)
                else:
                    left.discard(c)
                    gave_up.add(c)
            continue
        # BaB bounds the lowest domains first, so it works up from the clause with the lowest bound;
        # the MILP works down from the highest (closest to proven), and the two meet in between
        worker.update(left, sorted(failed & left) + sorted(lbs, key=lambda c: -lbs[c]))
        if not ran:  # only the MILP can still decide something
            if worker.idle() and not (worker.proven.keys() & left):
                gave_up |= left
                left.clear()
            time.sleep(0.05)
    if left:
        return "timeout", float(best.min())
    return ("unknown" if gave_up else "unsat"), float(best.min())


# --------------------------------------------------------------------------- public API


def verify_property(graph: Graph | Dag, prop: Property, deadline: Deadline, onnx_path=None,
                    config: VerifierConfig | None = None) -> Verdict:
    """Decide ``prop`` on ``graph`` before ``deadline``. With ``onnx_path`` (the file ``graph`` was read
    from), ``unsat`` holds for that model in onnxruntime's float32 and ``sat`` points are confirmed
    there; without, both are about ``graph`` in float64. Exceptions (NaN or inf weights included)
    become status ``error``. Chain nets small enough (:func:`dense_path`) take the dense path, all
    others the DAG path. ``config``: the settings (defaults when None); the verdict's ``stage``
    names the stage that decided it (:class:`Trace`).

    With ``torch.get_num_threads() >= 2``, one of those cores runs clause MILPs beside BaB (torch
    keeps the others); with one thread (one task per core, as the Ray runner does) there is no MILP
    thread and the MILP only decides what BaB gives up on.
    """
    t0 = time.monotonic()
    cfg = config or VerifierConfig()
    log = Trace()
    threads = torch.get_num_threads()
    chain = dense_path(graph)
    milp_thread = threads >= 2 and chain is not None and cfg.milp
    if milp_thread:
        torch.set_num_threads(threads - 1)
    try:
        if chain is None:
            g = graph if isinstance(graph, Dag) else Dag.from_chain(graph.to(torch.float64))
        else:
            g = chain.to(torch.float64)
        check = _Checker(g, prop, onnx_path)
        margins, status = [], "unsat"
        for region in prop.regions:
            st, val = _verify_region(g, region, deadline, check, log, milp_thread, cfg)
            if st == "sat":
                return Verdict("sat", time.monotonic() - t0, cex=val, log="; ".join(log), stage=log.stage)
            margins.append(val)
            if st != "unsat":
                status = "timeout" if st == "timeout" or deadline.expired() else "unknown"
        margin = min((m for m in margins if m is not None), default=None)  # None: a region stopped before bounds
        return Verdict(status, time.monotonic() - t0, margin=margin, log="; ".join(log),
                       stage=log.stage if status == "unsat" else None)
    except _Found as found:
        log.append("bab: counterexample")
        return Verdict("sat", time.monotonic() - t0, cex=found.x, log="; ".join(log), stage="bab")
    except Exception as exc:  # noqa: BLE001 - the verdict carries the error
        return Verdict("error", time.monotonic() - t0, log=f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)


class BuiltinVerifier:
    """The built-in verifier with one :class:`VerifierConfig` (defaults when None)."""

    name = "builtin"

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()

    def config_hash(self) -> str:
        return self.config.config_hash()

    def available(self) -> tuple[bool, str]:
        return True, ""

    def verify(self, instance: Instance, timeout: float) -> Verdict:
        t0 = time.monotonic()
        deadline = Deadline(timeout)
        try:
            from ..spec.vnnlib import read_vnnlib

            graph = load_onnx(instance.onnx)
            prop = read_vnnlib(instance.vnnlib)
        except UnsupportedModel as exc:
            return Verdict("error", time.monotonic() - t0, log=f"{instance.onnx}: {exc}")
        except Exception as exc:  # noqa: BLE001
            return Verdict("error", time.monotonic() - t0, log=f"{type(exc).__name__}: {exc}")
        verdict = verify_property(graph, prop, deadline, onnx_path=instance.onnx, config=self.config)
        verdict.time_s = time.monotonic() - t0
        return verdict


@dataclass(frozen=True)
class ConfiguredBuiltin:
    """A picklable zero-argument factory of ``BuiltinVerifier(config)``, as the runner takes."""

    config: VerifierConfig
    name = "builtin"

    def __call__(self) -> BuiltinVerifier:
        return BuiltinVerifier(self.config)

    def config_hash(self) -> str:
        return self.config.config_hash()
