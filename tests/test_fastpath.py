"""The fast path decides a trained conv net's easy properties in batches, as the per-instance
verifier does, records the deciding stage, and the runner uses it before fanning out."""

import sys

import pytest
import ray
import torch
from torch import nn

from vsbench.cluster import init_ray
from vsbench.data import load_dataset
from vsbench.export.benchmark import choose_indices, write_benchmark
from vsbench.onnx_io import confirm_counterexample
from vsbench.verify.builtin import BuiltinVerifier
from vsbench.verify.config import VerifierConfig
from vsbench.verify.fastpath import fast_path
from vsbench.verify import runner
from vsbench.verify.runner import run_verification

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
STAGES = {"attack", "ibp", "crown", "alpha"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, data_dir):
    """A small conv net trained for two epochs on 6000 MNIST images; 10 properties at eps 0.04
    (some robust, some not)."""
    torch.manual_seed(0)
    x, y = load_dataset("mnist", "train", data_dir, limit=6000)
    net = nn.Sequential(nn.Conv2d(1, 4, 4, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(324, 32), nn.ReLU(),
                        nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(x), 100):
            loss = nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    images, labels = load_dataset("mnist", "test", data_dir)
    return write_benchmark(tmp_path_factory.mktemp("fp") / "bench", {"m": (net.eval(), (1, 28, 28))}, images,
                           labels, choose_indices(len(labels), 10, 0), 0.04, 30)


def test_fast_path_agrees_with_the_per_instance_verifier(bench):
    torch.set_num_threads(1)
    fast = fast_path(bench)
    assert {v.status for v in fast.values()} == {"sat", "unsat"}, fast
    for inst in bench:
        if inst.key not in fast:
            continue
        v = fast[inst.key]
        assert v.stage in STAGES and v.log == f"fast path: {v.stage}"
        if v.status == "sat":
            assert confirm_counterexample(inst, v.cex)[0] is not None
        else:
            assert v.margin > 0
        assert BuiltinVerifier(VerifierConfig(fast_path=False)).verify(inst, 30).status == v.status, inst.vnnlib


def test_fast_path_off_or_bounds_only(bench):
    """Without the attack stages nothing is sat; with fewer stages never more is decided."""
    torch.set_num_threads(1)
    full = fast_path(bench)
    no_attack = fast_path(bench, VerifierConfig(fast_path_attack_steps=0, fast_path_alpha_iters=0))
    assert set(no_attack) <= set(full)
    assert all(v.status == "unsat" or v.stage == "attack" for v in no_attack.values())
    assert all(full[k].status == v.status for k, v in no_attack.items())


def test_runner_runs_the_fast_path_first(bench, tmp_path, monkeypatch):
    """In two tasks over every other instance (a model with more instances than FAST_PATH_CHUNK and two
    free slots); each instance is recorded once, as the one-task fast path decides it."""
    if not ray.is_initialized():
        init_ray(2)
    monkeypatch.setattr(runner, "FAST_PATH_CHUNK", len(bench) // 2)
    records = run_verification(bench, "builtin", tmp_path / "run", workers=2, timeout_cap=30)
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(records) == len(bench)
    fast = [r for r in records if r["log"].startswith("fast path")]
    assert fast, records
    torch.set_num_threads(1)
    one_task = fast_path(bench)
    for inst, r in zip(bench, records):
        assert r["status"] == (one_task[inst.key].status if inst.key in one_task else r["status"])
    for r in records:
        assert r["verifier_settings"] == VerifierConfig().model_dump(mode="json")
        assert (r["stage"] is not None) == (r["status"] in ("sat", "unsat"))
    assert all(r["stage"] in STAGES and r["status"] in ("sat", "unsat") for r in fast)
    assert all(r["cex_checked"] for r in fast if r["status"] == "sat")
