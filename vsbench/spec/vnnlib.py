"""VNN-LIB 1.0 (VNN-COMP dialect): read into a ``Property``, write, and build robustness properties.

The reader is a tokenizer plus an s-expression reader; nothing in the file is evaluated. Top-level
declarations and single-variable input bounds that stand alone on their line (most of a VNN-COMP
file) are matched line by line first, which reads a 784-input property ~2.5x faster. It accepts
``declare-const X_i/Y_j Real`` and ``assert`` over ``and``, ``or`` (nested, over outputs and over
input regions), ``<=``, ``>=`` (``<`` / ``>`` read as their closures) and linear terms built with
``+``, ``-``, ``*`` by a constant. Input constraints must be bounds on single ``X`` variables.
"""

from __future__ import annotations

import copy
import re
from itertools import product
from pathlib import Path

import numpy as np

from vsbench.spec.api import Property, Region

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(_NUM)
_VAR = re.compile(r"([XY])_(\d+)")
# The lines that make up most of a VNN-COMP file, read without the s-expression reader.
_DECLARE_LINE = re.compile(r"\s*\(\s*declare-const\s+([XY]_\d+)\s+Real\s*\)\s*")
_BOUND_LINE = re.compile(rf"\s*\(\s*assert\s*\(\s*(<=|>=|<|>)\s+(X_\d+)\s+({_NUM})\s*\)\s*\)\s*")
_MAX_TERMS = 100_000


class VnnlibError(ValueError):
    """A VNN-LIB file that cannot be read; the message names the file, the line and the problem."""


class _List(list):
    line: int = 0


class _Atom(str):
    line: int = 0


def _read_sexps(path: Path, text: str) -> list:
    """Top-level s-expressions of ``text``; every list and atom knows its line."""
    stack: list[_List] = [_List()]
    for lineno, raw in enumerate(text.splitlines(), 1):
        for tok in _TOKEN.findall(raw.split(";", 1)[0]):
            if tok == "(":
                node = _List()
                node.line = lineno
                stack[-1].append(node)
                stack.append(node)
            elif tok == ")":
                if len(stack) == 1:
                    raise VnnlibError(f"{path}:{lineno}: unbalanced ')'")
                stack.pop()
            else:
                atom = _Atom(tok)
                atom.line = lineno
                stack[-1].append(atom)
    if len(stack) > 1:
        raise VnnlibError(f"{path}:{stack[-1].line}: '(' never closed")
    return stack[0]


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.decl: dict[str, int] = {}  # variable name -> declaration line

    def fail(self, line: int, problem: str):
        raise VnnlibError(f"{self.path}:{line}: {problem}")

    def declare(self, node: _List) -> None:
        if len(node) != 3 or not isinstance(node[1], str) or node[2] != "Real":
            self.fail(node.line, "expected (declare-const NAME Real)")
        if not _VAR.fullmatch(node[1]):
            self.fail(node.line, f"variable {node[1]!r} is not named X_i or Y_j")
        self.declare_name(node[1], node.line)

    def declare_name(self, name: str, line: int) -> None:
        if name in self.decl:
            self.fail(line, f"{name} declared twice")
        self.decl[name] = line

    def number(self, text: str, line: int) -> float:
        if not np.isfinite(value := float(text)):
            self.fail(line, f"number {text} is out of range")
        return value

    def term(self, node) -> tuple[dict, float]:
        """A linear term as ({variable: coefficient}, constant)."""
        if isinstance(node, str):
            if _NUMBER.fullmatch(node):
                return {}, self.number(node, node.line)
            if node in self.decl:
                return {node: 1.0}, 0.0
            self.fail(node.line, f"undeclared variable or bad number {node!r}")
        if not node or not isinstance(node[0], str) or node[0] not in ("+", "-", "*"):
            self.fail(node.line, f"expected a linear term (+, -, *), got {_show(node)}")
        args = [self.term(a) for a in node[1:]]
        if not args:
            self.fail(node.line, f"empty {node[0]}")
        if node[0] == "-" and len(args) == 1:
            args = [({}, 0.0), args[0]]
        if node[0] in "+-":
            coef, const = dict(args[0][0]), args[0][1]
            sign = 1.0 if node[0] == "+" else -1.0
            for c, k in args[1:]:
                for v, a in c.items():
                    coef[v] = coef.get(v, 0.0) + sign * a
                const += sign * k
            return coef, const
        coef, const = args[0]
        for c, k in args[1:]:
            if coef and c:
                self.fail(node.line, "product of two variables is not linear")
            coef, const = ({v: a * k for v, a in coef.items()} if coef else {v: a * const for v, a in c.items()},
                           const * k)
        return coef, const

    def dnf(self, node) -> list[list[list]]:
        """Disjunctive normal form: a list of terms, each the conjunction of its chunks (lists of
        atoms ``(line, coef, const)``); the terms of an ``and`` share one chunk of its
        single-case parts (the input box of a VNN-COMP file), so it is read once, not per term."""
        if isinstance(node, str) or not node or not isinstance(node[0], str):
            self.fail(node.line, f"expected a constraint, got {_show(node)}")
        op = node[0]
        if op == "or":
            return [t for child in node[1:] for t in self.dnf(child)]
        if op == "and":
            base, multi = [], []
            for child in node[1:]:
                d = self.dnf(child)
                if len(d) == 1:
                    base.extend(a for chunk in d[0] for a in chunk)
                else:
                    multi.append(d)
            n = int(np.prod([len(d) for d in multi])) if multi else 1
            if n > _MAX_TERMS:
                self.fail(node.line, f"disjunction expands to {n} cases (limit {_MAX_TERMS})")
            return [[base, *(chunk for t in combo for chunk in t)] for combo in product(*multi)]
        if op in ("<=", ">=", "<", ">"):
            if len(node) != 3:
                self.fail(node.line, f"{op} takes two arguments")
            (cl, kl), (cr, kr) = self.term(node[1]), self.term(node[2])
            if op in (">=", ">"):
                (cl, kl), (cr, kr) = (cr, kr), (cl, kl)
            coef = dict(cl)
            for v, a in cr.items():
                coef[v] = coef.get(v, 0.0) - a
            coef = {v: a for v, a in coef.items() if a != 0.0}
            kinds = {v[0] for v in coef}
            if len(kinds) > 1:
                self.fail(node.line, "constraint mixes input (X) and output (Y) variables")
            return [[[(node.line, coef, kl - kr)]]]  # sum(coef * var) + const <= 0
        self.fail(node.line, f"unsupported operator {op!r}")


class _Chunk:
    """A conjunction of atoms read once: its input bounds as arrays, its output rows, and whether
    a constant atom is false."""

    def __init__(self, r: _Reader, atoms: list, n_out: int):
        index, bound, upper, self.rows, self.rhs, self.false = [], [], [], [], [], False
        for line, coef, const in atoms:
            if not coef:
                self.false |= const > 0
                continue
            if next(iter(coef))[0] == "X":
                if len(coef) != 1:
                    r.fail(line, "only bounds on single input variables are supported (box regions)")
                (v, a), = coef.items()
                index.append(int(v[2:]))
                bound.append(-const / a)
                upper.append(a > 0)
            else:
                row = np.zeros(n_out)
                for v, a in coef.items():
                    row[int(v[2:])] = a
                self.rows.append(row)
                self.rhs.append(0.0 - const)
        self.index, self.bound = np.array(index, dtype=np.int64), np.array(bound, dtype=np.float64)
        self.upper = np.array(upper, dtype=bool)


def _show(node, depth: int = 8) -> str:
    """``node`` as text for an error message, nested lists below ``depth`` shown as ``(...)``."""
    if isinstance(node, str):
        return str(node)
    if depth == 0:
        return "(...)"
    return "(" + " ".join(_show(n, depth - 1) for n in node[:20]) + (" ..." if len(node) > 20 else "") + ")"


def read_text(path: str | Path) -> str:
    """The text of a VNN-LIB file, gzip-compressed (``*.gz``) or not; ``VnnlibError`` if unreadable."""
    import gzip

    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt") as f:
                return f.read()
        return path.read_text()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise VnnlibError(f"{path}: cannot read VNN-LIB file ({exc.__class__.__name__}: {exc})") from None


CACHE_BYTES = 256 * 2**20  # parsed files kept per process (a suite reads the same files for every model)
_cache: dict[tuple, Property] = {}
_cached_bytes = 0


def _nbytes(prop: Property) -> int:
    return sum(r.lower.nbytes + r.upper.nbytes + sum(C.nbytes + b.nbytes for C, b in r.clauses) for r in prop.regions)


def read_vnnlib(path: str | Path, n_in: int | None = None, n_out: int | None = None) -> Property:
    """Parse a VNN-LIB 1.0 file into a ``Property`` (boxes with output clauses; see ``Region``).

    ``n_in`` / ``n_out`` check the declared variable counts when given. Raises ``VnnlibError``.
    A file read before with the same path, size and modification time is not parsed again (up to
    ``CACHE_BYTES`` of them; the first ones read stay, which suits the same scan repeated per
    model); the caller always gets its own copy.
    """
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None  # read_text names the problem
    global _cached_bytes
    prop = _cache.get(key) if key else None
    if prop is None:
        prop = _parse(path)
        size = _nbytes(prop)
        if key and _cached_bytes + size <= CACHE_BYTES:
            _cache[key] = prop
            _cached_bytes += size
    for kind, have, want in (("X", prop.regions[0].lower.size, n_in), ("Y", prop.regions[0].clauses[0][0].shape[1], n_out)):
        if want is not None and have != want:
            raise VnnlibError(f"{path}: declares {have} {kind} variables, the model has {want}")
    return copy.deepcopy(prop)


def _simple_lines(r: _Reader, text: str) -> tuple[str, list]:
    """Read the declarations and single-variable input bounds that stand alone on their line at the
    top level (most of a VNN-COMP file) directly; returns the rest of the text, those lines blanked
    so line numbers stay, and the bounds as atoms ``(line, coef, const)`` (see ``_Reader.dnf``)."""
    rest, atoms, depth = [], [], 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        code = raw.split(";", 1)[0]
        if depth == 0 and (m := _DECLARE_LINE.fullmatch(code)):
            r.declare_name(m[1], lineno)
            code = ""
        elif depth == 0 and (m := _BOUND_LINE.fullmatch(code)):
            value = r.number(m[3], lineno)
            atoms.append((lineno, {m[2]: 1.0}, -value) if m[1][0] == "<" else (lineno, {m[2]: -1.0}, value))
            code = ""
        else:
            depth += code.count("(") - code.count(")")
        rest.append(code)
    return "\n".join(rest), atoms


def _parse(path: Path) -> Property:
    r = _Reader(path)
    text, bounds = _simple_lines(r, read_text(path))
    asserts = []
    for node in _read_sexps(path, text):
        if isinstance(node, str) or not node or node[0] not in ("declare-const", "assert"):
            r.fail(node.line, f"expected (declare-const ...) or (assert ...), got {_show(node)[:60]}")
        if node[0] == "declare-const":
            r.declare(node)
        elif len(node) != 2:
            r.fail(node.line, "assert takes one constraint")
        else:
            asserts.append(node[1])
    sizes = {}
    for kind in ("X", "Y"):
        idx = sorted(int(v[2:]) for v in r.decl if v[0] == kind)
        if idx != list(range(len(idx))) or not idx:
            raise VnnlibError(f"{path}: {kind} variables must be declared as {kind}_0 .. {kind}_n-1 (found {len(idx)})")
        sizes[kind] = len(idx)
    for line, coef, _ in bounds:
        (name,) = coef
        if name not in r.decl:
            r.fail(line, f"undeclared variable or bad number {name!r}")
    if not asserts and not bounds:
        raise VnnlibError(f"{path}: no assert")
    terms = [[]]
    if asserts:
        top = _List(["and", *asserts])
        top.line = asserts[0].line
        try:
            terms = r.dnf(top)
        except RecursionError:
            raise VnnlibError(f"{path}: expressions nested too deeply") from None
    terms = [[bounds, *t] for t in terms]  # every case shares the one chunk of simple bounds
    regions: dict[bytes, Region] = {}
    chunks: dict[int, _Chunk] = {}  # by id: the terms share chunks
    for term in terms:
        for c in term:
            if id(c) not in chunks:
                chunks[id(c)] = _Chunk(r, c, sizes["Y"])
        parts = [chunks[id(c)] for c in term]
        if any(p.false for p in parts):  # a constant constraint that is false: this case is empty
            continue
        lo, hi = np.full(sizes["X"], -np.inf), np.full(sizes["X"], np.inf)
        for p in parts:
            np.minimum.at(hi, p.index[p.upper], p.bound[p.upper])
            np.maximum.at(lo, p.index[~p.upper], p.bound[~p.upper])
        for bounds, side in ((lo, "lower"), (hi, "upper")):
            if not np.all(np.isfinite(bounds)):
                v = f"X_{int(np.flatnonzero(~np.isfinite(bounds))[0])}"
                r.fail(r.decl[v], f"{v} has no {side} bound")
        if np.any(lo > hi):
            v = f"X_{int(np.flatnonzero(lo > hi)[0])}"
            r.fail(r.decl[v], f"{v} has an empty range")
        rows = [row for p in parts for row in p.rows]
        clause = (np.array(rows).reshape(len(rows), sizes["Y"]), np.array([b for p in parts for b in p.rhs], dtype=np.float64))
        key = lo.tobytes() + hi.tobytes()
        regions.setdefault(key, Region(lo, hi, [])).clauses.append(clause)
    if not regions:
        raise VnnlibError(f"{path}: the constraints can never hold (no region)")
    return Property(list(regions.values()))


def _num(v: float) -> str:
    return np.format_float_positional(float(v), unique=True, trim="0")


def _row(c: np.ndarray, rhs: float) -> str:
    """One output row ``c @ Y <= rhs`` in VNN-LIB, in the VNN-COMP shape where possible."""
    nz = np.flatnonzero(c)
    if rhs == 0 and len(nz) == 2 and sorted(c[nz]) == [-1.0, 1.0]:
        p, q = (nz if c[nz[0]] > 0 else nz[::-1])
        return f"(>= Y_{q} Y_{p})"
    if len(nz) == 1 and abs(c[nz[0]]) == 1.0:
        return f"(<= Y_{nz[0]} {_num(rhs)})" if c[nz[0]] > 0 else f"(>= Y_{nz[0]} {_num(-rhs)})"
    terms = " ".join(f"(* {_num(c[j])} Y_{j})" for j in nz) or "0.0"
    return f"(<= (+ {terms}) {_num(rhs)})"


def _box(lo: np.ndarray, hi: np.ndarray) -> list[tuple[str, str]]:
    return [(f"(<= X_{i} {_num(h)})", f"(>= X_{i} {_num(l)})") for i, (l, h) in enumerate(zip(lo, hi))]


def write_vnnlib(path: str | Path, prop: Property, comment: str = "") -> None:
    """Write ``prop`` as VNN-LIB 1.0; one region gives the VNN-COMP layout (box asserts, output ``or``)."""
    path = Path(path)
    n_in, n_out = prop.regions[0].lower.size, prop.regions[0].clauses[0][0].shape[1]
    lines = [f"; {c}" for c in comment.splitlines()] + [""]
    lines += [f"(declare-const X_{i} Real)" for i in range(n_in)] + [""]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)] + [""]

    def clause(C, rhs):
        return "(and " + " ".join(_row(c, b) for c, b in zip(C, rhs)) + ")"

    if len(prop.regions) == 1:
        r = prop.regions[0]
        lines += ["; Input constraints:"] + [f"(assert {a})\n(assert {b})" for a, b in _box(r.lower, r.upper)]
        lines += ["", "; Output constraints:", "(assert (or"]
        lines += [f"    {clause(C, rhs)}" for C, rhs in r.clauses] + ["))"]
    else:
        lines += ["(assert (or"]
        for r in prop.regions:
            for C, rhs in r.clauses:
                lines += ["    (and"] + [f"        {a} {b}" for a, b in _box(r.lower, r.upper)]
                lines += [f"        {_row(c, b)}" for c, b in zip(C, rhs)] + ["    )"]
        lines += ["))"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def robustness_property(x: np.ndarray, label: int, eps: float, n_classes: int,
                        clip: tuple[float, float] | None = (0.0, 1.0)) -> Property:
    """L-inf local robustness at ``x``: violated if some class ``j != label`` has ``Y_j >= Y_label``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    clauses = []
    for j in range(n_classes):
        if j != label:
            c = np.zeros((1, n_classes))
            c[0, label], c[0, j] = 1.0, -1.0
            clauses.append((c, np.zeros(1)))
    return Property([Region(lo, hi, clauses)])
