"""Tables are pure functions of records."""

from pathlib import Path

from vsbench.report.tables import COLUMNS, summary
from vsbench.store import write_records


def make_run(folder: Path, verified: dict[tuple[str, int], int], n: int = 10) -> Path:
    """A run folder with one model per (method, seed) and ``verified[(method, seed)]`` unsat records."""
    models, records = [], []
    for (method, seed), n_unsat in verified.items():
        name = f"mlp_{method}_s0.9_seed{seed}"
        models.append({"model": name, "arch": "mlp", "method": method, "sparsity": 0.9, "seed": seed,
                       "clean_acc": 0.9, "pgd_acc": 0.8, "n_properties": n, "nonzero_params": 100,
                       "params": 1000, "flops": 100, "train_s": 10.0})
        for i in range(n):
            status = "unsat" if i < n_unsat else "sat"
            records.append({"onnx": f"onnx/{name}.onnx", "vnnlib": f"vnnlib/p{i}.vnnlib", "verifier": "builtin",
                            "status": status, "time_s": 1.0 + i, "model": name})
    write_records(folder / "models.jsonl", models)
    write_records(folder / "records.jsonl", records)
    return folder


def test_summary_counts_and_columns(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 7, ("dense", 1): 5})
    df = summary(run)
    assert list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["verified acc"] == 60.0  # mean of 70 % and 50 %
    assert row["sat / unsat / timeout"] == "8 / 12 / 0"
    assert row["verify s (total, median)"] == "55.0, 5.50"
