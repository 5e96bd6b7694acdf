"""External verifiers for real: maraboupy on tiny nets and mnistfc, VNN-COMP scripts as subprocesses."""

import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from vsbench.export.onnx import export_onnx
from vsbench.onnx_io import run_onnx
from vsbench.spec.vnnlib import write_vnnlib
from vsbench.spec.api import Instance, Property, Region
from vsbench.verify.external import (AbcrownVerifier, MarabouVerifier, ResultFileError, VnncompToolVerifier,
                                     find_abcrown, read_result_file, write_result_file)
from vsbench.onnx_io import confirm_counterexample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

marabou = MarabouVerifier()
needs_marabou = pytest.mark.skipif(not marabou.available()[0], reason=marabou.available()[1])


@pytest.fixture(scope="module")
def relu_onnx(tmp_path_factory):
    """y = relu(x) for x in R^2, as ONNX."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    return export_onnx(net, (2,), tmp_path_factory.mktemp("relu") / "relu.onnx")


def y0_le_y1(lo, hi):
    """Violated where y0 <= y1 inside the box [lo, hi]."""
    return Region(np.array(lo, float), np.array(hi, float), [(np.array([[1.0, -1.0]]), np.zeros(1))])


@needs_marabou
@pytest.mark.parametrize("regions,want", [
    ([y0_le_y1([0.5, 0.0], [1.0, 0.4])], "unsat"),
    ([y0_le_y1([0.5, 0.0], [1.0, 0.6])], "sat"),
    ([y0_le_y1([0.5, 0.0], [1.0, 0.4]), y0_le_y1([0.0, 0.5], [0.2, 1.0])], "sat"),  # second region violates
])
def test_marabou_tiny(tmp_path, relu_onnx, regions, want):
    vnnlib = tmp_path / "p.vnnlib"
    write_vnnlib(vnnlib, Property(regions))
    inst = Instance(relu_onnx, vnnlib, 20)
    v = marabou.verify(inst, 20)
    assert v.status == want, v.log
    if want == "sat":
        assert v.cex.shape == (2,) and v.cex.dtype == np.float64
        assert confirm_counterexample(inst, v.cex)[0] is not None


@needs_marabou
def test_marabou_disjunction_of_clauses(tmp_path, relu_onnx):
    """y0 <= y1 - 0.1 or y1 <= y0 - 0.1: the second clause is violated, the first is not."""
    c = np.array([[1.0, -1.0]])
    prop = Property([Region(np.array([0.5, 0.0]), np.array([1.0, 0.2]), [(c, np.array([-0.1])), (-c, np.array([-0.1]))])])
    write_vnnlib(tmp_path / "p.vnnlib", prop)
    v = marabou.verify(Instance(relu_onnx, tmp_path / "p.vnnlib", 20), 20)
    assert v.status == "sat" and prop.violated_by(v.cex, run_onnx(relu_onnx, v.cex), tol=1e-6)


@needs_marabou
def test_marabou_mnistfc_and_errors(mnistfc_dir, tmp_path, relu_onnx):
    """prop_0_0.03 (reference: unsat): some clause queries finish, some time out and stay open."""
    inst = Instance(mnistfc_dir / "mnist-net_256x2.onnx", mnistfc_dir / "prop_0_0.03.vnnlib", 8)
    v = marabou.verify(inst, 8)
    assert v.status in ("unsat", "timeout"), v.log
    assert v.time_s < 20
    v = marabou.verify(Instance(relu_onnx, mnistfc_dir / "prop_2_0.03.vnnlib", 5), 5)
    assert v.status == "error" and "sizes do not match" in v.log


def test_result_files(tmp_path):
    f = tmp_path / "r.txt"
    write_result_file(f, "sat", np.array([0.25, 1.0]), np.array([3.0]))
    status, cex = read_result_file(f)
    assert status == "sat" and cex.tolist() == [0.25, 1.0]
    f.write_text("holds\n")
    assert read_result_file(f) == ("unsat", None)
    f.write_text("violated\n((X_1 2e-1)\n (X_0 -1)\n (Y_0 3))\n")
    assert read_result_file(f)[1].tolist() == [-1.0, 0.2]
    f.write_text("maybe\n")
    with pytest.raises(ResultFileError, match="r.txt: first line 'maybe'"):
        read_result_file(f)
    f.write_text("sat\n((X_0 1) (X_2 1))\n")
    with pytest.raises(ResultFileError, match="exactly once"):
        read_result_file(f)


def test_vsbench_as_vnncomp_tool(mnistfc_dir):
    """vnncomp_scripts/ run through the vnncomp: adapter on two mnistfc 256x2 instances (sat, unsat)."""
    tool = VnncompToolVerifier(os.path.join(ROOT, "vnncomp_scripts"))
    assert tool.available() == (True, "") and tool.name.startswith("vnncomp:")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sat = Instance(mnistfc_dir / "mnist-net_256x2.onnx", mnistfc_dir / "prop_7_0.03.vnnlib", 60)
    v = tool.verify(sat, 60)
    assert v.status == "sat", v.log
    assert confirm_counterexample(sat, v.cex)[0] is not None
    v = tool.verify(Instance(sat.onnx, mnistfc_dir / "prop_0_0.03.vnnlib", 60), 60)
    assert v.status == "unsat", v.log


def test_vnncomp_tool_killed_at_timeout(tmp_path):
    """A tool that hangs is killed with its children; a tool without scripts is unavailable."""
    (tmp_path / "prepare_instance.sh").write_text("exit 0\n")
    pidfile = tmp_path / "child.pid"
    (tmp_path / "run_instance.sh").write_text(f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    t0 = time.monotonic()
    v = VnncompToolVerifier(tmp_path).verify(Instance(tmp_path / "m.onnx", tmp_path / "p.vnnlib", 1), 1)
    assert v.status == "timeout" and time.monotonic() - t0 < 10
    time.sleep(0.2)
    status = f"/proc/{int(pidfile.read_text())}/status"
    assert not os.path.exists(status) or "zombie" in open(status).read()  # the child is dead too
    (tmp_path / "run_instance.sh").write_text("echo broken >&2; exit 3\n")
    v = VnncompToolVerifier(tmp_path).verify(Instance(tmp_path / "m.onnx", tmp_path / "p.vnnlib", 5), 5)
    assert v.status == "error" and "exited 3" in v.log and "broken" in v.log
    ok, why = VnncompToolVerifier(tmp_path / "none").available()
    assert not ok and "prepare_instance.sh" in why


def test_abcrown_discovery(monkeypatch, tmp_path):
    monkeypatch.setenv("ABCROWN_PATH", str(tmp_path))
    ok, why = AbcrownVerifier().available()
    assert not ok and "ABCROWN_PATH" in why and "complete_verifier" in why
    (tmp_path / "complete_verifier").mkdir()
    (tmp_path / "complete_verifier" / "abcrown.py").write_text("")
    assert find_abcrown()[0] == (tmp_path / "complete_verifier" / "abcrown.py").resolve()


STAND_IN = """
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[2]))
assert sys.argv[1] == "--config" and cfg["general"]["device"] == "cpu" and cfg["general"]["save_adv_example"]
assert cfg["model"]["onnx_path"].endswith(".onnx") and cfg["specification"]["vnnlib_path"].endswith(".vnnlib")
print("stand-in abcrown, timeout", cfg["bab"]["timeout"])
with open(cfg["general"]["results_file"], "w") as f:
    f.write("sat\\n((X_0 0.75)\\n (X_1 0.5)\\n (Y_0 0.75)\\n (Y_1 0.5))\\n")
"""


def test_abcrown_adapter_with_stand_in(monkeypatch, tmp_path, relu_onnx):
    """The adapter's YAML and result parsing, run against a stand-in abcrown.py (a real subprocess)."""
    (tmp_path / "abcrown.py").write_text(STAND_IN)
    monkeypatch.setenv("ABCROWN_PATH", str(tmp_path))
    vnnlib = tmp_path / "p.vnnlib"  # violated where y1 <= y0: the stand-in's point (0.75, 0.5) is confirmed
    write_vnnlib(vnnlib, Property([Region(np.zeros(2), np.ones(2), [(np.array([[-1.0, 1.0]]), np.zeros(1))])]))
    v = AbcrownVerifier(device="cpu").verify(Instance(relu_onnx, vnnlib, 7), 7)
    assert v.status == "sat" and v.cex.tolist() == [0.75, 0.5] and "timeout 7.0" in v.log


@pytest.mark.skipif(not AbcrownVerifier().available()[0], reason=AbcrownVerifier().available()[1])
def test_abcrown_mnistfc(mnistfc_dir):
    inst = Instance(mnistfc_dir / "mnist-net_256x2.onnx", mnistfc_dir / "prop_7_0.03.vnnlib", 60)
    v = AbcrownVerifier().verify(inst, 60)
    assert v.status == "sat", v.log
    assert confirm_counterexample(inst, v.cex)[0] is not None
    v = AbcrownVerifier().verify(Instance(inst.onnx, mnistfc_dir / "prop_0_0.03.vnnlib", 60), 60)
    assert v.status == "unsat", v.log
