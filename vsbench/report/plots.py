"""Plots of a run, each as PDF and PNG, accuracy in %:

- ``verified_acc_vs_sparsity``: per method, verified accuracy with its 95 % Clopper-Pearson interval
  (methods at the same sparsity are offset sideways so none hides another) and the dense model as a
  horizontal line with its interval as a band; one panel per (arch, verifier).
- ``pareto``: nonzero parameters (log scale) vs verified accuracy, every model, and the Pareto front
  (the most verified accuracy at most that many parameters).
- ``cactus_VERIFIER``: as VNN-COMP reports, per method the instances solved (sat or unsat) against
  the time limit that solves them (sorted solve times).
- ``training``: per model, held-out clean and IBP-verified accuracy after every epoch.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

OFFSET = 0.6  # sparsity points between methods drawn at the same level


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    fig.tight_layout()
    paths = [out_dir / f"{stem}.{ext}" for ext in ("pdf", "png")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def _panels(n: int, width: float = 5.5, height: float = 4.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def verified_vs_sparsity(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Verified accuracy (%) against sparsity (%) per method, with intervals and the dense line."""
    keys = list(table.groupby(["arch", "verifier"], sort=False).groups)
    fig, axes = _panels(len(keys))
    for ax, (arch, verifier) in zip(axes, keys):
        rows = table[(table.arch == arch) & (table.verifier == verifier)]
        dense = rows[rows.sparsity == 0]
        if len(dense):
            d = dense.iloc[0]
            ax.axhline(d["verified acc"], color="black", lw=1, label=f"{d['method']} (sparsity 0)")
            ax.axhspan(d["verified lo"], d["verified hi"], color="black", alpha=0.1)
        sparse = rows[rows.sparsity > 0]
        methods = list(dict.fromkeys(sparse.method))
        for i, method in enumerate(methods):
            g = sparse[sparse.method == method].sort_values("sparsity")
            x = 100 * g["sparsity"] + (i - (len(methods) - 1) / 2) * OFFSET
            y = g["verified acc"]
            ax.errorbar(x, y, yerr=[y - g["verified lo"], g["verified hi"] - y], marker="o", ms=4, capsize=3,
                        label=method)
        ax.set(xlabel="sparsity (%)", ylabel="verified accuracy (%)", title=f"{arch}, {verifier}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_dir, "verified_acc_vs_sparsity")


def pareto_front(models: pd.DataFrame) -> pd.DataFrame:
    """The models no other model beats on both counts: each verifies strictly more than every model
    with at most as many nonzero parameters; sorted by parameters."""
    front = models.sort_values(["nonzero_params", "verified_acc"], ascending=[True, False])
    return front[front["verified_acc"] > front["verified_acc"].cummax().shift(fill_value=-np.inf)]


def pareto(models: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Nonzero parameters vs verified accuracy per model, and the Pareto front."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in models.groupby("method", sort=False):
        ax.scatter(g["nonzero_params"], 100 * g["verified_acc"], label=method, s=20)
    front = pareto_front(models)
    ax.step(front["nonzero_params"], 100 * front["verified_acc"], where="post", color="black", lw=1,
            label="Pareto front")
    ax.set(xscale="log", xlabel="nonzero parameters", ylabel="verified accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, out_dir, "pareto")


def cactus(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One cactus plot per verifier: instances solved against the per-instance time needed."""
    paths = []
    for verifier, rv in records.groupby("verifier"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, g in rv.groupby("method", sort=False):
            times = np.sort(g.loc[g["status"].isin(["sat", "unsat"]), "time_s"].to_numpy())
            ax.step(np.arange(1, len(times) + 1), times, where="post", label=f"{method} ({len(g)} instances)")
        ax.set(yscale="log", xlabel="instances solved (sat or unsat)", ylabel="time per instance (s)",
               title=f"{verifier}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
        paths += _save(fig, out_dir, f"cactus_{str(verifier).replace(':', '_').replace('/', '_')}")
    return paths


def training_curves(models: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Held-out clean and IBP-verified accuracy (%) after every epoch, one line per model."""
    fig, axes = _panels(2)
    for m in models.to_dict("records"):
        hist = pd.DataFrame(m["history"] if isinstance(m.get("history"), list) else [])  # older runs: none
        if hist.empty or "heldout_clean_acc" not in hist:
            continue
        epoch = np.arange(1, len(hist) + 1)
        for ax, col in zip(axes, ("heldout_clean_acc", "heldout_ibp_acc")):
            ax.plot(epoch, 100 * hist[col], lw=1, label=m["model"])
    for ax, what in zip(axes, ("clean", "IBP-verified")):
        ax.set(xlabel="epoch (all phases)", ylabel=f"held-out {what} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="xx-small")
    return _save(fig, out_dir, "training")


def write_plots(table: pd.DataFrame, per_model: pd.DataFrame, models: pd.DataFrame, records: pd.DataFrame,
                out_dir: Path) -> list[Path]:
    """Every plot of a run: ``table`` from :func:`vsbench.report.tables.summarize`, ``per_model`` from
    :func:`vsbench.report.tables.per_model`, ``models`` the rows of ``models.jsonl`` (with
    ``history``), ``records`` one verdict per key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if per_model.empty:
        return []
    paths = verified_vs_sparsity(table, out_dir) + pareto(per_model, out_dir) + training_curves(models, out_dir)
    if len(records):
        paths += cactus(records, out_dir)
    return paths
