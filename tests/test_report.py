"""Tables are pure functions of records."""

import re
from pathlib import Path

import pandas as pd
import pytest

from vsbench.report.plots import pareto_front
from vsbench.report.stats import clopper_pearson
from vsbench.report.tables import COLUMNS, summary, write_tables
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


def test_second_verifier_gets_its_own_rows_and_duplicates_count_once(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 7})
    first = summary(run)
    records = read_records(run / "records.jsonl")
    other = [{**r, "verifier": "marabou", "status": "error", "time_s": 0.5} for r in records]
    write_records(run / "records.jsonl", records + other + records)  # a re-run appended everything again
    both = summary(run).set_index("verifier")
    assert both.loc[["builtin"]].reset_index()[COLUMNS].equals(first)  # the first verifier's row is unchanged
    assert both.loc["marabou", "error"] == 10 and both.loc["marabou", "verified acc"] == 0.0
    assert tuple(both.loc["builtin", ["sat", "unsat", "timeout"]]) == (3, 7, 0)
    assert (both["verified acc"] <= both["clean acc"]).all() and (both["verified acc"] <= both["PGD acc"]).all()


def test_latest_verdict_of_a_slot_counts(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 2})
    records = read_records(run / "records.jsonl")
    rerun = [{**r, "status": "unsat" if n < 8 else "timeout", "timeout": 60} for n, r in enumerate(records)]
    write_records(run / "records.jsonl", records + rerun)  # same files, a longer timeout: verified again
    assert len(finished_keys(read_records(run / "records.jsonl"))) == 10
    row = summary(run).iloc[0]
    assert row["verified acc"] == 80.0 and (row["sat"], row["unsat"], row["timeout"]) == (0, 8, 2)
    assert row["verified upper"] == 100.0  # nothing refuted: the timeouts may still be robust


def test_summary_counts_intervals_and_columns(tmp_path):
    run = make_run(tmp_path, {("dense", 0): 7, ("dense", 1): 5})
    df = summary(run)
    assert list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["verified acc"] == 60.0 and row["seeds"] == 2 and row["N"] == 10  # mean of 70 % and 50 %
    assert (row["sat"], row["unsat"], row["timeout"]) == (8, 12, 0)
    lo, hi = clopper_pearson(12, 20)  # the seeds' images pooled
    assert (row["verified lo"], row["verified hi"]) == pytest.approx((100 * lo, 100 * hi))
    assert row["verified sd"] == pytest.approx(100 * 0.2 / 2 ** 0.5)  # sample sd of 0.7 and 0.5
    assert row["verified upper"] == 60.0  # every other image was refuted (sat)
    assert (row["verify s"], row["verify s median"]) == (55.0, 5.5)


def test_every_column_but_the_row_key_is_numeric(tmp_path):
    df = summary(make_run(tmp_path, {("dense", 0): 7, ("verisparse", 0): 4}))
    for col in df.columns:
        assert pd.api.types.is_numeric_dtype(df[col]) == (col not in ("arch", "method", "verifier")), col


def test_latex_markdown_csv_are_formatted(tmp_path):
    df = summary(make_run(tmp_path / "run", {("dense", 0): 7}))
    csv, md, tex = write_tables(df, tmp_path / "tables")
    text = tex.read_text()
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    assert " & 70.0 & " in text and "77.6000" not in text and "0.90" in text  # 1 decimal, sparsity 2
    assert re.search(r"\|\s+70\.0\s+\|", md.read_text()) and "nan" not in md.read_text()
    back = pd.read_csv(csv)
    assert list(back.columns) == COLUMNS and back.loc[0, "verified acc"] == 70.0


def test_pareto_front_keeps_only_undominated_models():
    models = pd.DataFrame({"nonzero_params": [80, 20, 10, 40, 20], "verified_acc": [0.6, 0.4, 0.4, 0.45, 0.5]})
    front = pareto_front(models)
    assert list(zip(front["nonzero_params"], front["verified_acc"])) == [(10, 0.4), (20, 0.5), (80, 0.6)]
