"""Each registered method trains one tiny epoch on real MNIST and reaches its target sparsity;
a new sparsifier is added the documented way (one class + @register)."""

import onnx
import pytest
import torch

from vsbench.data import load_dataset
from vsbench.export.onnx import export_onnx, onnx_stats
from vsbench.train.loop import TrainConfig, Trainer, train
from vsbench.train.methods import Sparsifier, get_method, list_methods, register
from vsbench.train.sparse import sparse_layers
from vsbench.train.sparsity import BATCHNORMS, prunable, random_masks

TINY = dict(arch="mlp-2x100", epochs=1, n_train=256, batch_size=64, eps=0.1, ramp_epochs=0.5, eval_test=100)
PHASES = {"dense": {"train"}, "verisparse": {"train"}, "verisparse-structured": {"train"},
          "hydra": {"pretrain", "scores", "finetune"}, "prune-after": {"pretrain", "prune", "finetune"}}


def test_registry_lists_the_five_methods():
    assert set(PHASES) <= set(list_methods())
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("method", sorted(PHASES))
def test_method_trains_to_target_sparsity(method, data_dir):
    torch.set_num_threads(1)
    target = 0.0 if method == "dense" else 0.9
    res = train(TrainConfig(method=method, sparsity=target, **TINY), data_dir)
    assert set(res.phases) == PHASES[method] and all(t > 0 for t in res.phases.values())
    assert res.info["sparsity"] == pytest.approx(target, abs=0.011)
    assert not any(hasattr(m, "parametrizations") for m in prunable(res.model))
    sizes = [m.weight.shape[0] for m in prunable(res.model)]
    if method == "verisparse-structured":
        assert sizes[:2] == [11, 11] and sizes[2] == 10  # compacted: removed neurons are gone
    else:
        assert sizes == [100, 100, 10]
    last = res.history[-1]  # held-out batch, after the last epoch
    assert 0.0 <= last["heldout_ibp_acc"] <= last["heldout_clean_acc"] <= 1.0


@pytest.mark.parametrize("method,epochs", [("hydra", {"pretrain": 5, "scores": 1, "finetune": 5}),
                                           ("prune-after", {"pretrain": 5, "finetune": 5}),
                                           ("verisparse", {"train": 5})])
def test_default_phase_epochs_follow_the_papers(method, epochs, data_dir):
    """HYDRA's released schedule is 100 / 20 / 100 epochs; prune-after fine-tunes as long as it
    pretrains; VeriSparse is one run. Each history row is one epoch with its own seconds."""
    torch.set_num_threads(1)
    res = train(TrainConfig(method=method, sparsity=0.5, **{**TINY, "epochs": 5, "n_train": 64}), data_dir)
    seen = {}
    for row in res.history:
        seen[row["phase"]] = seen.get(row["phase"], 0) + 1
    assert seen == epochs
    for phase in epochs:
        assert res.phases[phase] == pytest.approx(sum(r["seconds"] for r in res.history if r["phase"] == phase))


@pytest.mark.parametrize("method,options", [
    ("verisparse", {}), ("verisparse-structured", {"importance": "bn", "delta_t": 1}), ("hydra", {}), ("prune-after", {}),
])
def test_batchnorm_nets_train_and_come_out_folded(method, options, data_dir, tmp_path):
    """The fast-IBP recipe's BatchNorm (``-bn`` architectures) trains with every sparsifier; the
    result is a plain net at the target sparsity whose ONNX export has no BatchNormalization."""
    torch.set_num_threads(1)
    cfg = TrainConfig(method=method, sparsity=0.9, method_options=options, **{**TINY, "arch": "mlp-2x100-bn"})
    res = train(cfg, data_dir)
    assert not any(isinstance(m, BATCHNORMS) for m in res.model.modules())
    assert res.info["sparsity"] == pytest.approx(0.9, abs=0.011)
    if method == "verisparse-structured":  # dropped units (BatchNorm scale and shift masked) compacted away
        assert [m.weight.shape[0] for m in prunable(res.model)] == [11, 11, 10]
    path = export_onnx(res.model, (1, 28, 28), tmp_path / "m.onnx")  # checked in onnxruntime
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert onnx_stats(path)["nonzero_params"] == res.info["nonzero_params"]


def test_bn_importance_needs_a_batchnorm_architecture():
    with pytest.raises(ValueError, match="importance 'bn' needs an architecture with BatchNorm"):
        TrainConfig(method="verisparse-structured", method_options={"importance": "bn"}, arch="mlp-2x100")


@pytest.mark.parametrize("options", [{"rounds": 2, "scope": "layer"}, {"density": "erk", "score_frac": 0.5}])
def test_iterative_pruning_and_hydra_erk(options, data_dir):
    method = "prune-after" if "rounds" in options else "hydra"
    res = train(TrainConfig(method=method, sparsity=0.95, method_options=options, **TINY), data_dir)
    assert res.info["sparsity"] == pytest.approx(0.95, abs=0.002)


def test_verisparse_is_never_dense_and_rewires(data_dir):
    torch.set_num_threads(1)
    cfg = TrainConfig(method="verisparse", sparsity=0.8, method_options={"delta_t": 1, "alpha": 0.5}, **TINY)
    x, y = load_dataset("mnist", "train", data_dir, limit=256)
    model = __import__("vsbench.nets", fromlist=["build_net"]).build_net("mlp-2x100", "mnist")
    method = get_method("verisparse")(get_method("verisparse").Options(**cfg.method_options))
    method.init_masks(model, cfg)
    layers = sparse_layers(model)
    assert len(layers) == 3 and not prunable(model)  # only the active weights are stored
    first = [m.index.clone() for m in layers]
    Trainer(cfg, x, y, 10, torch.device("cpu")).fit("train", model, 1, hooks=method)
    assert len(method.trace) > 1
    assert max(method.trace) == pytest.approx(0.2, abs=1e-3)  # density constant: never dense
    assert all(m.values.numel() == len(i) for m, i in zip(layers, first))
    assert any(not torch.equal(m.index, i) for m, i in zip(layers, first))  # the topology did change


def test_fast_ibp_recipe_runs_with_regularizer(data_dir):
    torch.set_num_threads(1)
    cfg = TrainConfig(init="ibp", reg_lambda=0.5, bound="ibp", **{**TINY, "epochs": 2, "ramp_epochs": 2})
    res = train(cfg, data_dir)
    assert res.history[0]["reg_loss"] > 0 and "reg_loss" in res.history[1]
    assert res.history[-1]["eps"] == pytest.approx(0.1, abs=0.03)


def test_bad_method_options_are_rejected():
    with pytest.raises(ValueError, match="method_options for 'verisparse': delta_t"):
        TrainConfig(method="verisparse", method_options={"delta_t": 0})
    with pytest.raises(ValueError, match="extra|not permitted"):
        TrainConfig(method="hydra", method_options={"nonsense": 1})
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(method="nope")


@register
class RandomStatic(Sparsifier):
    """Random static pruning, added the way docs/sparsifiers.md describes."""

    name = "test-random-static"

    def init_masks(self, model, cfg):
        random_masks(model, [1 - cfg.sparsity] * len(prunable(model)), torch.Generator().manual_seed(cfg.seed))


def test_new_sparsifier_plugs_in(data_dir):
    assert "test-random-static" in list_methods()
    res = train(TrainConfig(method="test-random-static", sparsity=0.7, **TINY), data_dir)
    assert res.info["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert set(res.phases) == {"train"}
