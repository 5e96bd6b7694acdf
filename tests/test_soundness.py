"""Float32 soundness: the float32 error bound holds against onnxruntime, a margin below it is not
``unsat``, NaN weights are an ``error``, and ``confirm_counterexample`` judges the point fed to the model."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vsbench.bounds.float_error import ChainError, row_error
from vsbench.bounds.forward import forward_bounds
from vsbench.bounds.graph import Graph
from vsbench.bounds.onnx_ops import load_onnx
from vsbench.onnx_io import confirm_counterexample, round_inside, run_onnx
from vsbench.spec.api import Deadline, Instance, Property, Region, Verdict
from vsbench.spec.vnnlib import read_vnnlib, write_vnnlib
from vsbench.verify import input_split
from vsbench.verify.builtin import BuiltinVerifier, dense_path
from vsbench.verify.external import VnncompToolVerifier

ACASXU = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-acasxu"


def _save(path, nodes, inits, n_in, n_out, in_shape=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape or [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _random_mlp(path, rng, widths, normalise=False):
    """Gemm/ReLU layers (the last as MatMul + Add), optionally after a Sub/Div normalisation."""
    nodes, inits, cur = [], {}, "x"
    if normalise:
        inits.update(mean=rng.uniform(0, 1, widths[0]), std=rng.uniform(0.2, 2, widths[0]))
        nodes += [helper.make_node("Sub", ["x", "mean"], ["xs"]), helper.make_node("Div", ["xs", "std"], ["xn"])]
        cur = "xn"
    for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{k}"], inits[f"b{k}"] = rng.normal(size=(o, i)) * 3 / np.sqrt(i), rng.normal(size=o)
        if k < len(widths) - 2:
            nodes += [helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [f"z{k}"], transB=1),
                      helper.make_node("Relu", [f"z{k}"], [f"a{k}"])]
            cur = f"a{k}"
        else:
            inits[f"W{k}"] = inits[f"W{k}"].T
            nodes += [helper.make_node("MatMul", [cur, f"W{k}"], ["m"]), helper.make_node("Add", ["m", f"b{k}"], ["y"])]
    return _save(path, nodes, inits, widths[0], widths[-1])


def _exact(path, x):
    """The model's output in float64 arithmetic on its float32 weights (numpy, independent of the bound code)."""
    m = onnx.load(str(path))
    c = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    inp = next(i.name for i in m.graph.input if i.name not in c)
    v = {inp: np.asarray(x, dtype=np.float64).reshape(1, -1)}
    ops = {"Sub": lambda a: a[0] - a[1], "Div": lambda a: a[0] / a[1], "Relu": lambda a: np.maximum(a[0], 0),
           "Gemm": lambda a: a[0] @ a[1].T + a[2], "MatMul": lambda a: a[0] @ a[1], "Add": lambda a: a[0] + a[1],
           "Flatten": lambda a: a[0].reshape(1, -1)}
    for n in m.graph.node:
        v[n.output[0]] = ops[n.op_type]([v.get(i, c.get(i)) for i in n.input])
    return v[m.graph.output[0].name].ravel()


@pytest.mark.parametrize("seed", range(6))
def test_float32_error_bound_holds_in_onnxruntime(tmp_path, seed):
    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(20, 300))] + [int(rng.integers(10, 200)) for _ in range(rng.integers(1, 4))] + [5]
    path = _random_mlp(tmp_path / "m.onnx", rng, widths, normalise=seed % 2 == 1)
    centre = rng.uniform(0, 1, widths[0])
    lo, hi = centre - 0.02, centre + 0.02
    C = np.vstack([np.eye(5), rng.normal(size=(3, 5))])
    bound = row_error(path, lo, hi, C)
    assert np.all(bound > 0) and np.all(np.isfinite(bound))
    worst = 0.0
    for x in rng.uniform(lo, hi, size=(300, widths[0])):
        x32 = round_inside(x, lo, hi)
        gap = np.abs(C @ (run_onnx(path, x32).astype(np.float64) - _exact(path, x32)))
        assert np.all(gap <= bound), (gap, bound)
        worst = max(worst, float((gap / bound).max()))
    assert worst > 0  # onnxruntime did round: the comparison is not vacuous


@pytest.mark.parametrize("case", [0, 1, 2, 3, "acasxu"])
def test_per_box_float32_error_bound_holds_in_onnxruntime(tmp_path, case):
    """:class:`ChainError` over small sub-boxes, from forward (and CROWN-tightened) pre-ReLU bounds of
    the merged chain, holds on random sub-boxes against onnxruntime vs exact float64 arithmetic."""
    rng = np.random.default_rng(0 if case == "acasxu" else case)
    if case == "acasxu":
        if not ACASXU.exists():
            pytest.skip("acasxu benchmark not available")
        path = ACASXU / "ACASXU_run2a_1_1_batch_2000.onnx"
        region = read_vnnlib(ACASXU / "prop_1.vnnlib").regions[0]
        L, H = region.lower, region.upper
    else:
        widths = [int(rng.integers(2, 6))] + [int(rng.integers(10, 60)) for _ in range(3)] + [5]
        path = _random_mlp(tmp_path / "m.onnx", rng, widths, normalise=case % 2 == 1)
        L, H = np.zeros(widths[0]), np.ones(widths[0])
    g = input_split._dense(dense_path(load_onnx(path)).to(torch.float64))
    width = (H - L) * rng.uniform(1 / 64, 1 / 4, size=(16, len(L)))
    lo = L + (H - L - width) * rng.uniform(size=width.shape)
    hi = lo + width
    C = np.vstack([np.eye(5), rng.normal(size=(3, 5))])
    blo, bhi = torch.as_tensor(lo), torch.as_tensor(hi)
    # the split's two stages: forward linear bounds, and those tightened by CROWN; the smaller error bound
    cheap = ChainError(path)(blo, bhi, torch.as_tensor(C), forward_bounds(g, blo, bhi))
    tight = forward_bounds(g, blo, bhi, input_split._crown_unstable(blo, bhi, Deadline(600)))
    bound = torch.minimum(cheap, ChainError(path)(blo, bhi, torch.as_tensor(C), tight)).numpy()
    assert np.all(bound > 0) and np.all(np.isfinite(bound))
    worst = 0.0
    for b in range(len(lo)):
        for x in rng.uniform(lo[b], hi[b], size=(30, len(L))):
            x32 = round_inside(x, lo[b], hi[b])
            gap = np.abs(C @ (run_onnx(path, x32).astype(np.float64) - _exact(path, x32)))
            assert np.all(gap <= bound[b]), (b, gap, bound[b])
            worst = max(worst, float((gap / bound[b]).max()))
    assert worst > 0  # onnxruntime did round: the comparison is not vacuous


@pytest.mark.parametrize("seed,float32_bounds", [(0, False), (1, False), (2, True), (3, True)])
def test_layer_rounding_holds_in_onnxruntime(tmp_path, seed, float32_bounds):
    """:meth:`ChainError.layer_rounding` (the slack the dense path and the input split give each
    layer), from no bounds or (``float32_bounds``) from the forward bounds of the network with that
    slack: every float32 pre-activation onnxruntime computes is within it of the layer's exact map of
    onnxruntime's own float32 activation before it (numpy float64 arithmetic on the float32 weights)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(20, 300))] + [int(rng.integers(10, 200)) for _ in range(rng.integers(1, 4))] + [5]
    path = _random_mlp(tmp_path / "m.onnx", rng, widths, normalise=seed % 2 == 1)
    centre = rng.uniform(0, 1, widths[0])
    lo, hi = centre - 0.05, centre + 0.05
    chain = ChainError(path)
    blo, bhi = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    slack = chain.layer_rounding(blo, bhi)
    if float32_bounds:
        dense = dense_path(load_onnx(path)).to(torch.float64).dense_layers()
        inter = forward_bounds(Graph.from_dense(dense, slack=slack), blo, bhi)
        tight = chain.layer_rounding(blo, bhi, inter, float32_bounds=True)
        slack = tight
    slack = [r[0].numpy() for r in slack]
    m = onnx.load(str(path))
    names = [f"z{k}" for k in range(len(widths) - 2)] + ["y"]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names[:-1])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    c = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    worst = 0.0
    for x in rng.uniform(lo, hi, size=(200, widths[0])):
        x32 = round_inside(x, lo, hi).astype(np.float32)
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x32[None]})))
        a = x32.astype(np.float64)
        if seed % 2:  # the first layer's exact map includes the Sub / Div normalisation
            a = (a - c["mean"]) / c["std"]
        for k, n in enumerate(names):
            W = c[f"W{k}"] if n != "y" else c[f"W{k}"].T
            gap = np.abs(out[n].astype(np.float64).ravel() - (W @ a + c[f"b{k}"]))
            assert np.all(gap <= slack[k]), (k, (gap - slack[k]).max())
            worst = max(worst, float((gap / slack[k]).max()))
            a = np.maximum(out[n].astype(np.float64).ravel(), 0.0)
    assert worst > 0  # onnxruntime did round: the comparison is not vacuous


def test_margin_below_float32_error_is_not_unsat(tmp_path):
    """Y_0 is a 64-term sum near 100 on one input point; the property 'Y_0 >= exact + 1e-5' has an exact
    margin of 1e-5 (> TAU, so a float64 verifier says unsat) but float32 rounding is larger."""
    rng = np.random.default_rng(0)
    w = rng.uniform(1, 2, size=(1, 64)).astype(np.float32)
    x = rng.uniform(1, 2, size=64).astype(np.float32).astype(np.float64)
    path = _save(tmp_path / "sum.onnx", [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
                                        helper.make_node("Relu", ["h"], ["r"]),
                                        helper.make_node("Gemm", ["r", "V", "c"], ["y"], transB=1)],
                 {"W": w, "b": np.zeros(1), "V": np.ones((1, 1)), "c": np.zeros(1)}, 64, 1)
    exact = float(_exact(path, x)[0])
    assert 50 < exact < 400
    vnnlib = tmp_path / "p.vnnlib"
    write_vnnlib(vnnlib, Property([Region(x, x.copy(), [(np.array([[-1.0]]), np.array([-(exact + 1e-5)]))])]))
    bound = row_error(path, x, x, np.array([[-1.0]]))[0]
    assert bound > 1e-5
    v = BuiltinVerifier().verify(Instance(path, vnnlib, 10), 10)
    assert v.status != "unsat", v.log
    assert "float32 rounding bound" in v.log


def test_nan_weights_are_an_error(tmp_path):
    rng = np.random.default_rng(1)
    path = _random_mlp(tmp_path / "m.onnx", rng, [4, 6, 3])
    m = onnx.load(str(path))
    W = numpy_helper.to_array(m.graph.initializer[0]).copy()
    W[0, 0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(W, m.graph.initializer[0].name))
    onnx.save(m, path)
    vnnlib = tmp_path / "p.vnnlib"
    write_vnnlib(vnnlib, Property([Region(np.zeros(4), np.ones(4), [(np.array([[1.0, -1.0, 0.0]]), np.array([-1e6]))])]))
    v = BuiltinVerifier().verify(Instance(path, vnnlib, 10), 10)
    assert v.status == "error" and "NaN" in v.log, v.log


@pytest.fixture
def identity(tmp_path):
    """y = x for x in R^2; violated where Y_0 >= 0.5 in the box [0, 1]^2."""
    path = _save(tmp_path / "id.onnx", [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                 {"W": np.eye(2), "b": np.zeros(2)}, 2, 2)
    vnnlib = tmp_path / "p.vnnlib"
    write_vnnlib(vnnlib, Property([Region(np.array([0.7, 0.0]), np.ones(2), [(np.array([[-1.0, 0.0]]), np.array([-0.5]))])]))
    return Instance(path, vnnlib, 10)


def test_out_of_box_counterexample_is_rejected(identity):
    """X_1 = 9 violates the output clause and clipped into [0, 1] would too: it is still rejected."""
    cex, why = confirm_counterexample(identity, [0.8, 9.0])
    assert cex is None and "outside" in why
    assert confirm_counterexample(identity, [0.8, 1.0])[0] is not None


def test_point_rounding_outside_in_float32_is_rejected(identity):
    """0.7 lies in [0.7, 1] in float64 but float32(0.7) < 0.7: the point fed to the model is outside."""
    assert float(np.float32(0.7)) < 0.7
    cex, why = confirm_counterexample(identity, [0.7, 0.5])
    assert cex is None and "outside" in why
    inward = round_inside([0.7, 0.5], np.array([0.7, 0.0]), np.ones(2))
    cex, _ = confirm_counterexample(identity, inward)
    assert cex is not None and cex[0] >= 0.7 and cex[0] == np.float32(cex[0])


def test_external_out_of_box_counterexample_is_unknown(tmp_path, identity):
    """A VNN-COMP tool (a real subprocess) answering sat with X_1 = 9 gets ``unknown``, not ``sat``."""
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "prepare_instance.sh").write_text("exit 0\n")
    (tool / "run_instance.sh").write_text('printf "sat\\n((X_0 0.8)\\n (X_1 9.0))\\n" > "$5"\n')
    v = VnncompToolVerifier(tool).verify(identity, 10)
    assert v.status == "unknown" and "outside" in v.log, v.log
    (tool / "run_instance.sh").write_text('printf "sat\\n((X_0 0.8)\\n (X_1 1.0))\\n" > "$5"\n')
    v = VnncompToolVerifier(tool).verify(identity, 10)
    assert v.status == "sat" and v.cex.tolist() == [np.float32(0.8), 1.0]


class _Residual(torch.nn.Module):
    """Conv, BatchNorm, a residual join, AvgPool, MaxPool and a Gemm: ops only the DAG path reads."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.c2, self.fc = torch.nn.Conv2d(4, 4, 3, padding=1, stride=1), torch.nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(self.c2(h) + h)
        h = torch.nn.functional.max_pool2d(torch.nn.functional.avg_pool2d(h, 2), 2)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("seed", range(3))
def test_dag_float32_error_bound_holds_in_onnxruntime(tmp_path, seed):
    from vsbench.bounds.float_error import dag_row_error

    torch.manual_seed(seed)
    net = _Residual().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1), net.bn.running_var.uniform_(0.5, 2)
    path = tmp_path / "res.onnx"
    torch.onnx.export(net, (torch.zeros(1, 2, 8, 8),), str(path), dynamo=False, opset_version=17)
    exact = net.double()  # float64 arithmetic on the same (float32-valued) weights: the oracle
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0.5, 128)
    hi = lo + 0.5
    bound = dag_row_error(load_onnx(path), lo, hi, np.eye(5))
    for _ in range(100):
        x32 = rng.uniform(lo, hi).astype(np.float32)
        with torch.no_grad():
            want = exact(torch.as_tensor(x32, dtype=torch.float64).reshape(1, 2, 8, 8)).numpy().ravel()
        assert np.all(np.abs(run_onnx(path, x32) - want) <= bound)
    assert bound.max() < 1e-3  # sound, and small enough not to cost real proofs


class OutOfBox:
    """A verifier claiming sat at X_1 = 9, outside the box [0, 1] (where the output clause does hold)."""

    name = "out-of-box"

    def available(self):
        return True, ""

    def verify(self, instance, timeout):
        return Verdict("sat", 0.01, cex=np.array([0.8, 9.0]), log="claimed outside the box")


def test_runner_records_out_of_box_counterexample_as_unknown(tmp_path, identity):
    import sys

    import ray

    from vsbench.cluster import init_ray
    from vsbench.verify.runner import run_verification

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get OutOfBox by value
    started = not ray.is_initialized()
    if started:
        init_ray(1)
    try:
        (rec,) = run_verification([identity], OutOfBox, tmp_path / "out", timeout_cap=10)
    finally:
        if started:
            ray.shutdown()
    assert rec["status"] == "unknown" and not rec["cex_checked"] and "outside the input box" in rec["log"]
