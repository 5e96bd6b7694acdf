"""Cross-check several verifiers on one benchmark folder and name the ones that are wrong.

Rules per instance: a ``sat`` whose counterexample replays in onnxruntime beats every ``unsat`` (those
are wrong); against an ``unsat``, a ``sat`` whose counterexample does not replay is wrong. Timeouts,
unknowns and errors never disagree with anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

DOWNGRADED = "downgraded to unknown"  # the runner's note on a sat whose counterexample failed


def _claim(record: dict) -> str:
    """What the verifier claimed: ``sat`` (checked), ``bad-sat`` (cex failed), or the status."""
    if record["status"] == "sat":
        return "sat" if record.get("cex_checked") else "bad-sat"
    if record["status"] == "unknown" and DOWNGRADED in (record.get("log") or ""):
        return "bad-sat"
    return record["status"]


def judge(claims: dict[str, str]) -> str:
    """The disagreement on one instance from ``{verifier: claim}``; "" when the verifiers agree."""
    by = {c: [v for v, cv in claims.items() if cv == c] for c in ("sat", "bad-sat", "unsat")}
    if by["sat"] and by["unsat"]:
        return f"wrong unsat: {', '.join(by['unsat'])} (counterexample of {by['sat'][0]} replays)"
    if by["bad-sat"] and by["unsat"]:
        return f"wrong sat: {', '.join(by['bad-sat'])} (counterexample does not replay; unsat by {by['unsat'][0]})"
    return ""


def out_name(verifier: str) -> str:
    """A folder name for ``verifier`` (``vnncomp:/a/b`` -> ``vnncomp_a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", verifier).strip("_")


def audit(benchmark_dir: str | Path, verifiers: list[str], timeout: float, out_dir: str | Path,
          workers: int | None = None, progress=None, only: str | None = None) -> pd.DataFrame:
    """Run each verifier on every instance of ``benchmark_dir`` (per-instance timeout capped at
    ``timeout``), one resumable runner folder per verifier under ``out_dir``.

    Returns one row per instance: ``onnx``, ``vnnlib``, per verifier its status and ``<name> time_s``
    (a rejected ``sat`` shows as ``sat?``), and ``disagreement`` ("" when none). Also writes
    ``out_dir/audit.csv``. ``only`` keeps the instances whose ONNX or VNN-LIB path (relative to the
    folder) contains it.
    """
    from vsbench.export.benchmark import read_instances
    from vsbench.verify.registry import resolved
    from vsbench.verify.runner import run_verification

    if not verifiers:
        raise ValueError("audit needs at least one verifier")
    root, out = Path(benchmark_dir).absolute(), Path(out_dir)
    instances = read_instances(root, only)
    rows = [{"onnx": str(Path(i.onnx).relative_to(root)), "vnnlib": str(Path(i.vnnlib).relative_to(root))}
            for i in instances]
    claims: list[dict[str, str]] = [{} for _ in instances]
    for name in verifiers:
        records = run_verification(instances, name, out / out_name(resolved(name)), workers=workers,
                                   timeout_cap=timeout, progress=progress)
        for row, claim, rec in zip(rows, claims, records):
            claim[name] = _claim(rec)
            row[name] = "sat?" if claim[name] == "bad-sat" else rec["status"]
            row[f"{name} time_s"] = rec["time_s"]
    for row, claim in zip(rows, claims):
        row["disagreement"] = judge(claim)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "audit.csv", index=False)
    return table
