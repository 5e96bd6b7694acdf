"""Every architecture builds, normalises inside the model, and matches its bound graph."""

import copy

import pytest
import torch

from vsbench.bounds.graph import from_torch
from vsbench.bounds.ibp import ibp_bounds
from vsbench.data import DATASETS
from vsbench.nets import (Normalize, build_from_layers, build_net, describe_layers, fold_batchnorm, hidden_widths,
                          list_nets)
from vsbench.train.sparsity import BATCHNORMS, prunable


@pytest.mark.parametrize("name", list_nets())
def test_graph_matches_model(name):
    torch.manual_seed(0)
    model = build_net(name, DATASETS["mnist"])
    assert isinstance(model[0], Normalize)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, 10)
    graph = from_torch(model, (1, 28, 28))
    assert torch.allclose(graph.forward(x), out, atol=1e-5)
    rebuilt = build_from_layers(describe_layers(model))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt(x), out)


@pytest.mark.parametrize("name", ["mlp-2x100-bn", "cnn-small-bn"])
def test_batchnorm_trains_on_batch_statistics_and_folds_away(name):
    """In training mode the graph's BatchNorm is the affine map of the clean batch's statistics
    (the first input it sees), updating the running statistics once as torch does; IBP bounds hold
    for that map; folding gives the eval-mode function with no BatchNorm and zeros kept."""
    torch.manual_seed(0)
    model = build_net(name, "mnist")
    ref = copy.deepcopy(model)
    x = torch.rand(32, 1, 28, 28)
    graph = from_torch(model, (1, 28, 28))
    assert torch.allclose(graph.forward(x), ref(x), atol=1e-5)
    lo, hi = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    l, u = ibp_bounds(graph, lo, hi)[-1]
    for _ in range(10):
        y = graph.forward(lo + (hi - lo) * torch.rand_like(x))
        assert (y >= l - 1e-4).all() and (y <= u + 1e-4).all()
    bns = [m for m in model if isinstance(m, BATCHNORMS)]
    assert len(bns) == (3 if name.startswith("cnn") else 2)
    for bn, bn_ref in zip(bns, [m for m in ref if isinstance(m, BATCHNORMS)]):
        assert int(bn.num_batches_tracked) == 1
        assert torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var, bn_ref.running_var, atol=1e-6)
    with torch.no_grad():
        prunable(model)[0].weight[::2] = 0
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, BATCHNORMS) for m in folded)
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert (prunable(folded)[0].weight[::2] == 0).all()
    assert fold_batchnorm(folded) is folded


def test_normalize_affine_scale_matches_forward():
    norm = Normalize([0.1307], [0.3081])
    x = torch.rand(2, 1, 28, 28)
    a, b = norm.affine_scale((1, 28, 28))
    assert torch.allclose(x.reshape(2, -1) * a + b, norm(x).reshape(2, -1))


def test_ibp_box_contains_model_outputs():
    torch.manual_seed(1)
    model = build_net("cnn-small", "fashion-mnist")
    x = torch.rand(4, 1, 28, 28)
    lo, hi = ibp_bounds(from_torch(model, (1, 28, 28)), (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1))[-1]
    for _ in range(5):
        y = model((x + (torch.rand_like(x) - 0.5) * 0.1).clamp(0, 1))
        assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


def test_widths_and_errors():
    assert hidden_widths(build_net("cnn-small", "mnist", widths=[3, 5, 7])) == [3, 5, 7]
    with pytest.raises(ValueError, match="unknown architecture 'mlp-9'"):
        build_net("mlp-9", "mnist")
    with pytest.raises(ValueError, match="unknown layer type"):
        build_from_layers([{"type": "softmax"}])
