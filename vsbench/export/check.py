"""Validate any VNN-COMP benchmark folder: ``check_benchmark(dir)`` lists its problems (empty = ok)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

MAX_TOTAL_TIMEOUT_S = 6 * 3600  # VNN-COMP's limit on the summed timeouts of one benchmark
MIN_TOTAL_TIMEOUT_S = 3 * 3600  # VNN-COMP's minimum (shorter benchmarks must be extended)
# ops that the common VNN-COMP tools (alpha-beta-CROWN, Marabou, nnenum, NNV, PyRAT, ...) all read
COMMON_OPS = {"Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "Dropout",
              "Flatten", "Gemm", "Identity", "MatMul", "MaxPool", "Mul", "Relu", "Reshape", "Sigmoid",
              "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze"}


def _resolve(root: Path, rel: str) -> tuple[Path | None, str]:
    """(file, "") for a relative path that stays inside ``root`` and exists, else (None, problem)."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        return None, f"path {rel!r} must be relative and stay inside the folder"
    full = root / p
    if not full.resolve().is_relative_to(root.resolve()):
        return None, f"path {rel!r} leaves the folder (through a link)"
    if not full.is_file():
        return None, f"file {rel!r} does not exist"
    return full, ""


def _check_onnx(path: Path) -> tuple[tuple[int, int] | None, str]:
    """((n_in, n_out), "") if the model loads and runs in onnxruntime on a zero input, else (None, problem)."""
    from vsbench.onnx_io import run_onnx, session

    if path.stat().st_size == 0:
        return None, f"{path.name}: empty file (0 bytes), not an ONNX model"
    try:
        inputs = session(path).get_inputs()
        if len(inputs) != 1:
            return None, f"{path.name}: expected one input, found {len(inputs)}"
        n_in = math.prod(d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].shape)
        y = run_onnx(path, np.zeros(n_in))
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is the problem we report
        return None, f"{path.name}: does not load or run in onnxruntime ({type(exc).__name__}: {exc})"[:500]
    if not np.all(np.isfinite(y)):
        return None, f"{path.name}: output on a zero input is not finite"
    return (n_in, y.size), ""


def _onnx_warnings(path: Path) -> list[str]:
    """Portability warnings for one model: ops outside ``COMMON_OPS``, and Marabou's parser (when
    maraboupy is installed) failing to read it."""
    import warnings

    import onnx

    from vsbench.gz import plain_path

    plain = plain_path(path)
    ops = sorted({n.op_type for n in onnx.load(str(plain)).graph.node} - COMMON_OPS)
    out = [f"{path.name}: ops that common tools do not read: {', '.join(ops)}"] if ops else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from maraboupy import Marabou
    except ImportError:
        return out
    try:
        Marabou.read_onnx(str(plain))
    except Exception as exc:  # noqa: BLE001 - any parser failure is what we report
        out.append(f"{path.name}: Marabou's ONNX parser cannot read it ({type(exc).__name__}: {exc})"[:500])
    return out


def _full_check(path: Path) -> str:
    """"" if ``onnx.checker`` (full check, with shape inference) accepts the model, else the problem."""
    import onnx

    from vsbench.gz import plain_path

    try:
        onnx.checker.check_model(onnx.load(str(plain_path(path))), full_check=True)
    except Exception as exc:  # noqa: BLE001 - report, do not stop
        return f"{path.name}: fails onnx.checker ({type(exc).__name__}: {exc})"[:500]
    return ""


def _parse(path: Path):
    """(Property, "") or (None, problem)."""
    from vsbench.spec.vnnlib import read_vnnlib

    try:
        return read_vnnlib(path), ""
    except Exception as exc:  # noqa: BLE001 - report, do not stop
        return None, f"{path.name}: does not parse ({exc})"[:500]


def _sizes_problem(path: Path, prop, sizes: tuple[int, int]) -> str:
    """"" if the property matches the model's input/output sizes."""
    n_in, n_out = sizes
    r = prop.regions[0]
    if r.lower.size != n_in:
        return f"{path.name}: declares {r.lower.size} inputs, the model has {n_in}"
    bad = {C.shape[1] for reg in prop.regions for C, _ in reg.clauses} - {n_out}
    if bad:
        return f"{path.name}: constrains {max(bad)} outputs, the model has {n_out}"
    return ""


def check_benchmark(bench_dir: str | Path, warnings: list[str] | None = None) -> list[str]:
    """Problems of a VNN-COMP benchmark folder, each naming its file relative to the folder; [] = valid.

    Checks: one readable ``instances.csv`` (or ``*instances.csv``) with rows ``onnx,vnnlib,timeout``;
    files exist and stay inside the folder; every ONNX (``.onnx`` or ``.onnx.gz``) passes ``onnx.checker``'s
    full check and runs in onnxruntime; every VNN-LIB (or ``.vnnlib.gz``) parses and matches its model's
    input/output sizes; timeouts are positive and sum to at most 6 h. ``warnings``, when given, receives
    what does not make the folder invalid: a total under VNN-COMP's 3 h minimum, ops that common tools
    do not read, models Marabou's parser rejects.
    """
    root = Path(bench_dir)
    if not root.is_dir():
        return ["not a folder"]
    found = [root / "instances.csv"] if (root / "instances.csv").is_file() else sorted(root.glob("*instances.csv"))
    if len(found) != 1:
        return ["no instances.csv" if not found else f"several *instances.csv: {[f.name for f in found]}"]
    csv_path, problems, total, rows = found[0], [], 0.0, []
    try:
        with open(csv_path, newline="") as f:
            lines = list(enumerate(csv.reader(f), 1))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [f"{csv_path.name}: unreadable ({exc})"]
    for line, row in lines:
        row = [c.strip() for c in row]
        if not any(row):
            continue
        where = f"{csv_path.name}:{line}"
        if line == 1 and [c.lower() for c in row[:2]] == ["onnx", "vnnlib"]:
            problems.append(f"{where}: header row {','.join(row)!r}: VNN-COMP's instances.csv has no header (remove it)")
            continue
        if len(row) != 3:
            problems.append(f"{where}: expected 3 columns (onnx, vnnlib, timeout), got {len(row)}")
            continue
        try:
            timeout = float(row[2])
        except ValueError:
            timeout = float("nan")
        if not 0 < timeout < float("inf"):
            problems.append(f"{where}: timeout {row[2]!r} is not a positive number")
        else:
            total += timeout
        onnx, why_o = _resolve(root, row[0])
        vnnlib, why_v = _resolve(root, row[1])
        problems += [f"{where}: {why}" for why in (why_o, why_v) if why]
        rows.append((onnx, vnnlib))
    if not rows and not problems:
        problems.append(f"{csv_path.name}: lists no instances")
    models = {o: _check_onnx(o) for o in dict.fromkeys(o for o, _ in rows if o is not None)}
    problems += [why for _, why in models.values() if why]
    problems += [_full_check(o) for o, (sizes, _) in models.items() if sizes]
    if warnings is not None:
        warnings += [w for o, (sizes, _) in models.items() if sizes for w in _onnx_warnings(o)]
        if 0 < total < MIN_TOTAL_TIMEOUT_S:
            warnings.append(f"{csv_path.name}: timeouts sum to {total:g} s, under VNN-COMP's minimum of "
                            f"{MIN_TOTAL_TIMEOUT_S} s")
    props = {v: _parse(v) for v in dict.fromkeys(v for _, v in rows if v is not None)}
    problems += [why for _, why in props.values() if why]
    for onnx, vnnlib in dict.fromkeys(rows):
        if onnx is not None and vnnlib is not None and models[onnx][0] and props[vnnlib][0]:
            problems.append(_sizes_problem(vnnlib, props[vnnlib][0], models[onnx][0]))
    if total > MAX_TOTAL_TIMEOUT_S:
        problems.append(f"{csv_path.name}: timeouts sum to {total:g} s, over VNN-COMP's limit of {MAX_TOTAL_TIMEOUT_S} s")
    return list(dict.fromkeys(p for p in problems if p))
