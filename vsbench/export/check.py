"""Validate any VNN-COMP benchmark folder: ``check_benchmark(dir)`` lists its problems (empty = ok)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

MAX_TOTAL_TIMEOUT_S = 6 * 3600  # VNN-COMP's limit on the summed timeouts of one benchmark


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


def check_benchmark(bench_dir: str | Path) -> list[str]:
    """Problems of a VNN-COMP benchmark folder, each naming its file relative to the folder; [] = valid.

    Checks: one readable ``instances.csv`` (or ``*instances.csv``) with rows ``onnx,vnnlib,timeout``;
    files exist and stay inside the folder; every ONNX loads and runs in onnxruntime; every VNN-LIB
    parses and matches its model's input/output sizes; timeouts are positive and sum to at most 6 h.
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
    props = {v: _parse(v) for v in dict.fromkeys(v for _, v in rows if v is not None)}
    problems += [why for _, why in props.values() if why]
    for onnx, vnnlib in dict.fromkeys(rows):
        if onnx is not None and vnnlib is not None and models[onnx][0] and props[vnnlib][0]:
            problems.append(_sizes_problem(vnnlib, props[vnnlib][0], models[onnx][0]))
    if total > MAX_TOTAL_TIMEOUT_S:
        problems.append(f"{csv_path.name}: timeouts sum to {total:g} s, over VNN-COMP's limit of {MAX_TOTAL_TIMEOUT_S} s")
    return list(dict.fromkeys(p for p in problems if p))
