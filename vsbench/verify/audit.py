"""Cross-check several verifiers on one benchmark folder and name the ones that are wrong.

Rules per instance: a ``sat`` whose counterexample replays in onnxruntime beats every ``unsat`` (those
are wrong); against an ``unsat``, a ``sat`` whose counterexample does not replay is wrong. Timeouts,
unknowns and errors never disagree with anything, so an audit also proves that it compared
(:func:`coverage`): per pair of verifiers, the instances both answered without ``error``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd

from vsbench.store import run_lock

DOWNGRADED = "downgraded to unknown"  # the runner's note on a sat whose counterexample failed
MAX_ERROR_FRACTION = 0.1  # an audit where a verifier errs on more of the instances fails


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

    if not verifiers:
        raise ValueError("audit needs at least one verifier")
    root, out = Path(benchmark_dir).absolute(), Path(out_dir)
    with run_lock(out):
        return _audit(root, read_instances(root, only), verifiers, timeout, out, workers, progress)


def _audit(root: Path, instances, verifiers: list[str], timeout: float, out: Path, workers, progress) -> pd.DataFrame:
    from vsbench.verify.registry import resolved
    from vsbench.verify.runner import run_verification

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
    table.to_csv(out / "audit.csv", index=False)
    return table


def coverage(table: pd.DataFrame, verifiers: list[str]) -> pd.DataFrame:
    """Per pair of verifiers (a single verifier: itself): ``compared``, the instances both answered
    without ``error``; ``both decided``, those both answered ``sat`` or ``unsat``; and each side's
    ``error`` count."""
    pairs = list(itertools.combinations(verifiers, 2)) or [(verifiers[0], verifiers[0])]
    ok = {v: table[v] != "error" for v in verifiers}
    decided = {v: table[v].isin(["sat", "sat?", "unsat"]) for v in verifiers}
    return pd.DataFrame([{"verifier A": a, "verifier B": b, "compared": int((ok[a] & ok[b]).sum()),
                          "both decided": int((decided[a] & decided[b]).sum()),
                          "errors A": int((~ok[a]).sum()), "errors B": int((~ok[b]).sum())} for a, b in pairs])


def coverage_problems(table: pd.DataFrame, verifiers: list[str], max_error_fraction: float | None = None,
                      min_compared: int | None = None) -> list[str]:
    """Why an audit proves too little: a verifier erring on more than ``max_error_fraction`` (default
    :data:`MAX_ERROR_FRACTION`) of the instances, or a pair compared on fewer than ``min_compared``
    instances (default: every instance)."""
    n = len(table)
    need = n if min_compared is None else min_compared
    max_error_fraction = MAX_ERROR_FRACTION if max_error_fraction is None else max_error_fraction
    problems = [f"{v}: error on {k} of {n} instances (more than {max_error_fraction:.0%})"
                for v in verifiers if (k := int((table[v] == "error").sum())) > max_error_fraction * n]
    for row in coverage(table, verifiers).to_dict("records"):
        if row["compared"] < need:
            pair = row["verifier A"] if row["verifier A"] == row["verifier B"] else \
                f"{row['verifier A']} and {row['verifier B']}"
            problems.append(f"{pair}: compared on {row['compared']} of {n} instances (--min-compared {need})")
    return problems
