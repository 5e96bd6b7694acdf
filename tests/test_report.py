"""Tables are pure functions of records."""

from pathlib import Path

from vsbench.report.tables import COLUMNS, summary
from vsbench.store import finished_keys, read_records, write_records


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
                            "onnx_sha256": f"sha-{name}", "vnnlib_sha256": f"sha-p{i}", "verifier_version": "0.1.0",
                            "verifier_config": "default", "timeout": 20,
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
    assert row["sat / unsat / timeout"] == "8 / 12 / 0" and row["unknown"] == row["error"] == 0
    assert row["verifier"] == "builtin"
    assert row["verify s (total, median)"] == "55.0, 5.50"


def test_second_verifier_gets_its_own_rows_and_duplicates_count_once(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 7})
    first = summary(run)
    records = read_records(run / "records.jsonl")
    other = [{**r, "verifier": "marabou", "status": "error", "time_s": 0.5} for r in records]
    write_records(run / "records.jsonl", records + other + records)  # a re-run appended everything again
    both = summary(run).set_index("verifier")
    assert both.loc[["builtin"]].reset_index()[COLUMNS].equals(first)  # the first verifier's row is unchanged
    assert both.loc["marabou", "error"] == 10 and both.loc["marabou", "verified acc"] == 0.0
    assert both.loc["builtin", "sat / unsat / timeout"] == "3 / 7 / 0"
    assert (both["verified acc"] <= both["clean acc"]).all() and (both["verified acc"] <= both["PGD acc"]).all()


def test_latest_verdict_of_a_slot_counts(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 2})
    records = read_records(run / "records.jsonl")
    rerun = [{**r, "status": "unsat" if n < 8 else "timeout", "timeout": 60} for n, r in enumerate(records)]
    write_records(run / "records.jsonl", records + rerun)  # same files, a longer timeout: verified again
    assert len(finished_keys(read_records(run / "records.jsonl"))) == 10
    row = summary(run).iloc[0]
    assert row["verified acc"] == 80.0 and row["sat / unsat / timeout"] == "0 / 8 / 2"
