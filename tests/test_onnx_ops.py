"""ONNX import into the Dag (checked against onnxruntime) and the DAG bound engines' soundness
(checked against sampled points), one small graph per group of op handlers."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vsbench.bounds.dag import SSHAPE_ERROR, SShape
from vsbench.bounds.dag_bounds import (
    _sshape_relaxation,
    alpha_spec,
    crown_spec,
    float32_error,
    ibp,
    intermediate_bounds,
)
from vsbench.bounds.graph import UnsupportedModel
from vsbench.bounds.onnx_ops import load_onnx
from vsbench.onnx_io import confirm_counterexample, run_onnx
from vsbench.spec.api import Instance
from vsbench.verify.builtin import BuiltinVerifier

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.normal(size=shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1)


def _init(name, a):
    a = np.asarray(a)
    return onnx.numpy_helper.from_array(a.astype(np.int64 if a.dtype.kind == "i" else np.float32), name)


def _model(nodes, in_shape, inits, opset=13):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
    graph = helper.make_graph(nodes, "g", [x], [y], [_init(k, v) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


N = helper.make_node

CASES = {
    # Gemm with transB, alpha, beta; ReLU after the output layer
    "gemm_final_relu": _model(
        [N("Gemm", ["x", "W", "c"], ["h"], transB=1, alpha=0.5, beta=2.0), N("Relu", ["h"], ["r"]),
         N("Gemm", ["r", "W2"], ["o"]), N("Relu", ["o"], ["y"])],
        (1, 4), {"W": _w(6, 4), "c": _w(6), "W2": _w(6, 3)}),
    # Gemm on a transposed activation (transA) and a constant on the left of a MatMul
    "gemm_transA_matmul_left": _model(
        [N("Gemm", ["x", "W"], ["h"], transA=1), N("Relu", ["h"], ["r"]), N("Transpose", ["r"], ["t"]),
         N("MatMul", ["M", "t"], ["y"])],
        (4, 1), {"W": _w(4, 5), "M": _w(3, 5)}),
    # Conv with asymmetric padding, stride and dilation; BatchNorm; grouped conv; GlobalAveragePool
    "conv_pads_groups": _model(
        [N("Conv", ["x", "K", "kb"], ["c1"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
         N("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], epsilon=1e-3), N("Relu", ["bn"], ["r1"]),
         N("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1], group=2), N("Relu", ["c2"], ["r2"]),
         N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]), N("Gemm", ["f", "W"], ["y"])],
        (1, 2, 7, 6), {"K": _w(4, 2, 3, 2), "kb": _w(4), "s": _w(4) + 1.5, "b": _w(4), "m": _w(4),
                       "v": np.abs(_w(4)) + 0.5, "K2": _w(4, 2, 3, 3), "W": _w(4, 3)}),
    # residual Add of two branches, Sub/Mul/Div by constants, Sub of a constant by the activation, Neg
    "residual": _model(
        [N("Conv", ["x", "K1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
         N("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1]), N("Add", ["c2", "r1"], ["s"]), N("Relu", ["s"], ["r2"]),
         N("Sub", ["r2", "k1"], ["a"]), N("Mul", ["a", "k2"], ["b"]), N("Div", ["b", "k3"], ["c"]),
         N("Sub", ["k1", "c"], ["d"]), N("Neg", ["d"], ["e"]), N("Sub", ["e", "r1"], ["g"]),
         N("Flatten", ["g"], ["f"]), N("Gemm", ["f", "W"], ["y"])],
        (1, 2, 4, 4), {"K1": _w(3, 2, 3, 3), "K2": _w(3, 3, 3, 3), "k1": _w(3, 1, 1), "k2": _w(1, 4, 4),
                       "k3": np.float32(1.7), "W": _w(48, 3)}),
    # Pad (asymmetric), AveragePool with and without the padding counted, MaxPool with overlap and pads
    "pools": _model(
        [N("Pad", ["x", "p"], ["xp"]), N("AveragePool", ["xp"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
         N("Relu", ["a"], ["r"]), N("MaxPool", ["r"], ["m"], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1]),
         N("AveragePool", ["m"], ["a2"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=0),
         N("Flatten", ["a2"], ["f"]), N("MatMul", ["f", "W"], ["y"])],
        (1, 2, 6, 6), {"p": np.array([0, 0, 1, 0, 0, 0, 0, 2]), "W": _w(42, 3)}),
    # NHWC input: Transpose at the input, Conv, Transpose back, Reshape, MatMul, a final ReLU
    "nhwc": _model(
        [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), N("Conv", ["t", "K", "kb"], ["c"], strides=[2, 2]),
         N("Relu", ["c"], ["r"]), N("Transpose", ["r"], ["t2"], perm=[0, 2, 3, 1]),
         N("Reshape", ["t2", "shape"], ["f"]), N("MatMul", ["f", "W"], ["h"]), N("Add", ["h", "c2"], ["o"]),
         N("Relu", ["o"], ["y"])],
        (1, 5, 5, 2), {"K": _w(3, 2, 3, 3), "kb": _w(3), "shape": np.array([-1, 12]), "W": _w(12, 4), "c2": _w(4)}),
    # shape arithmetic folded; Constant, Identity, Dropout; Squeeze/Unsqueeze, Concat with a constant,
    # Slice and Gather on activations, Sub of two activations, an activation broadcast up by Add
    "shape_ops": _model(
        [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "zero"], ["n"], axis=0), N("Unsqueeze", ["n", "zero1"], ["n1"]),
         N("Constant", [], ["minus1"], value=helper.make_tensor("v", TensorProto.INT64, [1], [-1])),
         N("Concat", ["n1", "minus1"], ["target"], axis=0), N("Reshape", ["x", "target"], ["flat"]),
         N("Identity", ["flat"], ["id"]), N("Dropout", ["id"], ["dr"]), N("Unsqueeze", ["dr", "zero1"], ["u"]),
         N("Squeeze", ["u", "zero1"], ["sq"]), N("Concat", ["sq", "cc"], ["cat"], axis=1),
         N("Slice", ["cat", "st", "en", "ax", "sp"], ["sl"]), N("Gather", ["cat", "idx"], ["ga"], axis=1),
         N("Sub", ["sl", "ga"], ["d"]), N("Relu", ["d"], ["r"]), N("Add", ["r", "big"], ["y"])],
        (1, 2, 3), {"zero": np.array(0), "zero1": np.array([0]), "cc": _w(1, 2), "st": np.array([1]),
                    "en": np.array([100]), "ax": np.array([1]), "sp": np.array([2]), "idx": np.array([7, 0, 2, 5]),
                    "big": _w(3, 1, 4)}),
    # Sigmoid and Tanh: after a conv (some wide ranges), between Gemms, and at the output
    "sigmoid_tanh": _model(
        [N("Conv", ["x", "K", "kb"], ["c"], strides=[2, 2]), N("Tanh", ["c"], ["t"]), N("Flatten", ["t"], ["f"]),
         N("Gemm", ["f", "W", "b"], ["h"]), N("Sigmoid", ["h"], ["s"]), N("Gemm", ["s", "W2"], ["o"]),
         N("Tanh", ["o"], ["y"])],
        (1, 2, 5, 5), {"K": 3 * _w(3, 2, 3, 3), "kb": _w(3), "W": 3 * _w(12, 6), "b": _w(6), "W2": 2 * _w(6, 4)}),
}


def _session_out(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_onnxruntime(case, tmp_path):
    model = CASES[case]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    dag = load_onnx(path)
    xs = RNG.uniform(-1, 1, size=(5, dag.n_in)).astype(np.float32)
    ours = dag.forward(torch.as_tensor(xs, dtype=torch.float64))
    for x, y in zip(xs, ours.numpy()):
        ref = run_onnx(path, x)
        assert y.shape == ref.shape
        assert np.allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_chain_models_convert_to_the_chain_graph(tmp_path):
    onnx.save(CASES["gemm_final_relu"], tmp_path / "chain.onnx")
    chain = load_onnx(tmp_path / "chain.onnx").to_chain()
    assert chain is not None and chain.relu_count() == 2
    onnx.save(CASES["residual"], tmp_path / "dag.onnx")
    assert load_onnx(tmp_path / "dag.onnx").to_chain() is None


@pytest.mark.parametrize(
    "nodes, inits, message",
    [
        ([N("Softplus", ["x"], ["y"])], {}, "unsupported ONNX operator Softplus"),
        ([N("Gemm", ["x", "W"], ["y"], transB=1, foo=3)], {"W": _w(3, 4)}, "unsupported attribute foo"),
        ([N("Mul", ["x", "x"], ["y"])], {}, "Mul of two activations is not linear"),
        ([N("MatMul", ["x", "W"], ["y"])], {"W": _w(3, 2)}, "MatMul node 'n0': .*shapes cannot be multiplied"),
        ([N("Gemm", ["x", "x"], ["y"])], {}, "must be a constant"),
        ([N("Pad", ["x", "p"], ["y"], mode="reflect")], {"p": np.array([0, 1, 0, 1])}, "mode=reflect"),
    ],
)
def test_unsupported_op_or_attribute_is_one_error_naming_it(nodes, inits, message, tmp_path):
    onnx.save(_model(nodes, (1, 4), inits), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModel, match=message):
        load_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize("case", sorted(CASES))
def test_dag_bounds_contain_sampled_outputs(case, tmp_path):
    """IBP, CROWN and alpha-CROWN bounds hold at points sampled in the box (and at its corners);
    alpha is never looser than CROWN."""
    onnx.save(CASES[case], tmp_path / "m.onnx")
    dag = load_onnx(tmp_path / "m.onnx")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, dag.n_in, generator=gen, dtype=torch.float64) * 2 - 1
    lo, hi = x0 - 0.3, x0 + 0.3
    t = torch.rand(2, 3000, dag.n_in, generator=gen, dtype=torch.float64)
    t[:, :200] = t[:, :200].round()  # corners
    xs = lo[:, None] + (hi - lo)[:, None] * t
    ys = dag.forward(xs.reshape(-1, dag.n_in)).reshape(2, 3000, -1)
    shaped = (lo.reshape(2, *dag.in_shape), hi.reshape(2, *dag.in_shape))
    bounds = ibp(dag, *shaped)
    l, u = (b.reshape(2, -1) for b in bounds[dag.output])
    assert (ys >= l[:, None] - 1e-9).all() and (ys <= u[:, None] + 1e-9).all()
    C = torch.randn(2, 4, dag.n_out, generator=gen, dtype=torch.float64)
    exact = torch.einsum("bsn,bkn->bks", C, ys).min(1).values  # >= the true minimum
    inter = intermediate_bounds(dag, *shaped)
    crown = crown_spec(dag, *shaped, C, inter)
    alpha, _ = alpha_spec(dag, *shaped, C, inter, iters=10)
    ibp_lb = (C.clamp(min=0) * l[:, None] + C.clamp(max=0) * u[:, None]).sum(-1)
    for lb in (crown, alpha, ibp_lb):
        assert (lb <= exact + 1e-9).all()
    assert (alpha >= crown - 1e-12).all()
    assert (crown >= ibp_lb - 1e-9).any()


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_error_bounds_onnxruntime(case, tmp_path):
    """The float32 error bound holds for onnxruntime's outputs at sampled float32 points of the box."""
    path = tmp_path / "m.onnx"
    onnx.save(CASES[case], path)
    dag = load_onnx(path)
    lo = torch.full((1, dag.n_in), -1.0, dtype=torch.float64)
    hi = -lo
    rows = torch.randn(5, dag.n_out, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    err = float32_error(dag, intermediate_bounds(dag, lo, hi), rows).numpy()
    assert (err > 0).all()
    xs = RNG.uniform(-1, 1, size=(50, dag.n_in)).astype(np.float32)
    exact = dag.forward(torch.as_tensor(xs, dtype=torch.float64)).numpy()
    for x, y in zip(xs, exact):
        assert (np.abs(rows.numpy() @ (run_onnx(path, x) - y)) <= err).all()


def test_grafted_relu_export_reads_as_a_dag(tmp_path):
    """A linearity-grafted layer exports as Relu, Mul and Add of two branches; the DAG reads it, agrees
    with onnxruntime and bounds it soundly."""
    from torch import nn

    from vsbench.export.onnx import export_onnx
    from vsbench.nets import GraftReLU

    torch.manual_seed(0)
    graft = GraftReLU((6,))
    graft.keep[:3] = 0.0
    with torch.no_grad():
        graft.slope.uniform_(0, 1)
        graft.intercept.uniform_(-0.2, 0.2)
    model = nn.Sequential(nn.Linear(4, 6), graft, nn.Linear(6, 3)).eval()
    path = tmp_path / "graft.onnx"
    export_onnx(model, (4,), path)
    dag = load_onnx(path)
    assert dag.to_chain() is None  # two branches joined by Add
    x = torch.rand(20, 4, dtype=torch.float64) * 2 - 1
    for xi, yi in zip(x, dag.forward(x)):
        assert np.allclose(yi.numpy(), run_onnx(path, xi.numpy()), atol=1e-5)
    lo, hi = -torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    C = torch.eye(3, dtype=torch.float64)[None]
    lb = crown_spec(dag, lo, hi, C)
    ys = dag.forward(torch.rand(5000, 4, dtype=torch.float64) * 2 - 1)
    assert (ys.min(0).values >= lb[0] - 1e-9).all()


@pytest.mark.parametrize("case", ["conv_pads_groups", "residual", "pools", "sigmoid_tanh"])
def test_float32_crown_bounds_hold_in_onnxruntime(case, tmp_path):
    """CROWN with the float32 roundings as perturbations bounds onnxruntime's float32 outputs, and is
    within a small margin of the exact-arithmetic bound."""
    path = tmp_path / "m.onnx"
    onnx.save(CASES[case], path)
    dag = load_onnx(path)
    lo = torch.full((1, dag.n_in), -0.5, dtype=torch.float64)
    hi = -lo
    C = torch.randn(1, 4, dag.n_out, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rounding = {}
    lb32 = crown_spec(dag, lo, hi, C, rounding=rounding)[0]
    assert rounding and all((r > 0).all() for r in rounding.values())
    lb = crown_spec(dag, lo, hi, C)[0]
    assert (lb32 < lb).all() and (lb - lb32 < 1e-3).all()
    xs = RNG.uniform(-0.5, 0.5, size=(50, dag.n_in)).astype(np.float32)
    for x in xs:
        assert (C[0].numpy() @ run_onnx(path, x) >= lb32.numpy()).all()


def test_float32_crown_bounds_over_a_batch_of_boxes_hold_in_onnxruntime(tmp_path):
    """Over a batch of boxes (as input splitting bounds them), each box's rounding-aware CROWN bound
    holds for onnxruntime's float32 outputs of points in that box."""
    path = tmp_path / "m.onnx"
    onnx.save(CASES["residual"], path)
    dag = load_onnx(path)
    gen = torch.Generator().manual_seed(5)
    centre = torch.rand(3, dag.n_in, generator=gen, dtype=torch.float64) - 0.5
    radius = torch.tensor([[0.05], [0.2], [0.5]], dtype=torch.float64)
    C = torch.randn(3, 4, dag.n_out, generator=gen, dtype=torch.float64)
    lb = crown_spec(dag, centre - radius, centre + radius, C, rounding={})
    assert lb.shape == (3, 4)
    for b in range(3):
        xs = centre[b].numpy() + radius[b].item() * RNG.uniform(-1, 1, size=(30, dag.n_in))
        for x in xs.astype(np.float32):
            assert (C[b].numpy() @ run_onnx(path, x) >= lb[b].numpy()).all()


@pytest.mark.parametrize("kind", ["Sigmoid", "Tanh"])
def test_sshape_relaxation_contains_the_function(kind):
    """The two parallel lines bound Sigmoid / Tanh on narrow, wide, one-sided and mixed intervals."""
    op = SShape(kind)
    gen = torch.Generator().manual_seed(4)
    scale = torch.tensor([0.1, 6.0], dtype=torch.float64).repeat_interleave(200)
    ends = torch.randn(2, 400, generator=gen, dtype=torch.float64) * scale + 3 * torch.randn(400, generator=gen)
    l, u = ends.min(0).values[None], ends.max(0).values[None]
    s, low, up = (t[:, 0] for t in _sshape_relaxation(op, l, u))
    x = l + (u - l) * torch.rand(1000, 400, generator=gen, dtype=torch.float64)
    y = torch.sigmoid(x) if kind == "Sigmoid" else torch.tanh(x)
    assert (s * x + low <= y + 1e-12).all() and (y <= s * x + up + 1e-12).all()


def test_verifier_decides_a_sigmoid_tanh_net_both_ways(tmp_path):
    """unsat for a bound far below the output, sat (confirmed in onnxruntime) for one just above it."""
    path = tmp_path / "m.onnx"
    onnx.save(CASES["sigmoid_tanh"], path)
    x0 = RNG.uniform(-0.5, 0.5, size=50).astype(np.float32)
    y0 = float(run_onnx(path, x0)[0])
    box = "".join(f"(declare-const X_{i} Real)\n" for i in range(50)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(4)) + "".join(
        f"(assert (>= X_{i} {v - 0.01:.6f}))\n(assert (<= X_{i} {v + 0.01:.6f}))\n" for i, v in enumerate(x0))
    for name, threshold, want in (("far", y0 - 1.0, "unsat"), ("near", y0 + 1e-3, "sat")):
        (tmp_path / f"{name}.vnnlib").write_text(box + f"(assert (<= Y_0 {threshold:.6f}))\n")
        v = BuiltinVerifier().verify(Instance(path, tmp_path / f"{name}.vnnlib", 30), 30)
        assert v.status == want, v.log
        if want == "sat":
            assert confirm_counterexample(Instance(path, tmp_path / f"{name}.vnnlib", 30), v.cex)[0] is not None


@pytest.mark.parametrize("kind", ["Sigmoid", "Tanh"])
def test_onnxruntime_sshape_is_within_the_allowed_error(kind, tmp_path):
    """On a million float32 inputs (and in a 7-element tensor, onnxruntime's scalar tail), its
    Sigmoid / Tanh stay within SSHAPE_ERROR of the function in float64 (the exhaustive check over
    every float32 is benchmarks/activation_error.py)."""
    import onnxruntime as ort

    model = helper.make_model(helper.make_graph(
        [helper.make_node(kind, ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])]), opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([RNG.normal(0, 4, 1_000_000), RNG.uniform(-30, 30, 7)]).astype(np.float32)
    for part in (x[:-7], x[-7:]):
        y = sess.run(None, {"x": part})[0].astype(np.float64)
        exact = torch.as_tensor(part, dtype=torch.float64)
        exact = (torch.sigmoid(exact) if kind == "Sigmoid" else torch.tanh(exact)).numpy()
        assert np.abs(y - exact).max() <= SSHAPE_ERROR[kind]
