"""VNN-LIB 2.0: write a ``Property``; read one through the optional PyPI ``vnnlib`` package.

A 2.0 file declares its network's tensors (``(declare-network N (declare-input X float32 [1, 784]) ...)``)
and indexes them (``X[0,5]``); our properties are flat, indexed row-major. ``read_property`` reads
either version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vsbench.spec.vnnlib import VnnlibError, read_text, read_vnnlib
from vsbench.spec.api import Property, Region


def _num(v: float) -> str:
    """A decimal the 2.0 grammar accepts (digits '.' digits, no exponent)."""
    return np.format_float_positional(float(v), unique=True, trim="0")


def _var(name: str, flat: int, shape: tuple[int, ...]) -> str:
    return f"{name}[{','.join(str(int(i)) for i in np.unravel_index(flat, shape))}]"


def _row(c: np.ndarray, rhs: float, shape: tuple[int, ...]) -> str:
    """``c @ Y <= rhs`` as an s-expression."""
    terms = [f"(* {_num(c[j])} {_var('Y', j, shape)})" for j in np.flatnonzero(c)] or [f"(* 0.0 {_var('Y', 0, shape)})"]
    lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {_num(rhs)})"


def _box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> list[str]:
    """The input bounds, two atoms per input."""
    return [a for i, (l, h) in enumerate(zip(lo, hi))
            for a in (f"(>= {_var('X', i, shape)} {_num(l)})", f"(<= {_var('X', i, shape)} {_num(h)})")]


def write_vnnlib2(path: str | Path, prop: Property, in_shape: tuple[int, ...] | None = None,
                  out_shape: tuple[int, ...] | None = None, comment: str = "") -> None:
    """Write ``prop`` as VNN-LIB 2.0 (tensors ``X`` and ``Y`` of ``in_shape`` / ``out_shape``, default ``(1, n)``)."""
    n_in, n_out = prop.regions[0].lower.size, prop.regions[0].clauses[0][0].shape[1]
    in_shape, out_shape = tuple(in_shape or (1, n_in)), tuple(out_shape or (1, n_out))
    if int(np.prod(in_shape)) != n_in or int(np.prod(out_shape)) != n_out:
        raise ValueError(f"{path}: shapes {in_shape} / {out_shape} do not hold {n_in} inputs / {n_out} outputs")
    dims = lambda s: ", ".join(map(str, s))  # noqa: E731
    lines = [f"; {c}" for c in comment.splitlines()] + [
        "(vnnlib-version <2.0>)",
        f"(declare-network N\n  (declare-input X float32 [{dims(in_shape)}])\n"
        f"  (declare-output Y float32 [{dims(out_shape)}])\n)"]

    def rows(C, rhs):
        return [_row(c, b, out_shape) for c, b in zip(C, rhs)]

    if len(prop.regions) == 1:  # the VNN-COMP layout: box asserts, then one ``or`` over the clauses
        r = prop.regions[0]
        lines += [f"(assert {a})" for a in _box(r.lower, r.upper, in_shape)] + ["(assert (or"]
        lines += [f"  {rs[0]}" if len(rs) == 1 else f"  (and {' '.join(rs)})"
                  for rs in (rows(C, rhs) for C, rhs in r.clauses)] + ["))"]
    else:
        lines += ["(assert (or"]
        lines += [f"  (and {' '.join(_box(r.lower, r.upper, in_shape) + rows(C, rhs))})"
                  for r in prop.regions for C, rhs in r.clauses] + ["))"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def read_vnnlib2(path: str | Path) -> Property:
    """Read a VNN-LIB 2.0 file with the ``vnnlib`` package (``pip install vnnlib``) into a flat ``Property``."""
    path = Path(path)
    try:
        import vnnlib
        import vnnlib.compat
    except ImportError:
        raise VnnlibError(f"{path}: reading VNN-LIB 2.0 needs the optional package: pip install vnnlib") from None
    try:
        query = vnnlib.parse_query_string(read_text(path))  # read_text: .gz too
        networks = query.networks
        if len(networks) != 1 or len(networks[0].inputs) != 1 or len(networks[0].outputs) != 1:
            raise VnnlibError(f"{path}: only one network with one input and one output is supported")
        n_out = int(np.prod(networks[0].outputs[0].shape))
        cases = vnnlib.compat.transform(query)
    except vnnlib.VNNLibException as exc:
        raise VnnlibError(f"{path}: {exc}") from None
    regions = []
    for case in cases:
        box = np.array(case.input_box, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(box)):
            raise VnnlibError(f"{path}: input X[{int(np.argmin(np.isfinite(box).all(1)))}] (flat) is unbounded")
        clauses = [(np.array(p.coeff_matrix, dtype=np.float64).reshape(-1, n_out),
                    np.array(p.rhs, dtype=np.float64).ravel()) for p in case.output_constraints]
        regions.append(Region(box[:, 0].copy(), box[:, 1].copy(), clauses))
    if not regions:
        raise VnnlibError(f"{path}: no input region")
    return Property(regions)


def is_vnnlib2(path: str | Path) -> bool:
    """True if the file declares a network (VNN-LIB 2.0) rather than ``X_i`` constants (1.0)."""
    return "declare-network" in read_text(path)


def read_property(path: str | Path) -> Property:
    """Read VNN-LIB 1.0 or 2.0, whichever ``path`` is."""
    return read_vnnlib2(path) if is_vnnlib2(path) else read_vnnlib(path)
