"""Sparse-stored layers (vsbench.train.sparse) compute exactly what the masked dense net computes."""

import pytest
import torch

from vsbench.data import load_dataset
from vsbench.nets import build_net, ibp_init_
from vsbench.train.loop import TrainConfig, Trainer
from vsbench.train.sparse import SparseLayer, SparseLinearOp, sparse_layers, to_dense, to_sparse, train_graph
from vsbench.train.sparsity import get_mask, layer_densities, prunable, random_masks, raw_weight


def _pair(arch, sparsity, seed=0):
    """A masked net and the same net with sparse layers."""
    nets = []
    for _ in range(2):
        torch.manual_seed(seed)
        nets.append(ibp_init_(build_net(arch, "mnist")))
    masked, plain = nets
    random_masks(masked, layer_densities(masked, sparsity), torch.Generator().manual_seed(seed))
    masks = [get_mask(m) for m in prunable(masked)]
    for m, mask in zip(prunable(masked), masks):
        raw_weight(m).data.mul_(mask)
    return masked, to_sparse(plain, masks, (1, 28, 28)), masks


@pytest.mark.parametrize("arch,bound,eps,dense", [("mlp-2x100", "ibp", 0.1, False), ("mlp-2x100", "crown-ibp", 0.2, False),
                                                  ("mlp-2x100", "ibp", 0.3, True), ("cnn-small", "crown-ibp", 0.1, False)])
def test_sparse_layers_match_the_masked_net(arch, bound, eps, dense, data_dir):
    torch.set_num_threads(1)
    x, y = load_dataset("mnist", "train", data_dir, limit=64)
    cfg = TrainConfig(arch=arch, bound=bound, reg_lambda=0.5, train_eps=0.3)
    trainer = Trainer(cfg, x, y, 10, torch.device("cpu"))
    masked, sparse, masks = _pair(arch, 0.95)
    graph = train_graph(sparse, trainer.in_shape, dense)
    assert any(isinstance(op, SparseLinearOp) for op in graph.ops) != dense  # the CSR kernels ran
    results = []
    for model in (masked, sparse):
        loss, stats, _ = trainer.loss(model, x, y, eps, 0.5, 0.5, dense=dense)
        loss.backward()
        results.append((loss.detach(), stats))
    assert results[1][0] == pytest.approx(float(results[0][0]), rel=1e-5)
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)  # losses, accuracies, regulariser
    for m, s, mask in zip(prunable(masked), sparse_layers(sparse), masks):
        grad = raw_weight(m).grad.reshape(-1)
        assert torch.equal(s.index, mask.reshape(-1).nonzero().squeeze(1))
        assert s.values.grad.shape == s.index.shape  # gradients only at the active weights
        scale = float(grad.abs().max())
        assert scale > 0
        torch.testing.assert_close(s.values.grad, grad[s.index], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(s.bias.grad, m.bias.grad, rtol=1e-4, atol=1e-5 * scale)
    with torch.no_grad():
        torch.testing.assert_close(to_dense(sparse)(x), masked(x))
    assert not sparse_layers(sparse) and [m.weight.count_nonzero() for m in prunable(sparse)] == \
        [m.count_nonzero() for m in masks]


def test_rewire_keeps_weights_and_adam_state(data_dir):
    layer = torch.nn.Linear(4, 3)
    s = SparseLayer(layer, torch.tensor([0, 5, 7, 11]), (4,))
    opt = torch.optim.Adam([s.values], lr=0.1)
    s.values.grad = torch.ones(4)
    opt.step()
    before = s.weight().detach().reshape(-1).clone()
    moment = opt.state[s.values]["exp_avg"].clone()
    s.rewire(torch.tensor([11, 2, 5, 9]), opt)
    assert s.index.tolist() == [2, 5, 9, 11]
    assert s.values.tolist() == pytest.approx([0.0, float(before[5]), 0.0, float(before[11])])
    assert opt.state[s.values]["exp_avg"].tolist() == pytest.approx([0.0, float(moment[1]), 0.0, float(moment[3])])
    assert s.pattern().shape == (3, 4) and s.pattern().cols.tolist() == [2, 1, 1, 3]
