"""Input splitting never contradicts an exact oracle (every ReLU pattern's LP, scipy) on small
low-dimensional nets, and agrees with the ACAS Xu reference verdicts."""

import csv
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from vsbench.bounds.graph import Graph
from vsbench.spec.api import Deadline, Instance, Property, Region
from vsbench.spec.vnnlib import robustness_property
from vsbench.verify.builtin import BuiltinVerifier, verify_property
from vsbench.verify.config import VerifierConfig
from vsbench.verify.milp import TAU

ACASXU = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-acasxu"
# no PGD before the split: every verdict comes from the input split itself
SPLIT_ONLY = VerifierConfig(attack_restarts=0, attack_steps=0, input_split_batch=16)


def _problem(seed):
    rng = np.random.default_rng(seed)
    n_in, w1, w2, n_out = int(rng.integers(1, 4)), int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3
    layers = [(rng.normal(size=(o, i)), rng.normal(size=o) * 0.5) for i, o in ((n_in, w1), (w1, w2), (w2, n_out))]
    c, r = rng.normal(size=n_in), rng.uniform(0.1, 1.5)
    y = Graph.from_dense([(torch.as_tensor(W), torch.as_tensor(b)) for W, b in layers]).forward(torch.as_tensor(c)[None])
    label = int(y.argmax())
    clauses = robustness_property(c, label, r, n_out, clip=None).regions[0].clauses
    if seed % 3 == 1:  # one clause of two rows: violated only where both hold
        clauses = [(np.vstack([C for C, _ in clauses]), np.zeros(2))]
    return layers, Region(c - r, c + r, clauses)


def _oracle(layers, region) -> float:
    """min over the box of the property's margin (``min_clause max_row (C y - rhs)``), exactly: the
    network is affine on each ReLU activation pattern, so one LP per pattern and clause."""
    hidden = [len(b) for _, b in layers[:-1]]
    best = np.inf
    n_in = len(region.lower)
    for pattern in itertools.product([0, 1], repeat=sum(hidden)):
        # y = M x + v on the pattern; A_ub x <= b_ub keeps each neuron on its side
        M, v, A_ub, b_ub, k = np.eye(n_in), np.zeros(n_in), [], [], 0
        for (W, b), n in zip(layers[:-1], hidden):
            z_M, z_v = W @ M, W @ v + b
            on = np.array(pattern[k: k + n], dtype=bool)
            k += n
            A_ub += [-z_M[on], z_M[~on]]  # on: z >= 0; off: z <= 0
            b_ub += [z_v[on], -z_v[~on]]
            M, v = z_M * on[:, None], z_v * on
        W, b = layers[-1]
        M, v = W @ M, W @ v + b
        for C, rhs in region.clauses:
            # min t s.t. C (M x + v) - rhs <= t, pattern constraints, x in the box
            rows = C @ M
            A = np.vstack([np.hstack([a, np.zeros((len(a), 1))]) for a in A_ub] + [np.hstack([rows, -np.ones((len(C), 1))])])
            bvec = np.concatenate(b_ub + [rhs - C @ v])
            res = linprog(np.r_[np.zeros(n_in), 1.0], A_ub=A, b_ub=bvec,
                          bounds=list(zip(region.lower, region.upper)) + [(None, None)], method="highs")
            if res.status == 0:
                best = min(best, res.fun)
    return best


def test_input_split_never_contradicts_the_pattern_oracle():
    torch.set_num_threads(1)
    counts = {"sat": 0, "unsat": 0}
    for seed in range(40):
        layers, region = _problem(seed)
        g = Graph.from_dense([(torch.as_tensor(W), torch.as_tensor(b)) for W, b in layers])
        prop = Property([region])
        v = verify_property(g, prop, Deadline(20), config=SPLIT_ONLY)
        truth = _oracle(layers, region)
        assert v.status in ("sat", "unsat"), (seed, v.status, v.log)
        assert v.stage == "input-split", (seed, v.log)
        if v.status == "sat":
            assert prop.violated_by(v.cex, g.forward(torch.as_tensor(v.cex)[None]).numpy()), seed
            assert truth <= 0, (seed, truth)
        else:
            assert truth > 0, (seed, truth, v.margin)
            assert v.margin >= TAU
        counts[v.status] += 1
    assert counts["sat"] >= 5 and counts["unsat"] >= 5, counts


def test_input_split_covers_the_box_it_proves():
    """A property violated in one small corner only: the split must reach that corner (sat), and
    the same property with the corner cut off must be proven (unsat)."""
    torch.set_num_threads(1)
    # y0 = x0 + x1, y1 = 1.9: violated (y0 >= y1, i.e. y1 - y0 <= 0) only near the corner (1, 1)
    layers = [(np.eye(2), np.zeros(2)), (np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([0.0, 1.9]))]
    g = Graph.from_dense([(torch.as_tensor(W), torch.as_tensor(b)) for W, b in layers])
    clause = (np.array([[-1.0, 1.0]]), np.zeros(1))
    sat = verify_property(g, Property([Region(np.zeros(2), np.ones(2), [clause])]), Deadline(20), config=SPLIT_ONLY)
    assert sat.status == "sat" and sat.cex.sum() >= 1.9 and sat.stage == "input-split"
    unsat = verify_property(g, Property([Region(np.zeros(2), np.array([1.0, 0.89]), [clause])]), Deadline(20),
                            config=SPLIT_ONLY)
    assert unsat.status == "unsat" and unsat.stage == "input-split"


@pytest.mark.skipif(not ACASXU.exists(), reason="acasxu benchmark not available")
@pytest.mark.parametrize("net,prop", [
    ("4_4", "prop_3"),  # unsat, split in a few steps
    ("1_2", "prop_1"),  # unsat only with the float32 error bounded per sub-box (the whole box's exceeds the margin)
    ("2_7", "prop_2"),  # sat
])
def test_acasxu_reference_verdicts(net, prop):
    torch.set_num_threads(1)
    ref = {(r["onnx"], r["vnnlib"]): r["verdict"] for r in csv.DictReader((ACASXU / "reference_verdicts.csv").open())}
    onnx, vnnlib = f"ACASXU_run2a_{net}_batch_2000.onnx", f"{prop}.vnnlib"
    v = BuiltinVerifier().verify(Instance(ACASXU / onnx, ACASXU / vnnlib, 116), 116)
    assert v.status == ref[(onnx, vnnlib)], v.log
    assert v.stage in ("attack", "input-split")


class _AfterChecks(Deadline):
    """A deadline that passes at its ``n``-th check (so where the verifier checks it is what is tested)."""

    def __init__(self, n: int):
        super().__init__(1e9)
        self.n = n

    def expired(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.skipif(not ACASXU.exists(), reason="acasxu benchmark not available")
def test_input_split_stops_inside_a_step_at_the_deadline():
    """On an ACAS Xu instance that needs many steps, a deadline passing during the first step ends the
    split with ``timeout`` in that step (the deadline is checked between a step's stages and layers,
    not only once per step); with more checks allowed it gets further."""
    from vsbench.bounds.float_error import ChainError
    from vsbench.bounds.onnx_ops import load_onnx
    from vsbench.spec.vnnlib import read_vnnlib
    from vsbench.verify import input_split
    from vsbench.verify.builtin import Trace, _Checker, dense_path

    torch.set_num_threads(1)
    onnx = ACASXU / "ACASXU_run2a_1_1_batch_2000.onnx"
    graph = dense_path(load_onnx(onnx))
    prop = read_vnnlib(ACASXU / "prop_5.vnnlib")
    check = _Checker(graph.to(torch.float64), prop, onnx)
    steps = []
    for n in (8, 60):
        log = Trace()
        st, _ = input_split.verify_box(graph, prop.regions[0], _AfterChecks(n), check, log, VerifierConfig(),
                                       ChainError(onnx))
        assert st == "timeout", log
        steps.append(int(log[-1].split("after ")[1].split(" steps")[0]))
    assert steps[0] == 1 and steps[1] > 1, steps


def test_clipping_keeps_every_point_that_can_violate():
    """Domain clipping (which can prove a clause by clipping its box to nothing) keeps every sampled
    point where all rows of an open clause have their linear bound at most the threshold."""
    from vsbench.verify.input_split import _clip, _Rows

    rng = np.random.default_rng(0)
    region = Region(np.zeros(3), np.ones(3), [(rng.normal(size=(2, 4)), np.zeros(2)), (rng.normal(size=(1, 4)), np.zeros(1))])
    rows = _Rows(region)
    B, R = 64, 3
    lo = torch.as_tensor(rng.uniform(-1, 0, size=(B, 3)))
    hi = lo + torch.as_tensor(rng.uniform(0.01, 1, size=(B, 3)))
    A = torch.as_tensor(rng.normal(size=(B, R, 3)))
    c = torch.as_tensor(rng.normal(size=(B, R)))
    row_lb = c + (A * torch.where(A >= 0, lo[:, None], hi[:, None])).sum(-1)  # min over the box of A x + c
    thr = torch.full((B, R), 0.1, dtype=torch.float64)
    proven = torch.zeros(B, 2, dtype=torch.bool)
    new_lo, new_hi, empty = _clip(lo, hi, row_lb, A, thr, rows, proven)
    x = lo[:, None] + torch.rand(B, 4000, 3, dtype=torch.float64) * (hi - lo)[:, None]
    lin = torch.einsum("bsn,brn->bsr", x, A) + c[:, None]
    can = torch.stack([(lin[..., s:e] <= thr[:, None, s:e]).all(-1) for s, e in rows.spans], -1)  # (B, S, clauses)
    inside = ((x >= new_lo[:, None]) & (x <= new_hi[:, None])).all(-1)
    assert bool(inside[can.any(-1)].all())
    assert not bool((can & empty[:, None]).any())
    assert int(can.any(-1).sum()) > 1000 and bool(empty.any()) and bool((new_hi - new_lo < hi - lo).any())


def test_forward_bounds_contain_sampled_activations():
    from vsbench.bounds.forward import forward_bounds
    from vsbench.bounds.graph import ReLU

    torch.manual_seed(0)
    layers = [(torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)),
              (torch.randn(8, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)),
              (torch.randn(2, 8, dtype=torch.float64), torch.randn(2, dtype=torch.float64))]
    g = Graph.from_dense(layers)
    lo = torch.rand(16, 3, dtype=torch.float64) - 1
    hi = lo + torch.rand(16, 3, dtype=torch.float64)
    bounds = forward_bounds(g, lo, hi)
    x = lo[:, None] + torch.rand(16, 2000, 3, dtype=torch.float64) * (hi - lo)[:, None]
    z, k = x.reshape(-1, 3), 0
    for op in g.ops:
        if isinstance(op, ReLU):
            l, u = (b.repeat_interleave(2000, 0) for b in bounds[k])
            assert bool((z >= l - 1e-9).all() and (z <= u + 1e-9).all()), k
            k += 1
        z = op.forward(z)
    assert k == 2


def test_edge_falsification_finds_a_violation_inside_an_edge():
    """y = x0 - 4 |x1 - 0.5| on [0, 1]^2 reaches 0.9 only near the middle of the edge x0 = 1 (not at a
    corner): the edge points find a point there that the checker confirms; with 1.01 there is none."""
    from vsbench.verify.builtin import _Checker
    from vsbench.verify.input_split import _falsify_edges

    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    g = Graph.from_dense([(t([[0, 1], [0, -1], [1, 0]]), t([-0.5, 0.5, 0])), (t([[-4, -4, 1]]), t([0]))])
    lo, hi = t([0, 0]), t([1, 1])
    for threshold, found in [(0.9, True), (1.01, False)]:
        region = Region(np.zeros(2), np.ones(2), [(np.array([[-1.0]]), np.array([-threshold]))])
        check = _Checker(g, Property([region]))
        x = _falsify_edges(g, region, lo, hi, check)
        assert (x is not None) == found
        if found:
            assert abs(x[0] - 1) < 1e-6 and abs(x[1] - 0.5) <= 0.025 + 1e-6, x
            assert float(g.forward(t(x)[None])[0, 0]) >= threshold
