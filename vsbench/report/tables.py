"""Summary tables: pure functions of a run's records (``records.jsonl`` + ``models.jsonl``).

One schema for every suite. Verified and PGD accuracy are over the N test images drawn for
verification (misclassified images count as not robust); clean accuracy is over the test set.
Records are read one verdict per (model, property, verifier) (``vsbench.store.latest_verdicts``),
so a re-run, moved or copied run folder never counts anything twice; each verifier gets its own rows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vsbench.store import latest_verdicts, read_records

COLUMNS = [
    "arch", "method", "sparsity", "verifier", "clean acc", "PGD acc", "verified acc", "sat / unsat / timeout",
    "unknown", "error", "nonzero params", "FLOPs", "train s", "verify s (total, median)",
]
GROUP = ["arch", "method", "sparsity", "verifier"]
NOT_VERIFIED = "none"  # the verifier column of a model without records yet


def load_frames(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(verification records, one per (model, property, verifier); model records) of a run folder;
    either may be empty."""
    run_dir = Path(run_dir)
    records = pd.DataFrame(latest_verdicts(read_records(run_dir / "records.jsonl")))
    models = pd.DataFrame(read_records(run_dir / "models.jsonl"))
    return records, models


def per_model(records: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model and verifier (``verifier`` "none" for a model without records):
    accuracies, verdict counts, cost."""
    rows = []
    for m in models.to_dict("records"):
        mine = records[records["model"] == m["model"]] if len(records) else pd.DataFrame()
        for verifier, grp in (mine.groupby("verifier", sort=True) if len(mine) else [(NOT_VERIFIED, mine)]):
            rows.append(_model_row(m, verifier, grp))
    return pd.DataFrame(rows)


def _model_row(m: dict, verifier: str, records: pd.DataFrame) -> dict:
    """The per-model row of ``m`` (a models.jsonl record) for one verifier's ``records``."""
    c = records["status"].value_counts() if len(records) else pd.Series(dtype=int)
    times = records["time_s"] if len(records) else pd.Series(dtype=float)
    n = m["n_properties"]
    return {
        **{k: m[k] for k in ("model", "arch", "method", "sparsity", "seed")}, "verifier": verifier,
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
    }


def summary(run_dir: Path) -> pd.DataFrame:
    """The standard table, one row per (arch, method, sparsity, verifier), seeds averaged."""
    records, models = load_frames(run_dir)
    if models.empty:
        return benchmark_summary(records)
    df = per_model(records, models)
    g = df.groupby(GROUP, sort=False)
    mean = g[["clean_acc", "pgd_acc", "verified_acc", "nonzero_params", "flops", "train_s",
              "verify_s_total", "verify_s_median"]].mean()
    total = g[["sat", "unsat", "timeout", "unknown", "error"]].sum()
    out = pd.DataFrame({
        "clean acc": (100 * mean["clean_acc"]).round(1),
        "PGD acc": (100 * mean["pgd_acc"]).round(1),
        "verified acc": (100 * mean["verified_acc"]).round(1),
        "sat / unsat / timeout": [f"{s} / {u} / {t}" for s, u, t, _, _ in total.itertuples(index=False)],
        "unknown": total["unknown"],
        "error": total["error"],
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
    records = pd.DataFrame(latest_verdicts(records.to_dict("records"))).assign(onnx=lambda r: r["onnx"].map(_name))
    for (onnx, verifier), grp in records.groupby(["onnx", "verifier"], sort=True):
        counts = grp["status"].value_counts()
        solved = grp[grp["status"].isin(["sat", "unsat"])]
        rows.append({
            "onnx": onnx, "verifier": verifier,
            **{s: int(counts.get(s, 0)) for s in ("sat", "unsat", "timeout", "unknown", "error")},
            "solved": len(solved),
            "median s": round(float(solved["time_s"].median()), 2) if len(solved) else float("nan"),
            "mean s": round(float(solved["time_s"].mean()), 2) if len(solved) else float("nan"),
        })
    return pd.DataFrame(rows)


def _name(path: str) -> str:
    return Path(path).name


def write_tables(df: pd.DataFrame, out_dir: Path, stem: str = "summary") -> list[Path]:
    """``summary.csv``, ``summary.md`` and ``summary.tex`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    df.to_csv(paths[0], index=False)
    paths[1].write_text(df.to_markdown(index=False) + "\n")
    paths[2].write_text(df.to_latex(index=False, escape=True))
    return paths
