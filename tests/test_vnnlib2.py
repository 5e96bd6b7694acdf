"""VNN-LIB 2.0 round trips through the PyPI ``vnnlib`` parser (skipped where it is not installed)."""

import numpy as np
import pytest

from vsbench.spec.vnnlib import VnnlibError, read_vnnlib, write_vnnlib
from vsbench.spec.vnnlib2 import is_vnnlib2, read_property, read_vnnlib2, write_vnnlib2
from vsbench.spec.api import Property, Region

pytest.importorskip("vnnlib", reason="VNN-LIB 2.0 reading needs the optional package: pip install vnnlib")


def same(a: Property, b: Property) -> bool:
    if len(a.regions) != len(b.regions):
        return False
    key = lambda r: (r.lower.tolist(), r.upper.tolist())  # noqa: E731
    for ra, rb in zip(sorted(a.regions, key=key), sorted(b.regions, key=key)):
        if not (np.allclose(ra.lower, rb.lower) and np.allclose(ra.upper, rb.upper)):
            return False
        ca = sorted((C.tolist(), r.tolist()) for C, r in ra.clauses)
        cb = sorted((C.tolist(), r.tolist()) for C, r in rb.clauses)
        if len(ca) != len(cb) or not all(np.allclose(x[0], y[0]) and np.allclose(x[1], y[1]) for x, y in zip(ca, cb)):
            return False
    return True


def test_mnistfc_property_round_trip(mnistfc_dir, tmp_path):
    """A real VNN-COMP 1.0 property -> 2.0 (input [1, 784, 1]) -> back: the same regions and clauses."""
    prop = read_vnnlib(mnistfc_dir / "prop_0_0.03.vnnlib")
    out = tmp_path / "p2.vnnlib"
    write_vnnlib2(out, prop, in_shape=(1, 784, 1), out_shape=(1, 10))
    assert is_vnnlib2(out) and "X[0,783,0]" in out.read_text()
    assert same(read_property(out), prop)
    assert not is_vnnlib2(mnistfc_dir / "prop_0_0.03.vnnlib")
    assert same(read_property(mnistfc_dir / "prop_0_0.03.vnnlib"), prop)


def test_regions_and_conjunctions_round_trip(tmp_path):
    c = np.array([[1.0, -2.5, 0.0], [0.0, 1.0, 1e-7]])
    prop = Property([Region(np.array([0.0, -1.0]), np.array([0.5, 1.0]), [(c, np.array([-0.125, 3.0]))]),
                     Region(np.array([1.0, 2.0]), np.array([1.5, 2e5]), [(c[:1], np.array([0.0]))])])
    write_vnnlib2(tmp_path / "p.vnnlib", prop)
    assert same(read_vnnlib2(tmp_path / "p.vnnlib"), prop)
    write_vnnlib(tmp_path / "p1.vnnlib", prop)  # and 2.0 agrees with our 1.0 reader on the same property
    assert same(read_vnnlib(tmp_path / "p1.vnnlib"), read_vnnlib2(tmp_path / "p.vnnlib"))


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1, 2]) "
                   "(declare-output Y float32 [1, 1]))\n(assert (<= X[0,0] 1.0))\n")
    with pytest.raises(VnnlibError, match="bad.vnnlib: input X.* is unbounded"):
        read_vnnlib2(bad)
    bad.write_text("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1, 2])\n")
    with pytest.raises(VnnlibError, match="bad.vnnlib: "):
        read_vnnlib2(bad)
    with pytest.raises(ValueError, match="do not hold"):
        write_vnnlib2(bad, Property([Region(np.zeros(2), np.ones(2), [(np.ones((1, 1)), np.zeros(1))])]), in_shape=(3,))
