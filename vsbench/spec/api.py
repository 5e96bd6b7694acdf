"""Types every verifier shares: properties, instances, verdicts and the Verifier protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

Status = Literal["sat", "unsat", "timeout", "unknown", "error"]
STATUSES: tuple[str, ...] = ("sat", "unsat", "timeout", "unknown", "error")


@dataclass
class Region:
    """An input box and the output clauses that make the property *violated* inside it.

    The property is violated at ``x`` (``lower <= x <= upper``, flat input) if, for some clause
    ``(C, rhs)``, every row holds: ``C @ y <= rhs`` with ``y`` the flat network output.
    """

    lower: np.ndarray  # (n_in,)
    upper: np.ndarray  # (n_in,)
    clauses: list[tuple[np.ndarray, np.ndarray]]  # [(C (k, n_out), rhs (k,)), ...]


@dataclass
class Property:
    """A VNN-LIB property: violated if it is violated in any of its regions."""

    regions: list[Region]

    def violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """True if input ``x`` lies in a region (within ``tol``) where output ``y`` meets a clause."""
        x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        for r in self.regions:
            if np.all(x >= r.lower - tol) and np.all(x <= r.upper + tol):
                if any(np.all(C @ y <= rhs) for C, rhs in r.clauses):
                    return True
        return False


@dataclass
class Instance:
    """One verification query: an ONNX model, a VNN-LIB property and its time budget."""

    onnx: Path
    vnnlib: Path
    timeout: float
    meta: dict = field(default_factory=dict)  # suite, model, method, sparsity, seed, eps, ...

    @property
    def key(self) -> str:
        return f"{self.onnx}::{self.vnnlib}"


@dataclass
class Verdict:
    status: Status
    time_s: float
    cex: np.ndarray | None = None  # flat input point for ``sat``
    margin: float | None = None  # best proven lower bound of the violation margin, where known
    log: str = ""
    stage: str | None = None  # what decided it: attack, ibp, crown, alpha, input-split, bab, milp
    prepare_s: float | None = None  # a VNN-COMP tool's prepare_instance.sh time, not charged to ``time_s``


@runtime_checkable
class Verifier(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(True, "") if usable here, else (False, reason)."""

    def verify(self, instance: Instance, timeout: float) -> Verdict:
        """Decide the instance within ``timeout`` seconds."""


class Deadline:
    """A wall-clock budget shared by the stages of one verification."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.left() <= 0.0
