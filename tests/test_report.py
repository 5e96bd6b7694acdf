"""Tables and the regression gate are pure functions of records."""

import subprocess
import sys
from pathlib import Path

from vsbench.report.compare import compare
from vsbench.report.tables import COLUMNS, summary
from vsbench.store import finished_keys, read_records, write_records

ROOT = Path(__file__).resolve().parent.parent


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


def test_compare_flags_a_drop_beyond_tolerance(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): 8, ("verisparse", 0): 8})
    cand = make_run(tmp_path / "cand", {("dense", 0): 8, ("verisparse", 0): 5})
    df = compare(base, cand, tol=0.02).set_index("method")
    assert not df.loc["dense", "worse"]
    assert df.loc["verisparse", "worse"]
    assert df.loc["verisparse", "Δ verified acc"] == -30.0


def test_new_method_is_compared_with_the_best_baseline(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): 6, ("verisparse", 0): 9})
    cand = make_run(tmp_path / "cand", {("my-idea", 0): 9})
    df = compare(base, cand)
    assert df.iloc[0]["baseline"] == "best baseline (verisparse)"
    assert not df.iloc[0]["worse"]


def test_seed_spread_widens_the_tolerance(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): 9, ("dense", 1): 5})  # mean 70 %, spread 20 %
    cand = make_run(tmp_path / "cand", {("dense", 0): 4})  # 40 %: within 2 x 20 points
    assert not compare(base, cand).iloc[0]["worse"]


def test_compare_cli_exit_codes(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): 8})
    worse = make_run(tmp_path / "worse", {("dense", 0): 2})
    run = lambda a, b: subprocess.run([sys.executable, "-m", "vsbench.cli", "compare", a, b],  # noqa: E731
                                      capture_output=True, text=True, cwd=ROOT)
    assert run(base, base).returncode == 0
    bad = run(base, worse)
    assert bad.returncode == 1 and "worse than baseline" in bad.stderr
