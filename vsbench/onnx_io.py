"""onnxruntime as the judge: cached sessions, running a model, and the one check that a counterexample holds.

Every ``sat`` in vsbench, from the built-in verifier, an external tool or a result file, counts
only after ``confirm_counterexample`` replays its point here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vsbench.spec.api import Instance, Property

_SESSIONS: dict[str, object] = {}


def session(path: str | Path):
    """A single-threaded onnxruntime session for ``path`` (``.onnx`` or ``.onnx.gz``), cached while the
    file is unchanged."""
    import onnxruntime as ort

    from vsbench.gz import plain_path

    path = plain_path(path)  # a .onnx.gz runs from its decompressed copy in the cache
    stat = Path(path).stat()
    key = f"{Path(path).resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
    if key not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def check_finite(path: str | Path) -> None:
    """Raise ``ValueError`` naming the first initializer or Constant of the ONNX model that holds NaN or inf."""
    import onnx
    from onnx import numpy_helper

    from vsbench.gz import plain_path

    model = onnx.load(str(plain_path(path)))
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    for name, t in tensors:
        values = numpy_helper.to_array(t)
        if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
            raise ValueError(f"{path}: weight tensor {name!r} holds NaN or inf values")


def input_dtype(path: str | Path) -> type:
    """The numpy dtype onnxruntime is fed for the model's input (float64 for ``tensor(double)``, else float32)."""
    return np.float64 if session(path).get_inputs()[0].type == "tensor(double)" else np.float32


def run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    """The model's flat output for one input ``x`` (any shape with the model's number of elements)."""
    sess = session(path)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return np.asarray(sess.run(None, {inp.name: np.asarray(x, dtype=input_dtype(path)).reshape(shape)})[0]).ravel()


def round_inside(x, lower: np.ndarray, upper: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``x`` clipped to the box and cast to ``dtype``, each value stepped inward where the cast left the box.

    For verifiers to call on the points *they* produce (never on a point to be checked); the result is
    float64 holding ``dtype`` values. A box narrower than ``dtype``'s spacing keeps no point inside.
    """
    x = np.clip(np.asarray(x, dtype=np.float64).ravel(), lower, upper).astype(dtype)
    low, high = x < lower, x > upper
    x[low] = np.nextafter(x[low], dtype(np.inf))
    x[high] = np.nextafter(x[high], dtype(-np.inf))
    return x.astype(np.float64)


def confirm_point(onnx_path: str | Path, prop: Property, x) -> tuple[np.ndarray | None, str]:
    """The one counterexample check: ``(point, "")`` if ``x`` violates ``prop`` on the ONNX model, else
    ``(None, why)``.

    ``x`` is cast to the model's input dtype first; that cast point (returned as float64) must lie in
    a region's box, compared in float64 without tolerance, and the model's onnxruntime output on it
    must meet one of that region's clauses. A point outside every box is rejected, never clipped.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n_in = prop.regions[0].lower.size
    if x.size != n_in:
        return None, f"counterexample has {x.size} inputs, the property {n_in}"
    fed = x.astype(input_dtype(onnx_path)).astype(np.float64)
    inside = [r for r in prop.regions if np.all(fed >= r.lower) and np.all(fed <= r.upper)]
    if not inside:
        return None, "counterexample lies outside the input box (as the model's input dtype)"
    y = run_onnx(onnx_path, fed).astype(np.float64)
    if any(np.all(C @ y <= rhs) for r in inside for C, rhs in r.clauses):
        return fed, ""
    return None, "counterexample does not violate the property in onnxruntime"


def confirm_counterexample(instance: Instance, cex, cache: dict | None = None) -> tuple[np.ndarray | None, str]:
    """:func:`confirm_point` for an instance's files (``cache`` keeps parsed VNN-LIB files between calls)."""
    from vsbench.spec.vnnlib import read_vnnlib

    cache = {} if cache is None else cache
    key = str(instance.vnnlib)
    if key not in cache:
        cache[key] = read_vnnlib(instance.vnnlib)
    return confirm_point(instance.onnx, cache[key], cex)
