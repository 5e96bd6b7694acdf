"""onnxruntime as the judge: cached sessions, running a model, and the one check that a counterexample holds.

Every ``sat`` in vsbench, from the built-in verifier, an external tool or a result file, counts
only after ``confirm_counterexample`` replays its point here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vsbench.spec.api import Instance

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


def run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    """The model's flat output for one input ``x`` (any shape with the model's number of elements)."""
    sess = session(path)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    return np.asarray(sess.run(None, {inp.name: np.asarray(x, dtype=dtype).reshape(shape)})[0]).ravel()


def confirm_counterexample(instance: Instance, cex, cache: dict | None = None) -> tuple[np.ndarray | None, str]:
    """Re-run ``cex`` (clipped to each input box) in onnxruntime; the point if it violates the property."""
    from vsbench.spec.vnnlib import read_vnnlib

    cache = {} if cache is None else cache
    key = str(instance.vnnlib)
    if key not in cache:
        cache[key] = read_vnnlib(instance.vnnlib)
    prop = cache[key]
    x = np.asarray(cex, dtype=np.float64).ravel()
    if x.size != prop.regions[0].lower.size:
        return None, f"counterexample has {x.size} inputs, the property {prop.regions[0].lower.size}"
    for region in prop.regions:
        xc = np.clip(x, region.lower, region.upper)
        y = run_onnx(instance.onnx, xc)
        if prop.violated_by(xc, y):
            return xc, ""
    return None, "counterexample does not violate the property in onnxruntime"
