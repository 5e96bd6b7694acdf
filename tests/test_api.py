"""The Python API: README examples, ``vsbench.verify`` after ``import vsbench.verify.runner``, gz files and
``vsbench.benchmark`` against an independent count in torch."""

import gzip
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import vsbench

ROOT = Path(__file__).resolve().parent.parent


def test_readme_examples_run():
    section = ROOT.joinpath("README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own examples


def test_verify_is_callable_next_to_the_subpackage():
    """In a fresh interpreter: importing vsbench.verify.runner first does not shadow the API function."""
    code = ("import vsbench.verify.runner, vsbench, numpy as np\n"
            "from vsbench.verify.runner import run_verification\n"
            "box = (np.zeros(2), np.ones(2))\n"
            "print(vsbench.verify.runner.__name__, vsbench.verify(\n"
            "    __import__('torch').nn.Linear(2, 2), (box, [(np.array([[1.0, -1.0]]), np.array([1e9]))]), timeout=20).status)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         check=False)
    assert out.stdout.split() == ["vsbench.verify.runner", "sat"], out.stderr[-2000:]


def test_verify_onnx_gz_and_bad_spec(tmp_path, mnistfc_dir):
    onnx = tmp_path / "net.onnx.gz"
    onnx.write_bytes(gzip.compress((mnistfc_dir / "mnist-net_256x2.onnx").read_bytes()))
    vnnlib = tmp_path / "p.vnnlib.gz"
    vnnlib.write_bytes(gzip.compress((mnistfc_dir / "prop_0_0.03.vnnlib").read_bytes()))
    assert vsbench.verify(onnx, vnnlib, timeout=60).status == "unsat"  # the 2021 reference verdict
    import pytest

    with pytest.raises(ValueError, match="spec must be"):
        vsbench.verify(onnx, 3)


def test_benchmark_row(data_dir):
    """A real linear classifier (nearest class mean): clean accuracy as torch counts it, every correctly
    classified image verified once, the row's counts add up."""
    from vsbench.data import load_dataset
    from vsbench.export.benchmark import choose_indices

    images, labels = load_dataset("mnist", "test", data_dir)
    x = images.reshape(len(images), -1).double()
    mu = torch.stack([x[labels == c].mean(0) for c in range(10)])
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.copy_(mu)
        net[1].bias.copy_(-0.5 * (mu ** 2).sum(1))
    n = 4
    row = vsbench.benchmark(net, "mnist", 0.005, n, timeout=30, workers=1, data_dir=data_dir)
    idx = choose_indices(len(labels), n, 0)
    correct = int((net(images[idx]).argmax(1) == labels[idx]).sum())
    assert row["n"] == n and row["clean_acc"] == correct / n
    assert sum(row[s] for s in ("sat", "unsat", "timeout", "unknown", "error")) == correct
    assert row["verified_acc"] == row["unsat"] / n and row["solved"] == row["sat"] + row["unsat"]
