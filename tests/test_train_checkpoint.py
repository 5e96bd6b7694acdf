"""Checkpoint round trip (incl. a compacted structured net), malformed files, evaluation helpers."""

import json

import pytest
import torch

from vsbench.data import load_dataset
from vsbench.nets import build_net
from vsbench.train.checkpoint import load_checkpoint, save_checkpoint
from vsbench.train.evaluate import evaluate, pgd_accuracy, verified_accuracy
from vsbench.train.loop import TrainConfig, train
from vsbench.train.sparsity import magnitude_masks, prunable


def test_round_trip_of_structured_model(tmp_path, data_dir):
    torch.set_num_threads(1)
    cfg = TrainConfig(arch="cnn-small", method="verisparse-structured", sparsity=0.8, epochs=1, n_train=128,
                      batch_size=64, eps=0.1, eval_test=0)
    res = train(cfg, data_dir)
    save_checkpoint(tmp_path / "m", res.model, {"config": cfg.model_dump(), "phases": res.phases, **res.info})
    model, manifest = load_checkpoint(tmp_path / "m")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(model(x), res.model(x), atol=1e-6)
    assert manifest["in_shape"] == [1, 28, 28] and manifest["phases"] == res.phases
    assert [m.weight.shape[0] for m in prunable(model)] == manifest["layer_sizes"]
    assert manifest["layer_sizes"][0] < 16 and manifest["config"]["seed"] == 0


def test_masked_model_saves_baked(tmp_path):
    model = build_net("mlp-2x100", "mnist")
    magnitude_masks(model, 0.9)
    save_checkpoint(tmp_path, model, {"seed": 1})
    loaded, manifest = load_checkpoint(tmp_path)
    assert float((loaded[2].weight == 0).float().mean()) > 0.85
    assert manifest["nonzero_params"] < 0.12 * 89610


def test_malformed_checkpoints_name_the_file(tmp_path):
    save_checkpoint(tmp_path, build_net("mlp-2x100", "mnist"), {})
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: SHA-256"):
        load_checkpoint(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["hashes"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"checkpoint\.pt: cannot load weights"):
        load_checkpoint(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: not a readable model manifest"):
        load_checkpoint(tmp_path)


def test_huge_declared_layer_is_refused_before_allocating(tmp_path):
    """A manifest declaring a 10^6 x 10^6 layer (4 TB) beside a small checkpoint with the right hash:
    one ValueError naming the manifest, before anything of that size is allocated."""
    save_checkpoint(tmp_path, build_net("mlp-2x100", "mnist"), {})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    linear = next(i for i, d in enumerate(manifest["layers"]) if d["type"] == "linear")
    manifest["layers"][linear].update({"in": 10**6, "out": 10**6})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest\.json: layer \d+ declares a 1000000x1000000 weight"):
        load_checkpoint(tmp_path)


def test_accuracy_helpers_are_ordered(data_dir):
    torch.manual_seed(0)
    x, y = load_dataset("mnist", "test", data_dir, limit=200)
    model = build_net("mlp-2x100", "mnist")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    clean = evaluate(model, x, y)
    pgd = pgd_accuracy(model, x, y, eps=0.05, steps=10)
    ver = verified_accuracy(model, x, y, eps=0.05)
    assert clean > 0.8 and ver <= pgd <= clean
    assert pgd_accuracy(model, x, y, eps=0.0, steps=1) == clean
