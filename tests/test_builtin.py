"""The built-in verifier never contradicts the exact MILP and agrees with mnistfc reference verdicts."""

import csv
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vsbench.bounds.crown import crown_bounds
from vsbench.bounds.graph import Graph, ReLU
from vsbench.spec.api import Deadline, Instance, Property, Region
from vsbench.spec.vnnlib import robustness_property
from vsbench.verify import builtin
from vsbench.verify.builtin import BuiltinVerifier, simplify, verify_property
from vsbench.verify.config import VerifierConfig
from vsbench.verify.milp import TAU, milp_clause

MNISTFC = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-mnistfc"


def _problem(seed):
    rng = np.random.default_rng(seed)
    n_in, w1, w2, n_out = rng.integers(2, 5), rng.integers(4, 9), rng.integers(4, 9), 3
    layers = [
        (torch.as_tensor(rng.normal(size=(o, i))), torch.as_tensor(rng.normal(size=o) * 0.5))
        for i, o in ((n_in, w1), (w1, w2), (w2, n_out))
    ]
    if seed % 3 == 0:  # sparse weights exercise the simplification
        layers = [(W * torch.as_tensor(rng.random(W.shape) < 0.5), b) for W, b in layers]
    c = rng.normal(size=n_in)
    r = rng.uniform(0.05, 1.0)
    label = int(Graph.from_dense(layers).forward(torch.as_tensor(c)[None]).argmax())  # robust near c
    clauses = robustness_property(c, label, r, n_out, clip=None).regions[0].clauses
    if seed % 4 == 1:  # a two-row clause beside one-row ones: BaB groups clauses by row count
        (C1, r1), (C2, r2) = clauses
        clauses = [(np.vstack([C1, C2]), np.concatenate([r1, r2])), (C2, r2)]
    return layers, Region(c - r, c + r, clauses)


def _truth(layers, region):
    """Exact verdict by MILP per clause, or None when the optimum is within the tolerance band."""
    g = Graph.from_dense(layers)
    lo, hi = torch.as_tensor(region.lower)[None], torch.as_tensor(region.upper)[None]
    bounds = [(l[0], u[0]) for l, u in crown_bounds(g, lo, hi)[:-1]]
    verdict = "unsat"
    for C, rhs in region.clauses:
        status, x, lb = milp_clause(layers, lo[0], hi[0], bounds, C, rhs, 30)
        if status == "sat" and lb < -1e-4:
            return "sat"
        if status != "unsat":
            verdict = None
    return verdict


@pytest.mark.parametrize("threads,seeds", [(1, 200), (2, 100)])
def test_verifier_never_contradicts_milp(threads, seeds):
    """One thread: BaB alone. Two: clause MILPs in a thread beside BaB. BaB rounds of 2 ms (instead
    of 1 s), so that on these small problems the refined bounds replace BaB's after its first step
    and the MILPs race BaB. ReLU splitting only (these nets have 2-4 inputs: input splitting is
    tested in test_input_split.py)."""
    torch.set_num_threads(threads)
    config = VerifierConfig(slice_s=0.002, input_split=False)
    counts = {"sat": 0, "unsat": 0, "bab": 0, "milp": 0, "refine": 0}
    for seed in range(seeds):
        layers, region = _problem(seed)
        g = Graph.from_dense(layers)
        prop = Property([region])
        v = verify_property(g, prop, Deadline(20), config=config)
        truth = _truth(layers, region)
        assert v.status in ("sat", "unsat"), (seed, v.status, v.log)
        if v.status == "sat":
            y = g.forward(torch.as_tensor(v.cex)[None]).numpy()
            assert prop.violated_by(v.cex, y), seed
            assert truth != "unsat", seed
        else:
            assert truth != "sat", seed
            assert v.margin is not None and v.margin >= TAU
        counts[v.status] += 1
        counts["bab"] += "bab:" in v.log
        counts["milp"] += "milp:" in v.log
        counts["refine"] += "refine:" in v.log
    assert torch.get_num_threads() == threads  # restored after the MILP thread
    assert counts["sat"] > 5 and counts["unsat"] > 5 and counts["bab"] > 2 and counts["refine"] > 2, counts
    assert (counts["milp"] > 0) == (threads > 1), counts


def test_simplify_is_exact():
    rng = np.random.default_rng(0)
    layers = [(torch.as_tensor(rng.normal(size=(o, i)) * (rng.random((o, i)) < 0.3)), torch.as_tensor(rng.normal(size=o)))
              for i, o in ((8, 12), (12, 10), (10, 3))]
    lo, hi = torch.zeros(1, 8, dtype=torch.float64), torch.ones(1, 8, dtype=torch.float64)
    small, keep, _, _ = simplify(layers, lo, hi)
    x = torch.rand(500, 8, dtype=torch.float64)
    full = Graph.from_dense(layers).forward(x)
    assert torch.allclose(Graph.from_dense(small).forward(x[:, keep]), full)
    assert sum(W.numel() for W, _ in small) < sum(W.numel() for W, _ in layers)


def test_unsupported_onnx_is_an_error(tmp_path):
    node = helper.make_node("Softplus", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "softplus.onnx"
    onnx.save(helper.make_model(graph), path)
    v = BuiltinVerifier().verify(Instance(path, tmp_path / "none.vnnlib", 5), 5)
    assert v.status == "error" and "Softplus" in v.log


@pytest.mark.skipif(not MNISTFC.exists(), reason="mnistfc benchmark not available")
@pytest.mark.parametrize("net,vnnlib", [
    ("mnist-net_256x2", "prop_2_0.03"), ("mnist-net_256x2", "prop_4_0.03"), ("mnist-net_256x2", "prop_1_0.05"),
    ("mnist-net_256x2", "prop_0_0.03"),
    ("mnist-net_256x4", "prop_5_0.03"),  # BaB alone times out: needs the split-refined bounds
])
def test_mnistfc_reference_verdicts(net, vnnlib):
    torch.set_num_threads(1)
    ref = {(r["onnx"], r["vnnlib"]): r["verdict"] for r in csv.DictReader((MNISTFC / "reference_verdicts.csv").open())}
    net, vnnlib = f"{net}.onnx", f"{vnnlib}.vnnlib"
    v = BuiltinVerifier().verify(Instance(MNISTFC / net, MNISTFC / vnnlib, 60), 60)
    assert v.status == ref[(net, vnnlib)], v.log


@pytest.mark.parametrize("final_relu", [False, True])
def test_dag_path_never_contradicts_milp(final_relu, monkeypatch):
    """The DAG path (forced with DENSE_LIMIT = 0: BaB on the DAG, no MILP) and, for a ReLU after the
    output layer, the dense path too, against the exact MILP of the same net."""
    torch.set_num_threads(1)
    counts = {"sat": 0, "unsat": 0}
    for seed in range(24):
        layers, region = _problem(seed)
        g = Graph.from_dense(layers)
        if final_relu:
            g = Graph([*g.ops, ReLU()], g.in_shape)
            region.clauses = [(C, rhs + 0.5) for C, rhs in region.clauses]  # some can be met on relu outputs
        truth = _truth(g.dense_layers(), region)
        for limit in ((0, builtin.DENSE_LIMIT) if final_relu else (0,)):
            monkeypatch.setattr(builtin, "DENSE_LIMIT", limit)
            v = verify_property(g, Property([region]), Deadline(20))
            assert v.status in ("sat", "unsat", "unknown", "timeout"), (seed, v.status, v.log)
            if v.status == "sat":
                assert Property([region]).violated_by(v.cex, g.forward(torch.as_tensor(v.cex)[None]).numpy())
            if v.status in ("sat", "unsat"):
                assert truth in (None, v.status), (seed, v.status, truth, v.log)
                counts[v.status] += 1
    assert counts["sat"] > 2 and counts["unsat"] > 2, counts


BENCH = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks"))


@pytest.mark.parametrize("bench,onnx_file,vnnlib", [
    ("verivital", "Convnet_maxpool.onnx", "specs/maxpool_specs/prop_0_0.004.vnnlib"),
    ("verivital", "Convnet_avgpool.onnx", "specs/avgpool_specs/prop_10_0.02.vnnlib"),
    ("cifar10_resnet", "onnx/resnet_2b.onnx", "vnnlib_properties_pgd_filtered/resnet2b_pgd_filtered/prop_2_eps_0.008.vnnlib"),
    ("marabou-cifar10", "nets/cifar10_small.onnx", "specs/networkcifar10_small_index1783_eps0.024_target9_orig8.vnnlib"),
])
def test_vnncomp_dag_reference_verdicts(bench, onnx_file, vnnlib):
    """Instances of the benchmarks with pools, residual joins and NHWC inputs agree with the 2021 reference."""
    folder = BENCH / f"vnncomp2021-{bench}"
    if not folder.exists():
        pytest.skip(f"{folder} not available")
    torch.set_num_threads(1)
    ref = {(Path(r["onnx"]).as_posix().lstrip("./"), Path(r["vnnlib"]).as_posix().lstrip("./")): r["verdict"]
           for r in csv.DictReader((folder / "reference_verdicts.csv").open())}
    v = BuiltinVerifier().verify(Instance(folder / onnx_file, folder / vnnlib, 60), 60)
    assert v.status == ref[(onnx_file, vnnlib)], v.log
