"""Summary tables: pure functions of a run's records (``records.jsonl`` + ``models.jsonl``).

One schema for every suite, one number per column. Over the N test images drawn for verification
(the same images for every model): verified accuracy = images proven robust (``unsat``) / N, with
its 95 % Clopper-Pearson interval; PGD accuracy likewise; ``verified upper`` = images not refuted
(neither misclassified nor ``sat``) / N, the most verified accuracy could reach if every timeout
were proven. Clean accuracy is defined once: over the whole test set, at export. Records are read
one verdict per (model, property, verifier) (``vsbench.store.latest_verdicts``), so a re-run, moved
or copied run folder never counts anything twice; each verifier gets its own rows. With several
seeds a row pools the seeds' images for the interval and gives the seeds' standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vsbench.report.stats import clopper_pearson
from vsbench.store import latest_verdicts, read_records

GROUP = ["arch", "method", "sparsity", "verifier"]
STATUSES = ["sat", "unsat", "timeout", "unknown", "error"]
NOT_VERIFIED = "none"  # the verifier column of a model without records yet
COLUMNS = [
    *GROUP, "seeds", "N", "clean acc", "clean sd", "PGD acc", "PGD lo", "PGD hi",
    "verified acc", "verified lo", "verified hi", "verified sd", "verified upper", *STATUSES,
    "nonzero params", "FLOPs", "train s", "verify s", "verify s median",
]
PERCENT = ["clean acc", "clean sd", "PGD acc", "PGD lo", "PGD hi", "verified acc", "verified lo", "verified hi",
           "verified sd", "verified upper"]


def load_frames(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(verification records, one per (model, property, verifier); model records) of a run folder;
    either may be empty."""
    run_dir = Path(run_dir)
    records = pd.DataFrame(latest_verdicts(read_records(run_dir / "records.jsonl")))
    return records, pd.DataFrame(read_records(run_dir / "models.jsonl"))


def per_model(records: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model and verifier (``verifier`` "none" for a model without records):
    accuracies (fractions), verdict counts, cost."""
    rows = []
    for m in models.to_dict("records"):
        mine = records[records["model"] == m["model"]] if len(records) else pd.DataFrame()
        for verifier, grp in (mine.groupby("verifier", sort=True) if len(mine) else [(NOT_VERIFIED, mine)]):
            rows.append(_model_row(m, verifier, grp))
    return pd.DataFrame(rows)


def _model_row(m: dict, verifier: str, records: pd.DataFrame) -> dict:
    """The per-model row of ``m`` (a models.jsonl record) for one verifier's ``records``."""
    counts = records["status"].value_counts() if len(records) else pd.Series(dtype=int)
    times = records["time_s"] if len(records) else pd.Series(dtype=float)
    n = m["n_properties"]
    return {
        **{k: m[k] for k in ("model", "arch", "method", "sparsity", "seed")}, "verifier": verifier,
        "N": n, "clean_acc": m["clean_acc"], "pgd_acc": m["pgd_acc"], "pgd_robust": round(m["pgd_acc"] * n),
        **{s: int(counts.get(s, 0)) for s in STATUSES},
        "verified_acc": counts.get("unsat", 0) / n if n else float("nan"),
        "verified_upper": (len(records) - counts.get("sat", 0)) / n if n else float("nan"),
        "nonzero_params": m["nonzero_params"], "flops": m["flops"], "train_s": m["train_s"],
        "verify_s_total": float(times.sum()),
        "verify_s_median": float(times.median()) if len(times) else float("nan"),
    }


def summary(run_dir: Path) -> pd.DataFrame:
    """The standard table: one row per (arch, method, sparsity, verifier), seeds pooled / averaged."""
    records, models = load_frames(run_dir)
    if models.empty:
        return benchmark_summary(records)
    return summarize(per_model(records, models))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary` from :func:`per_model` rows (accuracies in %)."""
    rows = []
    for key, g in df.groupby(GROUP, sort=False):
        n = int(g["N"].sum())
        v_lo, v_hi = clopper_pearson(int(g["unsat"].sum()), n)
        p_lo, p_hi = clopper_pearson(int(g["pgd_robust"].sum()), n)
        rows.append({
            **dict(zip(GROUP, key)), "seeds": len(g), "N": int(g["N"].iloc[0]),
            "clean acc": 100 * g["clean_acc"].mean(), "clean sd": 100 * g["clean_acc"].std(),
            "PGD acc": 100 * g["pgd_acc"].mean(), "PGD lo": 100 * p_lo, "PGD hi": 100 * p_hi,
            "verified acc": 100 * g["verified_acc"].mean(), "verified lo": 100 * v_lo, "verified hi": 100 * v_hi,
            "verified sd": 100 * g["verified_acc"].std(), "verified upper": 100 * g["verified_upper"].mean(),
            **{s: int(g[s].sum()) for s in STATUSES},
            "nonzero params": int(round(g["nonzero_params"].mean())), "FLOPs": int(round(g["flops"].mean())),
            "train s": g["train_s"].mean(), "verify s": g["verify_s_total"].mean(),
            "verify s median": g["verify_s_median"].mean(),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def benchmark_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Table for a plain benchmark folder (no training): per ONNX model and verifier."""
    if records.empty:
        return pd.DataFrame(columns=["onnx", "verifier", *STATUSES, "solved", "median s", "mean s"])
    rows = []
    records = pd.DataFrame(latest_verdicts(records.to_dict("records"))).assign(onnx=lambda r: r["onnx"].map(_name))
    for (onnx, verifier), grp in records.groupby(["onnx", "verifier"], sort=True):
        counts = grp["status"].value_counts()
        solved = grp[grp["status"].isin(["sat", "unsat"])]
        rows.append({
            "onnx": onnx, "verifier": verifier,
            **{s: int(counts.get(s, 0)) for s in STATUSES},
            "solved": len(solved),
            "median s": round(float(solved["time_s"].median()), 2) if len(solved) else float("nan"),
            "mean s": round(float(solved["time_s"].mean()), 2) if len(solved) else float("nan"),
        })
    return pd.DataFrame(rows)


def _name(path: str) -> str:
    return Path(path).name


def write_tables(df: pd.DataFrame, out_dir: Path, stem: str = "summary") -> list[Path]:
    """``summary.csv`` (numbers to 2 decimals), ``summary.md`` and ``summary.tex`` (booktabs; 1 decimal,
    sparsity 2)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    df.round(2).to_csv(paths[0], index=False)
    floatfmt = [".2f" if c == "sparsity" else ".1f" for c in df.columns]
    blanks = df.astype(object).where(df.notna(), None)  # tabulate leaves None (not NaN) blank
    paths[1].write_text(blanks.to_markdown(index=False, floatfmt=floatfmt, missingval="") + "\n")
    styler = df.style.hide(axis="index").format(precision=1, na_rep="", escape="latex")
    if "sparsity" in df.columns:
        styler = styler.format("{:.2f}", subset=["sparsity"])
    styler = styler.format_index(escape="latex", axis=1)
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    paths[2].write_text(styler.to_latex(hrules=True, column_format=align))
    return paths
