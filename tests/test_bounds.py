"""Soundness and tightness relations of IBP, CROWN, alpha-CROWN and beta-CROWN on tiny random nets."""

import pytest
import torch
from torch import nn

from vsbench.bounds.alpha import alpha_bounds, alpha_spec, init_slopes
from vsbench.bounds.beta import beta_spec, split_bounds
from vsbench.bounds.crown import backward, crown_bounds, crown_ibp_spec, crown_spec
from vsbench.bounds.graph import Graph, from_torch
from vsbench.bounds.ibp import ibp_bounds, ibp_spec


def _nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    conv = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 12), nn.ReLU(),
        nn.Linear(12, 4),
    )
    return [(mlp, (6,)), (conv, (1, 8, 8))]


@pytest.mark.parametrize("net", range(2))
def test_bounds_contain_sampled_outputs(net):
    model, shape = _nets()[net]
    g = from_torch(model.double(), shape).to(torch.float64)
    n = g.n_in
    gen = torch.Generator().manual_seed(net)
    x0 = torch.rand(3, n, generator=gen, dtype=torch.float64)
    lo, hi = x0 - 0.15, x0 + 0.15
    xs = lo[:, None] + (hi - lo)[:, None] * torch.rand(3, 4000, n, generator=gen, dtype=torch.float64)
    ys = g.forward(xs.reshape(-1, n)).reshape(3, 4000, -1)
    cb = crown_bounds(g, lo, hi)
    for bounds in (ibp_bounds(g, lo, hi), cb, alpha_bounds(g, lo, hi, iters=10)):
        l, u = bounds[-1]
        assert (ys >= l[:, None] - 1e-9).all() and (ys <= u[:, None] + 1e-9).all()
    C = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    exact = torch.einsum("bsn,bkn->bks", C, ys).min(1).values  # >= the true minimum
    ibp = ibp_spec(g, lo, hi, C)
    crown = crown_spec(g, lo, hi, C)
    alpha, _ = alpha_spec(g, lo, hi, C, cb, iters=15)
    for lb in (ibp, crown, crown_ibp_spec(g, lo, hi, C), alpha):
        assert (lb <= exact + 1e-9).all()
    assert (alpha >= crown - 1e-12).all()  # alpha starts at CROWN and keeps the best iterate
    # on the first ReLU both are exact for an affine map of a box
    ib = ibp_bounds(g, lo, hi)
    assert torch.allclose(cb[0][0], ib[0][0]) and torch.allclose(cb[0][1], ib[0][1])
    # a CROWN bound was strictly useful somewhere (the test can fail if CROWN degenerates to IBP)
    assert (crown > ibp + 1e-6).any()


def test_crown_bounds_of_only_the_ibp_unstable_neurons_change_no_later_bound():
    """Against CROWN on every neuron of every layer (each intersected with IBP), written out here."""
    model, shape = _nets()[1]
    g = from_torch(model.double(), shape).to(torch.float64)
    x0 = torch.rand(2, g.n_in, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lo, hi = x0 - 0.05, x0 + 0.05
    ibp = ibp_bounds(g, lo, hi)
    relus = [i for i, op in enumerate(g.ops) if type(op).__name__ == "ReLU"] + [len(g.ops)]
    full = []
    for k, end in enumerate(relus):
        n = ibp[k][0].shape[1]
        eye = torch.eye(n, dtype=torch.float64)
        lb = backward(Graph(g.ops[:end], g.in_shape), lo, hi, torch.cat([eye, -eye]).expand(2, 2 * n, n), full)[0]
        full.append((torch.maximum(lb[:, :n], ibp[k][0]), torch.minimum(-lb[:, n:], ibp[k][1])))
    ours = crown_bounds(g, lo, hi)
    stable = [((l >= 0) | (u <= 0)).all(0) for l, u in ibp[:-1]]
    assert sum(int(s.sum()) for s in stable) > 0 and not all(s.all() for s in stable)  # both kinds occur
    for (l, u), (fl, fu), s in zip(ours[:-1], full[:-1], stable):
        assert torch.equal(l[:, ~s], fl[:, ~s]) and torch.equal(u[:, ~s], fu[:, ~s])  # unstable: CROWN
        assert ((l[:, s] >= 0) == (fl[:, s] >= 0)).all()  # stable: the same sign, so the same relaxation
    assert torch.allclose(ours[-1][0], full[-1][0], rtol=0, atol=1e-12)
    assert torch.allclose(ours[-1][1], full[-1][1], rtol=0, atol=1e-12)


def test_beta_without_splits_equals_alpha_and_split_domains_are_sound():
    model, shape = _nets()[0]
    g = from_torch(model.double(), shape).to(torch.float64)
    lo, hi = -torch.ones(1, 6, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64)
    C = torch.tensor([[[1.0, -1.0, 0.0, 0.0]]], dtype=torch.float64)
    inter = crown_bounds(g, lo, hi)[:-1]
    slopes = init_slopes(inter, 1)
    splits = [torch.zeros_like(l) for l, _ in inter]
    lb_beta = beta_spec(g, lo, hi, C, inter, splits, slopes, None, 0)[0]
    lb_alpha = alpha_spec(g, lo, hi, C, inter, iters=0, slopes=slopes)[0]
    assert torch.allclose(lb_beta, lb_alpha)
    # split the first unstable neuron of ReLU 0 both ways; each side must bound its own points
    l0, u0 = inter[0]
    j = int(torch.nonzero((l0[0] < 0) & (u0[0] > 0))[0])
    xs = lo + (hi - lo) * torch.rand(20000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z0 = g.ops[0].forward(xs)[:, j]
    vals = g.forward(xs) @ C[0].T
    for sign in (1.0, -1.0):
        sp = [s.clone() for s in splits]
        sp[0][0, j] = sign
        lb, _, _, _ = beta_spec(g, lo, hi, C, split_bounds(inter, sp), sp, iters=20)
        inside = (z0 * sign >= 0)
        assert inside.any() and (lb[0, 0] <= vals[inside, 0].min() + 1e-9)


def test_split_refine_is_sound_and_tightens():
    """Refined intermediate bounds contain the exact range of every neuron (its ends found by the
    MILP and attained at the MILP's points) and are tighter than alpha-CROWN's somewhere."""
    from vsbench.bounds.graph import Graph
    from vsbench.bounds.refine import split_refine
    from vsbench.verify.milp import milp_clause

    tighter = 0.0
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        sizes = [4, 10, 10, 8]
        f64 = dict(generator=gen, dtype=torch.float64)
        layers = [(torch.randn(o, i, **f64), 0.5 * torch.randn(o, **f64)) for i, o in zip(sizes, sizes[1:])]
        lo = torch.rand(1, 4, generator=gen, dtype=torch.float64)
        hi = lo + 0.6
        g = Graph.from_dense(layers)
        alpha = alpha_bounds(g, lo, hi, iters=10)[:-1]
        refined = split_refine(layers, lo, hi, alpha, K=3, iters=20)
        flat = lambda bs: [(l[0], u[0]) for l, u in bs]  # noqa: E731
        for k in range(1, len(refined)):
            (la, ua), (lr, ur) = alpha[k], refined[k]
            assert (lr >= la).all() and (ur <= ua).all()
            tighter += float(((ua - la) - (ur - lr)).sum())
            head = Graph.from_dense(layers[: k + 1])
            for j in range(lr.shape[1]):
                for sign in (1.0, -1.0):  # minimise sign * z_j
                    C = torch.zeros(1, lr.shape[1], dtype=torch.float64)
                    C[0, j] = sign
                    rhs = torch.tensor([float(ua[0, j] if sign > 0 else -la[0, j]) + 1.0], dtype=torch.float64)
                    status, x, _ = milp_clause(layers[: k + 1], lo[0], hi[0], flat(alpha[:k]), C, rhs, 10)
                    assert status == "sat" and x is not None
                    x = x.clip(lo[0].numpy(), hi[0].numpy())  # HiGHS meets bounds within its tolerance only
                    z = head.forward(torch.as_tensor(x, dtype=torch.float64)[None])[0, j]
                    assert lr[0, j] <= z + 1e-9 and z <= ur[0, j] + 1e-9
    assert tighter > 1.0
