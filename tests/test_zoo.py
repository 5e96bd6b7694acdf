"""The sparsifier zoo on real MNIST: each method reaches its target (mask, units, rank or grafted
neurons), its ONNX file holds exactly the counted nonzero parameters and FLOPs, its checkpoint
round-trips, and the built-in verifier's verdicts on it hold up (a ``sat`` replays in
onnxruntime, an ``unsat`` survives sampling the box)."""

from functools import cache

import numpy as np
import onnx
import pytest
import torch

from vsbench.bounds.crown import crown_bounds
from vsbench.bounds.graph import from_torch
from vsbench.bounds.ibp import ibp_bounds
from vsbench.data import load_dataset
from vsbench.export.onnx import export_onnx, onnx_stats
from vsbench.nets import GraftReLU, build_net
from vsbench.onnx_io import confirm_counterexample, run_onnx
from vsbench.spec.api import Instance
from vsbench.spec.vnnlib import robustness_property, write_vnnlib
from vsbench.suites import load_suite
from vsbench.train.checkpoint import load_checkpoint, save_checkpoint
from vsbench.train.loop import TrainConfig, train
from vsbench.train.methods import list_methods
from vsbench.train.methods.linearity_graft import initial_line
from vsbench.train.methods.lowrank import choose_components
from vsbench.train.sparsity import prunable

TINY = dict(arch="mlp-2x100", epochs=2, n_train=256, batch_size=64, eps=0.1, ramp_epochs=1, eval_test=100)
ZOO = {"snip": {"prune", "train"}, "lottery": {"pretrain", "prune", "retrain"},
       "stability-prune": {"pretrain", "prune", "finetune"}, "slimming": {"train", "prune", "finetune"},
       "lowrank": {"pretrain", "rank", "finetune"}, "linearity-graft": {"pretrain", "graft", "finetune"}}
TARGET = 0.9


def test_zoo_suite_runs_every_method_at_three_levels():
    suite = load_suite("mnist-eps0.3-zoo")
    assert {m.name for m in suite.methods} == {m for m in list_methods() if not m.startswith("test-")}
    assert all(m.sparsity == [0.5, 0.9, 0.99] for m in suite.methods if m.name != "dense")


@cache
def trained(method: str):
    torch.set_num_threads(1)
    return train(TrainConfig(method=method, sparsity=TARGET, **TINY))


def grafted_fraction(model) -> float:
    grafts = [m for m in model if isinstance(m, GraftReLU)]
    return sum(int((g.keep == 0).sum()) for g in grafts) / sum(g.keep.numel() for g in grafts)


@pytest.mark.parametrize("method", sorted(ZOO))
def test_method_reaches_its_target_and_counts_match_the_onnx_file(method, tmp_path):
    res = trained(method)
    assert set(res.phases) == ZOO[method] and all(t > 0 for t in res.phases.values())
    if method == "linearity-graft":  # sparsity = fraction of hidden ReLUs grafted; weights dense
        assert grafted_fraction(res.model) == pytest.approx(TARGET, abs=0.005)
        assert res.info["sparsity"] == 0.0
    else:  # weights removed (slimming: whole units; lowrank: by the rank), never fewer than asked
        assert TARGET <= res.info["sparsity"] <= TARGET + 0.011
    sizes = [m.weight.shape[0] for m in prunable(res.model)]
    if method == "slimming":
        assert len(sizes) == 3 and sizes[:2] < [100, 100] and sizes[2] == 10  # compacted
    elif method == "lowrank":
        assert len(sizes) == 6 and sizes[1::2] == [100, 100, 10]  # each layer: rank-r factor, then the output
    path = export_onnx(res.model, (1, 28, 28), tmp_path / "m.onnx")  # checked against torch in onnxruntime
    stats = onnx_stats(path)
    assert stats["nonzero_params"] == res.info["nonzero_params"] and stats["flops"] == res.info["flops"]
    folder = save_checkpoint(tmp_path / "model", res.model, {"in_shape": [1, 28, 28]})
    model, _ = load_checkpoint(folder)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), res.model.eval()(x))


def test_lowrank_and_graft_export_with_plain_ops(tmp_path):
    ops = {m: {n.op_type for n in onnx.load(str(export_onnx(trained(m).model, (1, 28, 28), tmp_path / f"{m}.onnx")))
               .graph.node} for m in ("lowrank", "linearity-graft")}
    assert ops["lowrank"] <= {"Sub", "Div", "Flatten", "Gemm", "MatMul", "Relu"}
    assert ops["linearity-graft"] <= {"Sub", "Div", "Flatten", "Gemm", "Relu", "Mul", "Add"} and "Mul" in ops["linearity-graft"]


def test_lottery_budget_counts_every_round():
    """Default 3 rounds rewound to epoch 1: one dense run, then 3 retrainings of epochs - 1."""
    rows = trained("lottery").history
    assert [r["phase"] for r in rows] == ["pretrain"] * 2 + ["retrain"] * 3


def test_lowrank_component_choice_fits_the_budget():
    scores = [torch.tensor([5.0, 1.0, 0.5]), torch.tensor([0.1, 4.0])]
    keep = choose_components(scores, [10, 3], budget=26)  # each layer's best (13), 1.0 (23), not 0.5 (33), 0.1 (26)
    assert [k.tolist() for k in keep] == [[0, 1], [0, 1]]


def _grafted_net(keep_first: float) -> torch.nn.Sequential:
    """mlp-2x100 with random grafts: a ``keep_first`` share of the first ReLU layer kept, the
    second layer fully grafted."""
    net = build_net("mlp-2x100", "mnist")
    for k, i in enumerate(i for i, m in enumerate(net) if isinstance(m, torch.nn.ReLU)):
        g = GraftReLU((100,))
        with torch.no_grad():
            g.keep.copy_((torch.rand(100) < keep_first).float() if k == 0 else torch.zeros(100))
            g.slope.uniform_(-1, 1)
            g.intercept.uniform_(-0.5, 0.5)
        net[i] = g
    return net.eval()


def test_grafted_bounds_are_sound_and_exact_for_grafted_neurons():
    """IBP and CROWN over a net with grafted neurons enclose sampled outputs; with every neuron
    grafted the net is affine and CROWN's bounds are the exact extremes (from its Jacobian)."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 28, 28)
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    net = _grafted_net(0.5)
    graph = from_torch(net, (1, 28, 28))
    with torch.no_grad():
        y = net(lo + (hi - lo) * torch.rand(2000, 1, 28, 28))
        for l, u in (ibp_bounds(graph, lo, hi)[-1], crown_bounds(graph, lo, hi)[-1]):
            assert (y >= l - 1e-5).all() and (y <= u + 1e-5).all()
    affine = _grafted_net(0.0)
    A = torch.autograd.functional.jacobian(affine, x).reshape(10, -1)
    with torch.no_grad():
        mid = affine((lo + hi) / 2)[0]
        rad = A.abs() @ ((hi - lo) / 2).reshape(-1)
        l, u = crown_bounds(from_torch(affine, (1, 28, 28)), lo, hi)[-1]
    assert torch.allclose(l[0], mid - rad, atol=1e-4) and torch.allclose(u[0], mid + rad, atol=1e-4)


def test_initial_line_sits_between_chord_and_tangent():
    l, u = torch.tensor([-1.0, -2.0, 0.5]), torch.tensor([3.0, -1.0, 2.0])
    slope, icpt = initial_line(l, u)
    assert slope.tolist() == [0.75, 0.0, 1.0] and icpt.tolist() == [0.375, 0.0, 0.0]


def _verify_instances(method: str, tmp_path, radii=(0.002, 0.2), n: int = 3):
    from vsbench.verify.builtin import BuiltinVerifier

    path = export_onnx(trained(method).model, (1, 28, 28), tmp_path / f"{method}.onnx")
    images, _ = load_dataset("mnist", "test", limit=50)
    seen = []
    for i in range(n):
        x = images[i * 7].numpy().astype(np.float32).ravel()
        label = int(np.argmax(run_onnx(path, x)))
        for eps in radii:
            vnn = tmp_path / f"p{i}_{eps}.vnnlib"
            write_vnnlib(vnn, robustness_property(x, label, eps, 10))
            inst = Instance(path, vnn, 60)  # a few seconds each; the margin is for a loaded machine
            v = BuiltinVerifier().verify(inst, 60)
            assert v.status in ("sat", "unsat", "timeout"), v.log
            if v.status == "sat":
                point, why = confirm_counterexample(inst, v.cex)
                assert point is not None, why
            if v.status == "unsat":  # no sampled point of the box changes the prediction
                rng = np.random.default_rng(i)
                lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
                for _ in range(100):
                    assert int(np.argmax(run_onnx(path, (lo + (hi - lo) * rng.random(x.size)).astype(np.float32)))) == label
            seen.append(v.status)
    return seen


@pytest.mark.parametrize("method", sorted(set(ZOO) - {"linearity-graft"}))
def test_builtin_verifier_verdicts_hold_up(method, tmp_path):
    seen = _verify_instances(method, tmp_path)
    assert {"sat", "unsat"} <= set(seen)  # eps 0.002 is provable on these barely trained nets, 0.2 is not


def test_builtin_verifier_reads_the_grafted_export(tmp_path):
    """The grafted export's Relu / Mul / Add branches are read as a DAG (no BaB there yet, so the
    large radius is one PGD refutes)."""
    seen = _verify_instances("linearity-graft", tmp_path, radii=(0.002, 0.8))
    assert {"sat", "unsat"} <= set(seen)
