"""The Python API: verify a torch model or an ONNX file in one call.

``vsbench.verify(model_or_onnx, spec)`` returns a ``Verdict`` (``sat`` only with a counterexample that
onnxruntime confirms on the exported float32 model); ``vsbench.certify(model, x, eps, label)`` checks
L-inf robustness at one input; ``vsbench.benchmark(model, dataset, eps, n)`` gives the row that
``vsbench verify`` prints for a benchmark folder, plus clean and verified accuracy.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from vsbench.spec.api import Property, Region, Verdict


def _in_shape(model, n_in: int) -> tuple[int, ...]:
    """The input shape (without batch) of ``model`` for ``n_in`` inputs: square images for a conv net."""
    from torch import nn

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return (n_in,)
    side = math.isqrt(n_in // conv.in_channels)
    if conv.in_channels * side * side != n_in:
        raise ValueError(f"cannot infer a square image shape for {n_in} inputs and {conv.in_channels} channels; "
                         "pass in_shape")
    return (conv.in_channels, side, side)


def _property(spec) -> Property:
    """``spec`` = ((lower, upper), [(C, rhs), ...]): violated where ``C @ y <= rhs`` for some clause."""
    try:
        (lower, upper), clauses = spec
        lower, upper = np.asarray(lower, dtype=np.float64).ravel(), np.asarray(upper, dtype=np.float64).ravel()
        clauses = [(np.atleast_2d(np.asarray(C, dtype=np.float64)), np.atleast_1d(np.asarray(r, dtype=np.float64)))
                   for C, r in clauses]
    except (TypeError, ValueError):
        raise ValueError("spec must be a VNN-LIB path or ((lower, upper), [(C, rhs), ...])") from None
    if lower.shape != upper.shape or not clauses or any(C.shape[0] != r.size for C, r in clauses):
        raise ValueError("spec: lower and upper must match and every clause needs one rhs per row of C")
    return Property([Region(lower, upper, clauses)])


def verify(model_or_onnx, spec, timeout: float = 60.0, verifier: str = "builtin",
           in_shape: tuple[int, ...] | None = None) -> Verdict:
    """Decide ``spec`` for a torch ``nn.Module`` (exported to ONNX first) or an ONNX file (``.gz`` too).

    ``spec``: a VNN-LIB file, or ``((lower, upper), [(C, rhs), ...])``: the input box and the output
    clauses under which the property is *violated* (``C @ y <= rhs`` row-wise, flat output ``y``).
    ``verifier``: any registry name (``builtin``, ``marabou``, ``abcrown``, ``vnncomp:DIR``). A ``sat``
    whose point onnxruntime does not confirm becomes ``unknown``. ``in_shape`` (without batch) defaults
    to a flat vector, or a square image for a conv net.
    """
    from vsbench.gz import plain_instance
    from vsbench.onnx_io import confirm_counterexample
    from vsbench.spec.api import Instance
    from vsbench.spec.vnnlib import read_vnnlib, write_vnnlib
    from vsbench.verify.registry import get_verifier

    v = get_verifier(verifier)
    ok, why = v.available()
    if not ok:
        raise ValueError(f"verifier {verifier!r} is not available: {why}")
    with tempfile.TemporaryDirectory(prefix="vsbench-api-") as tmp:
        if isinstance(spec, (str, Path)):
            vnnlib = Path(spec)
            n_in = read_vnnlib(vnnlib).regions[0].lower.size
        else:
            prop = _property(spec)
            vnnlib, n_in = Path(tmp) / "spec.vnnlib", prop.regions[0].lower.size
            write_vnnlib(vnnlib, prop)
        if isinstance(model_or_onnx, (str, Path)):
            onnx = Path(model_or_onnx)
        else:
            from vsbench.export.onnx import export_onnx

            onnx = export_onnx(model_or_onnx, in_shape or _in_shape(model_or_onnx, n_in), Path(tmp) / "model.onnx")
        instance = plain_instance(Instance(onnx, vnnlib, timeout))
        verdict = v.verify(instance, timeout)
        if verdict.status == "sat":
            point, why = (None, "sat without a counterexample") if verdict.cex is None else \
                confirm_counterexample(instance, verdict.cex)
            if point is None:
                verdict.status, verdict.cex, verdict.log = "unknown", None, f"{verdict.log}\n{why}: unknown".strip()
            else:
                verdict.cex = point
    return verdict


def certify(model, x, eps: float, label: int, timeout: float = 60.0, verifier: str = "builtin",
            clip: tuple[float, float] | None = (0.0, 1.0)) -> Verdict:
    """Is ``model`` robust at input ``x`` (pixel scale) within L-inf ``eps`` (box clipped to ``clip``)?

    ``unsat``: certified (no input in the box makes another class score at least ``label``'s);
    ``sat``: ``Verdict.cex`` is a confirmed adversarial input.
    """
    import torch

    from vsbench.spec.vnnlib import robustness_property

    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        n_classes = int(model.eval()(x.unsqueeze(0)).numel())
    prop = robustness_property(x.numpy().astype(np.float64), int(label), float(eps), n_classes, clip)
    r = prop.regions[0]
    return verify(model, ((r.lower, r.upper), r.clauses), timeout, verifier, tuple(x.shape))


def benchmark(model, dataset: str, eps: float, n: int, timeout: float = 60.0, verifier: str = "builtin",
              seed: int = 0, data_dir: str | Path | None = None, workers: int | None = None) -> dict:
    """Verify ``model`` on ``n`` test images of ``dataset`` drawn with ``seed`` (as a suite run draws them).

    Returns the row ``vsbench verify`` prints for the benchmark folder (sat, unsat, timeout, unknown,
    error, solved, median s, mean s) with ``n``, ``clean_acc`` and ``verified_acc`` (certified images
    over ``n``; misclassified images count as failures).
    """
    import pandas as pd

    from vsbench.data import get_dataset_info, load_dataset
    from vsbench.export.benchmark import choose_indices, write_benchmark
    from vsbench.report.tables import benchmark_summary
    from vsbench.verify.runner import run_verification

    info = get_dataset_info(dataset)
    images, labels = load_dataset(dataset, "test", data_dir)
    with tempfile.TemporaryDirectory(prefix="vsbench-benchmark-") as tmp:
        bench = Path(tmp) / "benchmark"
        instances = write_benchmark(bench, {"model": (model, info.in_shape)}, images, labels,
                                    choose_indices(len(labels), n, seed), eps, timeout,
                                    {"dataset": dataset, "property_seed": seed})
        records = run_verification(instances, verifier, Path(tmp) / "run", workers=workers)
    row = benchmark_summary(pd.DataFrame(records)).to_dict("records")
    out = row[0] if row else {"sat": 0, "unsat": 0, "timeout": 0, "unknown": 0, "error": 0, "solved": 0}
    out.pop("onnx", None)
    return {**out, "n": n, "clean_acc": len(instances) / n,
            "verified_acc": sum(r["status"] == "unsat" for r in records) / n}
