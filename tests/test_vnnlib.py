"""VNN-LIB reader / writer on the real VNN-COMP mnistfc properties and on malformed files."""

import re

import numpy as np
import pytest

from vsbench.spec.vnnlib import VnnlibError, read_vnnlib, robustness_property, write_vnnlib
from vsbench.spec.api import Property, Region


def test_all_mnistfc_properties(mnistfc_dir):
    files = sorted(mnistfc_dir.glob("prop_*.vnnlib"))
    assert len(files) == 30
    for f in files:
        eps = float(re.search(r"_([0-9.]+)\.vnnlib", f.name).group(1))
        label = int(re.search(r"label: (\d+)", f.read_text()).group(1))
        prop = read_vnnlib(f, n_in=784, n_out=10)
        (r,) = prop.regions
        assert r.lower.shape == r.upper.shape == (784,)
        assert 0.0 <= r.lower.min() and r.upper.max() <= 1.0 and np.all(r.lower <= r.upper)
        width = r.upper - r.lower
        assert width.max() == pytest.approx(2 * eps, abs=1e-6)  # interior pixels: full 2*eps box
        assert np.all(width <= 2 * eps + 1e-6)
        assert len(r.clauses) == 9
        others = set()
        for C, rhs in r.clauses:  # Y_j >= Y_label  <=>  Y_label - Y_j <= 0
            assert C.shape == (1, 10) and rhs.tolist() == [0.0]
            assert C[0, label] == 1.0 and C.sum() == 0.0
            others.add(int(np.flatnonzero(C[0] == -1.0)[0]))
        assert others == set(range(10)) - {label}
        y = np.zeros(10)
        y[label] = 1.0
        assert not prop.violated_by(r.lower, y) and prop.violated_by(r.lower, -y)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random(20)
    prop = robustness_property(x, 3, 1e-5 * 3.3, 5)
    write_vnnlib(tmp_path / "p.vnnlib", prop, "robustness\nlabel 3")
    text = (tmp_path / "p.vnnlib").read_text()
    assert text.startswith("; robustness\n; label 3") and "(and (>= Y_0 Y_3))" in text
    back = read_vnnlib(tmp_path / "p.vnnlib", 20, 5)
    (a,), (b,) = prop.regions, back.regions
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)  # exact floats
    assert [c.tolist() for c, _ in a.clauses] == [c.tolist() for c, _ in b.clauses]
    assert a.lower.min() >= 0 and np.all(a.upper - a.lower <= 2 * 3.3e-5 + 1e-15)


def test_a_file_read_again_is_a_fresh_copy_and_a_rewritten_file_is_parsed_again(tmp_path):
    path = tmp_path / "p.vnnlib"
    write_vnnlib(path, robustness_property(np.full(20, 0.5), 3, 0.1, 5))
    first = read_vnnlib(path, 20, 5)
    first.regions[0].lower[:] = -7.0  # the caller's copy: the next read must not see it
    again = read_vnnlib(path, 20, 5)
    assert np.allclose(again.regions[0].lower, 0.4)
    with pytest.raises(VnnlibError, match="declares 20 X variables, the model has 21"):
        read_vnnlib(path, 21, 5)  # the size check holds for a cached file too
    write_vnnlib(path, robustness_property(np.full(20, 0.5), 3, 0.25, 5))  # same size, new contents
    assert np.allclose(read_vnnlib(path, 20, 5).regions[0].lower, 0.25)


def test_general_property_round_trip(tmp_path):
    prop = Property([
        Region(np.zeros(2), np.ones(2), [(np.array([[1.0, -2.0, 0.0], [0.0, 1.0, 0.0]]), np.array([0.5, 2.0]))]),
        Region(np.ones(2), 2 * np.ones(2), [(np.array([[0.0, -1.0, 0.0]]), np.array([-3.0])),
                                             (np.array([[0.0, 0.0, 1.0]]), np.array([1.5]))]),
    ])
    write_vnnlib(tmp_path / "g.vnnlib", prop)
    back = read_vnnlib(tmp_path / "g.vnnlib")
    assert len(back.regions) == 2
    for a, b in zip(prop.regions, back.regions):
        assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)
        assert [(c.tolist(), r.tolist()) for c, r in a.clauses] == [(c.tolist(), r.tolist()) for c, r in b.clauses]


def test_nested_disjunction_over_inputs_and_terms(tmp_path):
    f = tmp_path / "n.vnnlib"
    f.write_text("""; ACAS-style: two input regions, linear output terms
(declare-const X_0 Real) (declare-const X_1 Real)
(declare-const Y_0 Real) (declare-const Y_1 Real)
(assert (>= X_1 -1e-1))  ; shared bound
(assert (<= X_1 .5))
(assert (or
  (and (>= X_0 0) (<= X_0 1) (or (and (<= (- Y_0 (* 2 Y_1)) 3)) (and (> Y_1 (+ 1 Y_0)))))
  (and (>= X_0 2) (<= (* 2 X_0) 6) (<= (- Y_0) 0.25))
))
""")
    prop = read_vnnlib(f)
    r0, r1 = prop.regions
    assert r0.lower.tolist() == [0.0, -0.1] and r0.upper.tolist() == [1.0, 0.5]
    assert r1.lower.tolist() == [2.0, -0.1] and r1.upper.tolist() == [3.0, 0.5]
    assert [(c.tolist(), b.tolist()) for c, b in r0.clauses] == [([[1.0, -2.0]], [3.0]), ([[1.0, -1.0]], [-1.0])]
    assert [(c.tolist(), b.tolist()) for c, b in r1.clauses] == [([[-1.0, 0.0]], [0.25])]
    assert prop.violated_by([0.5, 0.0], [-1.0, 5.0]) and not prop.violated_by([2.5, 0.0], [-1.0, 5.0])


HEAD = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"


@pytest.mark.parametrize("body, line, problem", [
    (BOX + "(assert (<= X_0 Y_0))\n", 6, "mixes input (X) and output (Y)"),
    ("(assert (>= X_0 0))\n(assert (<= Y_0 Y_1))\n", 1, "X_0 has no upper bound"),
    (BOX + "(assert (<= Y_0 Y_1)\n", 6, "never closed"),
    (BOX + "(assert (<= Y_0 Y_1)))\n", 6, "unbalanced"),
    (BOX + "(assert (xor (<= Y_0 Y_1)))\n", 6, "unsupported operator 'xor'"),
    (BOX + "(assert (<= Y_0 Y_7))\n", 6, "undeclared variable or bad number 'Y_7'"),
    (BOX + "(assert (<= (* Y_0 Y_1) 0))\n", 6, "not linear"),
    (BOX + "(assert (<= Y_0 (exp 1)))\n", 6, "expected a linear term"),
    (BOX + "(check-sat)\n", 6, "expected (declare-const"),
    (BOX + "(assert (<= Y_0 1e400x))\n", 6, "bad number"),
    (BOX + "(declare-const X_1 Real) (assert (>= X_1 0)) (assert (<= X_1 1)) (assert (<= X_0 (+ X_1 1)))\n", 6,
     "only bounds on single input variables"),
    (BOX.replace("0))", "2))", 1) + "(assert (<= Y_0 Y_1))\n", 1, "X_0 has an empty range"),
    (BOX + "(assert (<= Y_0 1e999))\n", 6, "number 1e999 is out of range"),
    (BOX.replace("(<= X_0 1)", "(<= X_0 1e999)"), 5, "number 1e999 is out of range"),
    (BOX + "(assert (<= X_3 1))\n", 6, "undeclared variable or bad number 'X_3'"),
    (BOX + "(declare-const X_0 Real)\n", 6, "X_0 declared twice"),
])
def test_malformed(tmp_path, body, line, problem):
    f = tmp_path / "bad.vnnlib"
    f.write_text(HEAD + body)
    with pytest.raises(VnnlibError) as err:
        read_vnnlib(f)
    assert str(err.value).startswith(f"{f}:{line}: ") and problem in str(err.value)


def test_bound_lines_read_directly_or_inside_an_expression_give_the_same_property(tmp_path):
    """The reader takes top-level one-line input bounds without the s-expression reader; the same
    constraints inside a multi-line ``and`` (where that shortcut must not apply), with comments,
    read the same."""
    decl = HEAD.replace("(declare-const X_0 Real)", "(declare-const X_0 Real)\n(declare-const X_1 Real)")
    bounds = "(assert (>= X_0 -0.5))\n(assert (<= X_0 .25))\n(assert (> X_1 1e-1))\n(assert (< X_1 2))\n"
    out = "(assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 3))))\n"
    inside = "(assert (and ; the box\n" + bounds.replace("(assert ", "").replace("))\n", ")\n") + "))\n"
    texts = [decl + bounds + out, decl + inside + out, decl + "; (a comment (\n" + out + bounds]
    props = []
    for i, text in enumerate(texts):
        (tmp_path / f"p{i}.vnnlib").write_text(text)
        props.append(read_vnnlib(tmp_path / f"p{i}.vnnlib"))
    for prop in props:
        (r,) = prop.regions
        assert r.lower.tolist() == [-0.5, 0.1] and r.upper.tolist() == [0.25, 2.0]
        assert [(c.tolist(), b.tolist()) for c, b in r.clauses] == [([[1.0, -1.0]], [0.0]), ([[-1.0, 0.0]], [-3.0])]


def test_deep_nesting(tmp_path):
    f = tmp_path / "deep.vnnlib"
    f.write_text(HEAD + BOX + "(assert (<= Y_0 " + "(+ " * 5000 + "1" + ")" * 5000 + "))\n")
    with pytest.raises(VnnlibError, match="nested too deeply"):
        read_vnnlib(f)


def test_deep_nesting_at_top_level(tmp_path):
    """Parentheses nested 100000 deep outside any assert: one VnnlibError, not a RecursionError."""
    f = tmp_path / "deep.vnnlib"
    f.write_text(HEAD + "(" * 100_000 + ")" * 100_000 + "\n")
    with pytest.raises(VnnlibError, match="expected \\(declare-const"):
        read_vnnlib(f)


def test_wrong_sizes_and_unreadable(tmp_path):
    f = tmp_path / "p.vnnlib"
    f.write_text(HEAD + BOX + "(assert (<= Y_0 Y_1))\n")
    assert len(read_vnnlib(f, 1, 2).regions) == 1
    with pytest.raises(VnnlibError, match="declares 2 Y variables, the model has 10"):
        read_vnnlib(f, 1, 10)
    with pytest.raises(VnnlibError, match="cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    (tmp_path / "bin.vnnlib").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VnnlibError, match="bin.vnnlib"):
        read_vnnlib(tmp_path / "bin.vnnlib")
