"""Our bounds against auto_LiRPA's on the same networks (float64); skipped unless auto_LiRPA imports
(/work/shared/tools/abcrown.md says how to build it).

IBP and CROWN must match to 1e-6. alpha-CROWN is never looser than auto_LiRPA's by more than
``ALPHA_MARGIN`` of the output's CROWN bound width (both run 20 Adam steps, from different starting
slopes, so either may end slightly tighter). auto_LiRPA runs with float64 as torch's default dtype (its
alpha-CROWN keeps its best bounds in a default-dtype buffer), as alpha-beta-CROWN's ``double_fp`` does.
"""

import pytest
import torch
from torch import nn

from vsbench.bounds.alpha import alpha_bounds
from vsbench.bounds.crown import crown_bounds
from vsbench.bounds.graph import from_torch
from vsbench.bounds.ibp import ibp_bounds
from vsbench.nets import build_net

auto_lirpa = pytest.importorskip("auto_LiRPA")
perturbations = pytest.importorskip("auto_LiRPA.perturbations")

ALPHA_MARGIN = 1e-2  # per output, relative to the output's CROWN bound width


def _nets():
    torch.manual_seed(0)
    yield "mlp", nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(),
                               nn.Linear(20, 5)), (1, 3, 4)
    yield "cnn", build_net("cnn-small", "mnist", widths=[4, 4, 16]).eval(), (1, 28, 28)


@pytest.fixture(autouse=True)
def _float64_default():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def _theirs(model, lo, hi, method):
    lirpa = auto_lirpa.BoundedModule(model, torch.zeros_like(lo), device="cpu")
    ptb = perturbations.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
    x = auto_lirpa.BoundedTensor((lo + hi) / 2, ptb)
    return lirpa.compute_bounds(x=(x,), method=method)


@pytest.mark.parametrize("name, model, shape", list(_nets()), ids=lambda v: v if isinstance(v, str) else "")
def test_bounds_match_auto_lirpa(name, model, shape):
    model = model.double().eval()
    g = from_torch(model, shape).to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    lo, hi = (x0 - 0.02).clamp(0, 1), (x0 + 0.02).clamp(0, 1)
    flat = (lo.reshape(2, -1), hi.reshape(2, -1))

    ours = ibp_bounds(g, *flat)[-1]
    theirs = _theirs(model, lo, hi, "IBP")
    assert torch.allclose(ours[0], theirs[0], atol=1e-6) and torch.allclose(ours[1], theirs[1], atol=1e-6)

    ours = crown_bounds(g, *flat)[-1]
    theirs = _theirs(model, lo, hi, "CROWN")
    assert torch.allclose(ours[0], theirs[0], atol=1e-6) and torch.allclose(ours[1], theirs[1], atol=1e-6)

    width = (ours[1] - ours[0]).clamp(min=1e-9)
    ours = alpha_bounds(g, *flat, iters=20)[-1]
    theirs = _theirs(model, lo, hi, "alpha-CROWN")
    assert torch.all(ours[0] >= theirs[0] - ALPHA_MARGIN * width)
    assert torch.all(ours[1] <= theirs[1] + ALPHA_MARGIN * width)
