"""Shared fixtures: the read-only data and benchmark folders beside the checkout."""

import os
import sys
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


@pytest.fixture(scope="module", autouse=True)
def _fresh_ray_per_module():
    """Ray lives once per process: a module that started it (with its own CPU count) stops it, so the
    next module's tests get the cluster they ask for."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
