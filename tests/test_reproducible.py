"""Training is bit-reproducible, and HYDRA started from the suite's dense model is the HYDRA run
that pretrains it itself."""

import torch

from vsbench.pipeline import pretrained_from
from vsbench.train.checkpoint import save_checkpoint
from vsbench.train.loop import TrainConfig, train

TINY = dict(arch="mlp-2x100", epochs=2, n_train=256, batch_size=64, eps=0.1, ramp_epochs=1, eval_test=50,
            bound="ibp", init="ibp")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_twice_gives_the_same_checkpoint_bits(tmp_path, data_dir):
    cfg = TrainConfig(method="verisparse", sparsity=0.8, **TINY)
    files, before = [], torch.get_num_threads()
    for run, threads in enumerate((1, 2)):  # the caller's thread count does not leak into training
        torch.set_num_threads(threads)
        res = train(cfg, data_dir)
        meta = {"in_shape": res.info["in_shape"], "phases": {}}
        files.append((save_checkpoint(tmp_path / str(run), res.model, meta) / "checkpoint.pt").read_bytes())
        assert res.info["determinism"]["threads"] == 1 and res.info["determinism"]["not_fixed"]
    assert torch.get_num_threads() == 2  # restored
    torch.set_num_threads(before)
    assert files[0] == files[1]


def test_hydra_from_the_dense_model_equals_hydra_from_scratch(tmp_path, data_dir):
    dense = train(TrainConfig(method="dense", **TINY), data_dir)
    save_checkpoint(tmp_path / "dense", dense.model, {"in_shape": dense.info["in_shape"], "phases": dense.phases,
                                                      "history": dense.history})
    cfg = TrainConfig(method="hydra", sparsity=0.8, **TINY)
    scratch = train(cfg, data_dir)
    reused = train(cfg, data_dir, pretrained=pretrained_from(tmp_path / "dense"))
    assert same_weights(scratch.model, reused.model)
    assert reused.phases["pretrain"] == sum(dense.phases.values())  # the table charges the dense time
    assert [r["phase"] for r in reused.history] == [r["phase"] for r in scratch.history]
    assert all(r.get("reused") for r in reused.history if r["phase"] == "pretrain")


def test_history_has_one_row_per_epoch_with_heldout_accuracy(data_dir):
    rows = []
    res = train(TrainConfig(method="dense", **TINY), data_dir, on_epoch=rows.append)
    assert rows == res.history and len(rows) == TINY["epochs"]
    for r in rows:
        assert {"loss", "eps", "lr", "seconds", "heldout_clean_acc", "heldout_ibp_acc"} <= r.keys()
        assert 0 <= r["heldout_ibp_acc"] <= r["heldout_clean_acc"] <= 1
    assert rows[-1]["eps"] == TINY["eps"]
