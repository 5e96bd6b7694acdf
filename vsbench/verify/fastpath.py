"""The fast path: all properties of one model decided in batches before any per-instance search.

Certified-trained models are mostly easy: the clean point already violates the property, or a
bound proves it. So the model is read and its graph built once, and its properties go through
cheap-to-dear stages, each over a batch of them at once, each stage seeing only what the earlier
ones left open:

``attack`` (the box centre) -> ``ibp`` -> ``crown`` (IBP intermediate bounds) -> ``attack`` (PGD)
-> ``alpha`` (alpha-CROWN).

Convolutions stay convolutions (the graph's ``Conv.back`` is a transposed convolution), so nothing
is densified. A ``sat`` carries a point :func:`vsbench.onnx_io.confirm_counterexample` accepted (and
the runner checks it again); an ``unsat`` needs a float64 bound above the threshold the built-in
verifier uses after every row is raised by its float32 error bound in onnxruntime
(:func:`vsbench.bounds.float_error.row_error`, once per model over the hull of its boxes). Models
that are not a chain of affine ops and ReLUs are left to the per-instance verifier, as is what
stays open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from vsbench.onnx_io import confirm_counterexample, input_dtype, round_inside
from vsbench.spec.api import Deadline, Instance, Verdict

from ..bounds.alpha import alpha_spec
from ..bounds.crown import backward
from ..bounds.dag import Dag
from ..bounds.float_error import row_error
from ..bounds.graph import Graph, UnsupportedModel
from ..bounds.ibp import ibp_bounds, ibp_spec
from ..bounds.onnx_ops import load_onnx
from .config import VerifierConfig
from .milp import TAU


@dataclass
class _Group:
    """Regions (of any properties) with the same clause layout, stacked: row ``i`` is region
    ``regions[i] = (property index, region index)``."""

    regions: list[tuple[int, int]]
    lo: torch.Tensor  # (N, n_in)
    hi: torch.Tensor
    C: torch.Tensor  # (N, S, n_out)
    rhs: torch.Tensor  # (N, S)
    spans: tuple[tuple[int, int], ...]  # each clause's rows

    def clause_values(self, rows: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` row values -> per clause the largest, ``(B, n_clauses)``."""
        return torch.stack([rows[:, a:b].max(1).values for a, b in self.spans], 1)

    def margins(self, y: torch.Tensor, idx) -> torch.Tensor:
        """Property margins at outputs ``y (B, n_out)`` of units ``idx``: < 0 where a clause holds."""
        rows = torch.einsum("bso,bo->bs", self.C[idx], y) - self.rhs[idx]
        return self.clause_values(rows).min(1).values


def _float32_margins(onnx_path, groups: list[_Group]) -> None:
    """Raise every row's ``rhs`` by a bound on its float32 error in onnxruntime, so that a margin
    proven above the threshold holds for the float32 model. One bound per distinct row over the hull
    of all the boxes (sound for each box inside it): one error analysis per model, not per property."""
    rows = torch.cat([grp.C.reshape(-1, grp.C.shape[-1]) for grp in groups])
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    lo = torch.cat([grp.lo for grp in groups]).min(0).values.numpy()
    hi = torch.cat([grp.hi for grp in groups]).max(0).values.numpy()
    err = torch.as_tensor(row_error(onnx_path, lo, hi, unique.numpy()))[inverse]
    start = 0
    for grp in groups:
        n = grp.rhs.numel()
        grp.rhs = grp.rhs + err[start: start + n].reshape(grp.rhs.shape)
        start += n


def _groups(props) -> list[_Group]:
    by_layout: dict[tuple, list] = {}
    for p, prop in enumerate(props):
        for r, region in enumerate(prop.regions):
            if not region.clauses:
                continue
            ends = np.cumsum([len(rhs) for _, rhs in region.clauses]).tolist()
            spans = tuple((e - len(rhs), e) for (_, rhs), e in zip(region.clauses, ends))
            by_layout.setdefault(spans, []).append((p, r, region))
    out = []
    for spans, items in by_layout.items():
        t = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float64)
        out.append(_Group(
            [(p, r) for p, r, _ in items],
            t([reg.lower for _, _, reg in items]), t([reg.upper for _, _, reg in items]),
            t([np.concatenate([C for C, _ in reg.clauses]) for _, _, reg in items]),
            t([np.concatenate([rhs for _, rhs in reg.clauses]) for _, _, reg in items]),
            spans,
        ))
    return out


def _pgd(g: Graph, grp: _Group, idx: torch.Tensor, restarts: int, steps: int, seed: int):
    """Sign-gradient PGD on units ``idx`` (``restarts`` random starts each, the centre first):
    the best point per unit and its margin, ``(B, n_in)`` and ``(B,)``."""
    lo, hi = grp.lo[idx].repeat_interleave(restarts, 0), grp.hi[idx].repeat_interleave(restarts, 0)
    owner = idx.repeat_interleave(restarts)
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=lo.dtype)
    x[::restarts] = (lo[::restarts] + hi[::restarts]) / 2
    size, decay = (hi - lo) / 4, (1e-3) ** (1 / max(steps, 1))
    best_x, best_m = x.clone(), torch.full((len(x),), torch.inf, dtype=x.dtype)
    for i in range(steps + 1):
        x.requires_grad_(True)
        m = grp.margins(g.forward(x), owner)
        with torch.no_grad():
            better = m < best_m
            best_m, best_x = torch.where(better, m, best_m), torch.where(better[:, None], x, best_x)
        if i == steps or bool((best_m <= 0).all()):
            break
        (grad,) = torch.autograd.grad(m.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - size * grad.sign(), lo), hi)
            size = size * decay
    best_m, pick = best_m.view(-1, restarts).min(1)
    return best_x.view(-1, restarts, x.shape[1])[torch.arange(len(idx)), pick], best_m


class _Run:
    """Bookkeeping of one fast-path run: per region its refuted clauses, per property its verdict."""

    def __init__(self, instances: list[Instance], props, groups: list[_Group], g: Graph):
        self.instances, self.props, self.groups, self.g = instances, props, groups, g
        self.refuted = [torch.zeros(len(grp.regions), len(grp.spans), dtype=torch.bool) for grp in groups]
        self.margin = [torch.full((len(grp.regions),), torch.inf, dtype=torch.float64) for grp in groups]
        self.sat: dict[int, tuple[np.ndarray, str]] = {}  # property -> (confirmed point, stage)
        self.spent = np.zeros(len(props))  # amortised seconds per property
        self.stage_of: dict[int, str] = {}  # property -> latest stage a region of it needed
        self.cache = {str(i.vnnlib): prop for i, prop in zip(instances, props)}  # for confirm_counterexample

    def open_units(self, k: int) -> torch.Tensor:
        grp = self.groups[k]
        done_p = torch.tensor([p in self.sat for p, _ in grp.regions], dtype=torch.bool)
        return torch.nonzero(~self.refuted[k].all(1) & ~done_p).flatten()

    def prove(self, k: int, idx: torch.Tensor, row_lb: torch.Tensor, stage: str) -> None:
        """Record the clauses ``row_lb`` (lower bounds of ``C y - rhs`` on units ``idx``) refutes."""
        grp = self.groups[k]
        clause_lb = grp.clause_values(row_lb)
        new = (clause_lb > TAU) & ~self.refuted[k][idx]
        self.refuted[k][idx] |= new
        lb = torch.where(new, clause_lb, torch.inf).min(1).values
        self.margin[k][idx] = torch.minimum(self.margin[k][idx], lb)
        for i in torch.nonzero(new.any(1)).flatten().tolist():
            self.stage_of[grp.regions[int(idx[i])][0]] = stage  # stages run cheapest first

    def try_points(self, k: int, idx: torch.Tensor, x: torch.Tensor, m: torch.Tensor, stage: str) -> None:
        """Confirm in onnxruntime the points with margin <= 0 (rounded into their box as the model's
        input dtype); a confirmed one makes its property sat."""
        grp = self.groups[k]
        dtype = input_dtype(self.instances[0].onnx)
        for i in torch.nonzero(m <= 0).flatten().tolist():
            p, r = grp.regions[int(idx[i])]
            if p in self.sat:
                continue
            region = self.props[p].regions[r]
            point = round_inside(x[i].detach().numpy(), region.lower, region.upper, dtype)
            cex, _ = confirm_counterexample(self.instances[p], point, self.cache)
            if cex is not None:
                self.sat[p] = (cex, stage)

    def charge(self, k: int, idx: torch.Tensor, seconds: float) -> None:
        """Share ``seconds`` of batched work among the properties of units ``idx``."""
        props = [self.groups[k].regions[int(i)][0] for i in idx]
        for p in props:
            self.spent[p] += seconds / len(props)

    def verdicts(self) -> dict[str, Verdict]:
        out = {}
        for p, inst in enumerate(self.instances):
            if p in self.sat:
                cex, stage = self.sat[p]
                out[inst.key] = Verdict("sat", float(self.spent[p]), cex=cex, stage=stage, log=f"fast path: {stage}")
        proven = {p: True for p in range(len(self.props))}
        margin = {p: float("inf") for p in range(len(self.props))}
        for k, grp in enumerate(self.groups):
            for i, (p, _) in enumerate(grp.regions):
                proven[p] &= bool(self.refuted[k][i].all())
                margin[p] = min(margin[p], float(self.margin[k][i]))
        for p, inst in enumerate(self.instances):
            if p not in self.sat and proven[p]:
                stage = self.stage_of.get(p, "ibp")
                out[inst.key] = Verdict("unsat", float(self.spent[p]), margin=margin[p], stage=stage,
                                        log=f"fast path: {stage}")
        return out


def fast_path(instances: list[Instance], cfg: VerifierConfig | None = None, deadline: Deadline | None = None,
              read=None) -> dict[str, Verdict]:
    """``{instance.key: Verdict}`` for the instances of ONE ONNX model that the batched stages decide
    (``sat`` or ``unsat``, with ``stage`` set); the others are absent. ``read(path) -> Property``
    reads a VNN-LIB file (default :func:`vsbench.spec.vnnlib.read_vnnlib`)."""
    from ..spec.vnnlib import read_vnnlib

    cfg = cfg or VerifierConfig()
    if not instances:
        return {}
    if len({str(i.onnx) for i in instances}) != 1:
        raise ValueError("fast_path takes the instances of one ONNX model")
    model = load_onnx(instances[0].onnx)
    g = model.to_chain() if isinstance(model, Dag) else model
    if g is None:  # not a chain of affine ops and ReLUs: the per-instance verifier takes them all
        return {}
    props = [(read or read_vnnlib)(i.vnnlib) for i in instances]
    groups = _groups(props)
    run = _Run(instances, props, groups, g.to(torch.float64))
    stages = [_centre, _attack]
    try:
        _float32_margins(instances[0].onnx, groups)
        stages = [_centre, _ibp, _crown, _attack, _alpha]
    except UnsupportedModel:  # no float32 error bound for one of its ops: no unsat from here
        pass
    for stage in stages:
        for k in range(len(run.groups)):
            open_ = run.open_units(k)
            for start in range(0, len(open_), cfg.fast_path_batch):
                if deadline is not None and deadline.expired():
                    return run.verdicts()
                idx = open_[start: start + cfg.fast_path_batch]
                t0 = time.monotonic()
                stage(run, k, idx, cfg)
                run.charge(k, idx, time.monotonic() - t0)
    return run.verdicts()


def _centre(run: _Run, k: int, idx, cfg: VerifierConfig) -> None:
    grp = run.groups[k]
    x = (grp.lo[idx] + grp.hi[idx]) / 2
    with torch.no_grad():
        run.try_points(k, idx, x, grp.margins(run.g.forward(x), idx), "attack")


def _ibp(run: _Run, k: int, idx, cfg: VerifierConfig) -> None:
    grp = run.groups[k]
    with torch.no_grad():
        run.prove(k, idx, ibp_spec(run.g, grp.lo[idx], grp.hi[idx], grp.C[idx]) - grp.rhs[idx], "ibp")


def _crown(run: _Run, k: int, idx, cfg: VerifierConfig) -> None:
    grp = run.groups[k]
    lo, hi = grp.lo[idx], grp.hi[idx]
    with torch.no_grad():
        inter = ibp_bounds(run.g, lo, hi)[: run.g.relu_count()]
        run.prove(k, idx, backward(run.g, lo, hi, grp.C[idx], inter)[0] - grp.rhs[idx], "crown")


def _attack(run: _Run, k: int, idx, cfg: VerifierConfig) -> None:
    if cfg.fast_path_attack_restarts and cfg.fast_path_attack_steps:
        x, m = _pgd(run.g, run.groups[k], idx, cfg.fast_path_attack_restarts, cfg.fast_path_attack_steps, seed=k)
        run.try_points(k, idx, x, m, "attack")


def _alpha(run: _Run, k: int, idx, cfg: VerifierConfig) -> None:
    if not cfg.fast_path_alpha_iters:
        return
    grp = run.groups[k]
    lo, hi = grp.lo[idx], grp.hi[idx]
    inter = ibp_bounds(run.g, lo, hi)[: run.g.relu_count()]
    lb, _ = alpha_spec(run.g, lo, hi, grp.C[idx], inter, iters=cfg.fast_path_alpha_iters, lr=cfg.lr_alpha_init)
    run.prove(k, idx, lb.detach() - grp.rhs[idx], "alpha")
