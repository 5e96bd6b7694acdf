"""Shared fixtures: the read-only data and benchmark folders beside the checkout."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
os.environ.setdefault("VSBENCH_DATA", str(SHARED / "data"))
os.environ.setdefault("VSBENCH_BENCHMARKS", str(SHARED / "benchmarks"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ["VSBENCH_DATA"])


@pytest.fixture(scope="session")
def mnistfc_dir() -> Path:
    return Path(os.environ["VSBENCH_BENCHMARKS"]) / "vnncomp2021-mnistfc"
