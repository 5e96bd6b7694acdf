"""Regression gate: compare a candidate run with a baseline run, row by (arch, method, sparsity).

A candidate row whose method the baseline lacks (a new sparsifier) is compared with the best
baseline method at the same architecture and sparsity. The candidate is *worse* where its verified
accuracy drops by more than the tolerance: ``max(tol, 2 x the baseline's seed spread)``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vsbench.report.tables import load_frames, per_model

KEYS = ["arch", "method", "sparsity"]
METRICS = {"verified_acc": "verified acc", "clean_acc": "clean acc", "train_s": "train s",
           "verify_s_total": "verify s"}


def _stats(run_dir: Path) -> pd.DataFrame:
    records, models = load_frames(run_dir)
    if models.empty:
        raise ValueError(f"{run_dir}: no models.jsonl (not a `vsbench run` folder)")
    df = per_model(records, models)
    g = df.groupby(KEYS)
    out = g[list(METRICS)].mean()
    out["spread"] = g["verified_acc"].std(ddof=0).fillna(0.0)
    return out.reset_index()


def compare(base_dir: Path, cand_dir: Path, tol: float = 0.02) -> pd.DataFrame:
    """One row per candidate (arch, method, sparsity): baseline, candidate, deltas and ``worse``.
    ``tol`` (a fraction) must be a finite number >= 0."""
    if not (0 <= tol < float("inf")):
        raise ValueError(f"--tol {100 * tol:g}: the tolerance must be a finite number of points >= 0")
    base, cand = _stats(base_dir), _stats(cand_dir)
    rows = []
    for c in cand.to_dict("records"):
        same = base[(base.arch == c["arch"]) & (base.method == c["method"]) & (base.sparsity == c["sparsity"])]
        against = c["method"]
        if same.empty:
            peers = base[(base.arch == c["arch"]) & (base.sparsity == c["sparsity"])]
            if peers.empty:
                continue
            same = peers.sort_values("verified_acc", ascending=False).head(1)
            against = f"best baseline ({same.iloc[0]['method']})"
        b = same.iloc[0]
        allowed = max(tol, 2 * float(b["spread"]))
        row = {"arch": c["arch"], "method": c["method"], "sparsity": c["sparsity"], "baseline": against}
        for key, label in METRICS.items():
            row[f"{label} base"] = round(float(b[key]) * (100 if key.endswith("acc") else 1), 2)
            row[f"{label} cand"] = round(float(c[key]) * (100 if key.endswith("acc") else 1), 2)
        row["Δ verified acc"] = round(100 * (c["verified_acc"] - b["verified_acc"]), 2)
        row["worse"] = bool(c["verified_acc"] < b["verified_acc"] - allowed)
        rows.append(row)
    if not rows:
        raise ValueError(f"{cand_dir}: no row shares an architecture and sparsity with {base_dir}")
    return pd.DataFrame(rows)
