"""onnxruntime's float32 Sigmoid / Tanh against the exact functions, over every finite float32 input.

    python benchmarks/activation_error.py [Sigmoid] [Tanh]

Prints, per op, the largest absolute error of onnxruntime's output (CPU provider, one thread) against
the function evaluated in float64, over all 2^32 bit patterns that are finite floats, and where it
occurs. ``vsbench.bounds.dag.SSHAPE_ERROR`` (the error the bounds allow for these ops) must be at
least this; it is set to twice the measured figure, rounded up to a power of two, since onnxruntime
picks its kernels by CPU features. About 10 minutes per op on one idle core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _session(op: str):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def largest_error(op: str, chunk: int = 1 << 24) -> tuple[float, float]:
    """``(error, at)``: the largest absolute error of onnxruntime's ``op`` and the input where it occurs."""
    sess, worst, at = _session(op), 0.0, float("nan")
    for start in range(0, 1 << 32, chunk):
        x = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        x = x[np.isfinite(x)]
        y = sess.run(None, {"x": x})[0].astype(np.float64)
        xd = x.astype(np.float64)
        exact = 0.5 * (1 + np.tanh(xd / 2)) if op == "Sigmoid" else np.tanh(xd)
        err = np.abs(y - exact)
        i = int(err.argmax())
        if err[i] > worst:
            worst, at = float(err[i]), float(x[i])
    return worst, at


def main() -> None:
    from vsbench.bounds.dag import SSHAPE_ERROR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ops", nargs="*", default=["Sigmoid", "Tanh"])
    args = ap.parse_args()
    print(f"{'op':8} {'max_abs_error':>14} {'at_input':>12} {'allowed':>10} {'seconds':>8}")
    for op in args.ops:
        t = time.monotonic()
        err, at = largest_error(op)
        print(f"{op:8} {err:14.3e} {at:12.5g} {SSHAPE_ERROR[op]:10.3e} {time.monotonic() - t:8.0f}", flush=True)


if __name__ == "__main__":
    main()
