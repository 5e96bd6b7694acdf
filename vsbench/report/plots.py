"""Plots of a run: verified accuracy and verification time against sparsity, one line per method."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PLOTS = {
    "verified_acc_vs_sparsity": ("verified_acc", "verified accuracy"),
    "verify_time_vs_sparsity": ("verify_s_median", "median verification time (s)"),
    "clean_acc_vs_sparsity": ("clean_acc", "clean accuracy"),
}


def write_plots(per_model: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per entry of :data:`PLOTS`; dense models appear at sparsity 0 for every method."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if per_model.empty:
        return []
    means = per_model.groupby(["arch", "method", "sparsity"], as_index=False).mean(numeric_only=True)
    paths = []
    for stem, (column, label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for (arch, method), grp in means.groupby(["arch", "method"]):
            grp = grp.sort_values("sparsity")
            ax.plot(grp["sparsity"], grp[column], marker="o", label=f"{method} ({arch})")
        ax.set_xlabel("sparsity")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
