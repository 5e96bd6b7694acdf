"""ONNX export (checked in onnxruntime), ONNX size / FLOP counts and VNN-COMP benchmark folders."""

import ast
import gzip
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from vsbench.bounds.graph import from_onnx
from vsbench.export.benchmark import (
    BenchmarkError,
    choose_indices,
    read_instances,
    regenerate,
    write_benchmark,
)
from vsbench.export.onnx import OPSET, ExportError, export_onnx, onnx_stats
from vsbench.nets import ARCHS, BN_SUFFIX, build_net, list_nets
from vsbench.onnx_io import run_onnx
from vsbench.spec.vnnlib import read_vnnlib


class Normalize(nn.Module):
    def __init__(self, mean=0.1307, std=0.3081):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


class Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def sparse_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(Normalize(), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 14 * 14, 16), nn.ReLU(), nn.Linear(16, 10))
    prune.random_unstructured(m[1], "weight", 0.5)
    parametrize.register_parametrization(m[4], "weight", Mask((torch.rand(16, 784) < 0.1).float()))
    return m


def test_export_round_trip_and_stats(tmp_path):
    torch.set_num_threads(1)
    model = sparse_cnn()
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    assert hasattr(model[1], "weight_orig") and parametrize.is_parametrized(model[4])  # caller's model untouched
    x = torch.rand(3, 1, 1, 28, 28)
    for xi in x:
        assert np.abs(run_onnx(path, xi.numpy()) - model(xi).detach().numpy().ravel()).max() < 1e-5
    graph = from_onnx(path)  # the verifiers' reader accepts the export
    assert torch.allclose(graph.forward(x[0].reshape(1, -1).double()).float(), model(x[0]), atol=1e-5)

    conv_nz, fc_nz = int((model[1].weight != 0).sum()), int((model[4].weight != 0).sum())
    stats = onnx_stats(path)
    assert stats["params"] == 4 * 9 + 4 + 16 * 784 + 16 + 16 * 10 + 10
    assert stats["nonzero_params"] == conv_nz + 4 + fc_nz + 16 + 160 + 10
    assert stats["flops"] == conv_nz * 14 * 14 + fc_nz + 160
    assert conv_nz < 36 and fc_nz < 0.2 * 16 * 784


def _marabou():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("maraboupy.Marabou")


@pytest.mark.parametrize("name", list_nets())
def test_every_architecture_reads_in_marabou(tmp_path, monkeypatch, name):
    """Each architecture of vsbench.nets (narrowed) exports without broadcasting Sub / Div, passes the full
    ONNX check and evaluates in Marabou's own solver (input fixed) as onnxruntime does."""
    import onnx

    Marabou = _marabou()
    monkeypatch.chdir(tmp_path)  # Marabou's evaluation writes a log file into the working folder
    torch.manual_seed(0)
    model = build_net(name, "mnist", widths=[3] * len(ARCHS[name.removesuffix(BN_SUFFIX)])).eval()
    if name.endswith(BN_SUFFIX):  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = export_onnx(model, (1, 28, 28), tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == OPSET
    assert not {n.op_type for n in proto.graph.node} & {"Sub", "Div"}
    x = np.random.default_rng(1).random((1, 1, 28, 28)).astype(np.float32)
    net = Marabou.read_onnx(str(path))
    y = np.asarray(net.evaluateWithMarabou([x])[0]).ravel()
    assert np.abs(y - run_onnx(path, x)).max() < 1e-5
    assert np.abs(run_onnx(path, x) - model(torch.tensor(x)).detach().numpy().ravel()).max() < 1e-5


def test_padded_conv_normalisation_folds_into_a_bias_map(tmp_path, monkeypatch):
    """A padded conv after the normalisation: the folded bias differs at the border (Conv + same-shape Add)."""
    import onnx

    Marabou = _marabou()
    monkeypatch.chdir(tmp_path)  # Marabou's evaluation writes a log file into the working folder
    torch.manual_seed(0)
    model = nn.Sequential(Normalize(), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))
    path = export_onnx(model, (1, 6, 6), tmp_path / "pad.onnx")
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node][:2] == ["Conv", "Add"]
    x = np.random.default_rng(2).random((1, 1, 6, 6)).astype(np.float32)
    want = model(torch.tensor(x)).detach().numpy().ravel()
    assert np.abs(run_onnx(path, x) - want).max() < 1e-5
    y = np.asarray(Marabou.read_onnx(str(path)).evaluateWithMarabou([x])[0]).ravel()
    assert np.abs(y - want).max() < 1e-5


def test_export_mismatch_is_an_error(tmp_path):
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.rand_like(x)

    with pytest.raises(ExportError, match="noisy.onnx: onnxruntime output differs"):
        export_onnx(nn.Sequential(nn.Flatten(), Noisy()), (4,), tmp_path / "noisy.onnx")


def mnist_test(data_dir):
    with gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def nearest_mean(images, labels, sign=1.0):
    """A real linear classifier: nearest class mean (about 80% right); sign -1 gets most wrong."""
    x = images.reshape(len(images), -1) / 255.0
    mu = np.stack([x[labels == c].mean(0) for c in range(10)])
    lin = nn.Linear(784, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(sign * mu))
        lin.bias.copy_(torch.tensor(-0.5 * sign * (mu ** 2).sum(1)))
    return nn.Sequential(nn.Flatten(), lin)


def test_benchmark_folder(tmp_path, data_dir):
    images, labels = mnist_test(data_dir)
    good, bad = nearest_mean(images, labels), nearest_mean(images, labels, -1.0)
    idx = choose_indices(len(labels), 12, seed=3)
    assert idx == choose_indices(len(labels), 12, seed=3) and idx[:5] == choose_indices(len(labels), 5, seed=3)
    assert len(set(idx)) == 12 and idx != choose_indices(len(labels), 12, seed=4)
    out = tmp_path / "bench"
    inst = write_benchmark(out, {"good": (good, (1, 28, 28)), "bad": (bad, (1, 28, 28))},
                           images, labels, idx, 0.02, 30, {"suite": "t", "dataset": "mnist", "property_seed": 3})
    x = torch.tensor(images[idx] / 255.0, dtype=torch.float32)
    right = {m: [i for i, p in zip(idx, net(x).argmax(1).tolist()) if p == labels[i]]
             for m, net in (("good", good), ("bad", bad))}
    assert len(right["good"]) >= 6 and len(right["bad"]) < len(right["good"])
    wrong = json.loads((out / "misclassified.json").read_text())
    assert "2 ONNX models" in (out / "README.md").read_text() and "eps 0.02" in (out / "README.md").read_text()
    for m in ("good", "bad"):
        assert sorted(wrong[m]) == sorted(set(idx) - set(right[m]))
        assert sorted(i.meta["property"] for i in inst if i.meta["model"] == m) == sorted(right[m])
    assert len(list((out / "vnnlib").iterdir())) == 12  # one property per image, shared
    rows = (out / "instances.csv").read_text().splitlines()
    assert rows[-1].startswith("onnx/good.onnx,vnnlib/prop_") and rows[-1].endswith(",30")
    assert len(rows) == len(right["good"]) + len(right["bad"])
    assert [(i.onnx, i.vnnlib, i.timeout) for i in read_instances(out)] == [(i.onnx, i.vnnlib, i.timeout) for i in inst]
    first = inst[0]
    assert first.meta["eps"] == 0.02 and first.meta["label"] == labels[first.meta["property"]]
    (r,) = read_vnnlib(first.vnnlib, 784, 10).regions
    pix = images[first.meta["property"]].ravel() / 255.0
    assert np.allclose(r.lower, np.clip(pix - 0.02, 0, 1)) and np.allclose(r.upper, np.clip(pix + 0.02, 0, 1))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["indices"] == idx and manifest["config"]["meta"]["suite"] == "t"
    assert manifest["sha256"]["onnx/good.onnx"] == hashlib.sha256((out / "onnx/good.onnx").read_bytes()).hexdigest()
    assert len(manifest["sha256"]) == 2 + 12 + 1

    files = {p: p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.suffix != ".onnx" and p.name != "manifest.json"}
    assert regenerate(out, 4) != inst and (out / "instances.csv").read_bytes() != files[out / "instances.csv"]
    # the folder's own script, with vsbench, torch and the ONNX libraries made unimportable
    script = ("import runpy, sys\nfor m in ('vsbench', 'torch', 'onnx', 'onnxruntime'): sys.modules[m] = None\n"
              f"sys.argv = ['generate_properties.py', '3', {str(data_dir)!r}]\n"
              "runpy.run_path('generate_properties.py', run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", script], cwd=out, check=True, timeout=120)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix != ".onnx" and p.name != "manifest.json"} == files
    ast.parse((out / "generate_properties.py").read_text(), feature_version=(3, 8))  # Python 3.8 syntax


def test_read_mnistfc(mnistfc_dir):
    inst = read_instances(mnistfc_dir)
    assert len(inst) == 90 and inst[0].timeout == 120
    assert inst[0].onnx == mnistfc_dir / "mnist-net_256x2.onnx" and inst[0].meta["model"] == "mnist-net_256x2"


def test_filter_matches_paths_inside_the_folder(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench-256x2"  # the folder's own name must not match every instance
    shutil.copytree(mnistfc_dir, bench)
    inst = read_instances(bench, only="256x2")
    assert len(inst) == 30 and all(i.onnx.name == "mnist-net_256x2.onnx" for i in inst)
    assert len(read_instances(bench, only="prop_3_0.05")) == 3
    with pytest.raises(BenchmarkError, match="no instance matches 'prop_99'"):
        read_instances(bench, only="prop_99")


@pytest.mark.parametrize("row, problem", [
    ("/etc/passwd,p.vnnlib,10", "must be relative and stay inside"),
    ("../m.onnx,p.vnnlib,10", "must be relative and stay inside"),
    ("sub/../../m.onnx,p.vnnlib,10", "must be relative and stay inside"),
    ("link/m.onnx,p.vnnlib,10", "leaves the folder"),
    ("m.onnx,missing.vnnlib,10", "file 'missing.vnnlib' does not exist"),
    ("m.onnx,p.vnnlib,soon", "timeout 'soon' is not a number"),
    ("m.onnx,p.vnnlib,-1", "timeout must be positive"),
    ("m.onnx,p.vnnlib", "expected 3 columns"),
])
def test_read_instances_rejects(tmp_path, row, problem):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.onnx").write_text("x")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "link").symlink_to(outside)
    (bench / "m.onnx").write_text("x")
    (bench / "p.vnnlib").write_text("x")
    (bench / "instances.csv").write_text("m.onnx,p.vnnlib,10\n\n" + row + "\n")
    with pytest.raises(BenchmarkError) as err:
        read_instances(bench)
    assert str(err.value).startswith(f"{bench / 'instances.csv'}:3: ") and problem in str(err.value)


def test_header_row_allowed(tmp_path):
    (tmp_path / "m.onnx").write_text("x")
    (tmp_path / "p.vnnlib").write_text("x")
    (tmp_path / "instances.csv").write_text("onnx,vnnlib,timeout\nm.onnx,p.vnnlib,7.5\n")
    (inst,) = read_instances(tmp_path)
    assert inst.onnx == tmp_path / "m.onnx" and inst.timeout == 7.5 and inst.meta == {"model": "m", "category": tmp_path.name}


def test_not_a_benchmark(tmp_path):
    with pytest.raises(BenchmarkError, match="no instances.csv"):
        read_instances(tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        read_instances(tmp_path / "nope")
    (tmp_path / "instances.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BenchmarkError, match="instances.csv: not a CSV text file"):
        read_instances(tmp_path)
