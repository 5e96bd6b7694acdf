"""Shared fixtures: the read-only data and benchmark folders beside the checkout."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# absolute paths: subprocesses and Ray workers of the tests run in other folders
for var, default in (("VSBENCH_DATA", SHARED / "data"), ("VSBENCH_BENCHMARKS", SHARED / "benchmarks")):
    os.environ[var] = str(Path(os.environ.get(var) or default).absolute())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ["VSBENCH_DATA"])


@pytest.fixture(scope="session")
def mnistfc_dir() -> Path:
    return Path(os.environ["VSBENCH_BENCHMARKS"]) / "vnncomp2021-mnistfc"
