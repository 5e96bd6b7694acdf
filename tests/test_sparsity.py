"""Masks (parametrize), densities, magnitude / structured pruning, compaction and counting."""

import pytest
import torch

from vsbench.bounds.graph import from_torch
from vsbench.nets import build_net
from vsbench.train.sparsity import (
    compact, flops, get_mask, layer_densities, magnitude_masks, nonzero_params, prunable, random_masks,
    remove_parametrizations, set_unit_mask, sparsity, structured_keep,
)


@pytest.mark.parametrize("kind", ["erk", "uniform"])
def test_densities_reach_target(kind):
    model = build_net("cnn-small", "mnist")
    dens = layer_densities(model, 0.9, kind)
    assert all(0 < d <= 1 for d in dens)
    random_masks(model, dens, torch.Generator().manual_seed(0))
    assert sparsity(model) == pytest.approx(0.9, abs=1e-3)
    if kind == "erk":  # small layers denser than large ones
        assert dens[0] > dens[2]


def test_masks_survive_optimiser_steps_and_reach_graph():
    torch.manual_seed(0)
    model = build_net("mlp-2x100", "mnist")
    magnitude_masks(model, 0.8, "global")
    masks = [get_mask(m).clone() for m in prunable(model)]
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.rand(8, 1, 28, 28)).square().sum().backward()
        opt.step()
    for m, mask in zip(prunable(model), masks):
        assert torch.all(m.weight[mask == 0] == 0)
    assert sparsity(model) == pytest.approx(0.8, abs=1e-3)
    graph = from_torch(model, (1, 28, 28))
    assert torch.count_nonzero(graph.ops[1].weight) == torch.count_nonzero(prunable(model)[0].weight)
    x = torch.rand(2, 1, 28, 28)
    before = model(x)
    remove_parametrizations(model)
    assert not any(hasattr(m, "parametrizations") for m in prunable(model))
    assert torch.allclose(model(x), before) and sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_layer_scope_prunes_each_layer():
    model = build_net("mlp-2x100", "mnist")
    magnitude_masks(model, 0.5, "layer")
    for m in prunable(model):
        assert (m.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("arch", ["mlp-2x100", "cnn-small"])
def test_structured_compaction_preserves_function(arch):
    torch.manual_seed(0)
    model = build_net(arch, "mnist")
    dense_w = sum(m.weight.numel() for m in prunable(model))
    keep = structured_keep(model, 0.9)
    for m, k in zip(prunable(model)[:-1], keep):
        unit = torch.zeros(m.weight.shape[0])
        unit[torch.randperm(len(unit))[:k]] = 1
        set_unit_mask(m, unit)
    x = torch.rand(4, 1, 28, 28)
    small = compact(model, (1, 28, 28))
    assert torch.allclose(small(x), model(x), atol=1e-5)
    assert [m.weight.shape[0] for m in prunable(small)] == keep + [10]
    n = sum(m.weight.numel() for m in prunable(small))
    assert 0.08 * dense_w <= n <= 0.1 * dense_w
    assert nonzero_params(small) <= nonzero_params(model)
    assert flops(small, (1, 28, 28)) < flops(build_net(arch, "mnist"), (1, 28, 28))
