"""Summary tables: pure functions of a run's records (``records.jsonl`` + ``models.jsonl``).

One schema for every suite. Verified and PGD accuracy are over the N test images drawn for
verification (misclassified images count as not robust); clean accuracy is over the test set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vsbench.store import read_records

COLUMNS = [
    "arch", "method", "sparsity", "clean acc", "PGD acc", "verified acc", "sat / unsat / timeout",
    "nonzero params", "FLOPs", "train s", "verify s (total, median)",
]
GROUP = ["arch", "method", "sparsity"]


def load_frames(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(verification records, model records) of a run folder; either may be empty."""
    run_dir = Path(run_dir)
    records = pd.DataFrame(read_records(run_dir / "records.jsonl"))
    models = pd.DataFrame(read_records(run_dir / "models.jsonl"))
    return records, models


def per_model(records: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model: accuracies, verdict counts, cost."""
    counts = (
        records.pivot_table(index="model", columns="status", values="time_s", aggfunc="count", fill_value=0)
        if len(records) else pd.DataFrame()
    )
    rows = []
    for m in models.to_dict("records"):
        c = counts.loc[m["model"]] if m["model"] in counts.index else pd.Series(dtype=float)
        times = records.loc[records["model"] == m["model"], "time_s"] if len(records) else pd.Series(dtype=float)
        n = m["n_properties"]
        rows.append({
            **{k: m[k] for k in ("model", "arch", "method", "sparsity", "seed")},
            "clean_acc": m["clean_acc"],
            "pgd_acc": m["pgd_acc"],
            "verified_acc": c.get("unsat", 0) / n if n else float("nan"),
            "sat": int(c.get("sat", 0)),
            "unsat": int(c.get("unsat", 0)),
            "timeout": int(c.get("timeout", 0)),
            "unknown": int(c.get("unknown", 0)),
            "error": int(c.get("error", 0)),
            "verified_instances": int(len(times)),
            "nonzero_params": m["nonzero_params"],
            "flops": m["flops"],
            "train_s": m["train_s"],
            "verify_s_total": float(times.sum()),
            "verify_s_median": float(times.median()) if len(times) else float("nan"),
        })
    return pd.DataFrame(rows)


def summary(run_dir: Path) -> pd.DataFrame:
    """The standard table, one row per (arch, method, sparsity), seeds averaged."""
    records, models = load_frames(run_dir)
    if models.empty:
        return benchmark_summary(records)
    df = per_model(records, models)
    g = df.groupby(GROUP, sort=False)
    mean = g[["clean_acc", "pgd_acc", "verified_acc", "nonzero_params", "flops", "train_s",
              "verify_s_total", "verify_s_median"]].mean()
    total = g[["sat", "unsat", "timeout"]].sum()
    out = pd.DataFrame({
        "clean acc": (100 * mean["clean_acc"]).round(1),
        "PGD acc": (100 * mean["pgd_acc"]).round(1),
        "verified acc": (100 * mean["verified_acc"]).round(1),
        "sat / unsat / timeout": [f"{s} / {u} / {t}" for s, u, t in total.itertuples(index=False)],
        "nonzero params": mean["nonzero_params"].round().astype(int),
        "FLOPs": mean["flops"].round().astype(int),
        "train s": mean["train_s"].round(1),
        "verify s (total, median)": [f"{t:.1f}, {m:.2f}" for t, m in
                                     zip(mean["verify_s_total"], mean["verify_s_median"])],
    }).reset_index()
    return out[COLUMNS]


def benchmark_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Table for a plain benchmark folder (no training): per ONNX model and verifier."""
    if records.empty:
        return pd.DataFrame(columns=["onnx", "verifier", "sat", "unsat", "timeout", "unknown", "error",
                                     "solved", "median s", "mean s"])
    rows = []
    for (onnx, verifier), grp in records.groupby(["onnx", "verifier"], sort=True):
        counts = grp["status"].value_counts()
        solved = grp[grp["status"].isin(["sat", "unsat"])]
        rows.append({
            "onnx": Path(onnx).name, "verifier": verifier,
            **{s: int(counts.get(s, 0)) for s in ("sat", "unsat", "timeout", "unknown", "error")},
            "solved": len(solved),
            "median s": round(float(solved["time_s"].median()), 2) if len(solved) else float("nan"),
            "mean s": round(float(solved["time_s"].mean()), 2) if len(solved) else float("nan"),
        })
    return pd.DataFrame(rows)


def write_tables(df: pd.DataFrame, out_dir: Path, stem: str = "summary") -> list[Path]:
    """``summary.csv``, ``summary.md`` and ``summary.tex`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    df.to_csv(paths[0], index=False)
    paths[1].write_text(df.to_markdown(index=False) + "\n")
    paths[2].write_text(df.to_latex(index=False, escape=True))
    return paths
