"""End to end: `vsbench run --suite smoke` trains, exports, verifies with Ray and writes the tables."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vsbench.report.tables import COLUMNS
from vsbench.store import read_records

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"dense", "verisparse", "verisparse-structured", "hydra", "prune-after"}


def vsbench(*args):
    return subprocess.run([sys.executable, "-m", "vsbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = vsbench("run", "--suite", "smoke", "--profile", "quick", "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_smoke_summary_has_all_methods(smoke_run):
    out, result = smoke_run
    assert "suite smoke, profile quick" in result.stdout
    table = pd.read_csv(out / "tables" / "summary.csv")
    assert list(table.columns) == COLUMNS
    assert set(table["method"]) == METHODS
    for ext in ("md", "tex"):
        assert (out / "tables" / f"summary.{ext}").stat().st_size > 0
    # in every row: verified <= PGD <= clean (PGD and verified are over the N drawn images, clean
    # over the whole test set, so PGD is compared with the clean accuracy on those same N images)
    assert (table["verified lo"] <= table["verified acc"]).all()
    assert (table["verified acc"] <= table["verified hi"]).all()
    assert (table["verified acc"] <= table["verified upper"]).all()
    assert (table["verified acc"] <= table["PGD acc"]).all()
    misclassified = json.loads((out / "benchmark" / "misclassified.json").read_text())
    for m in read_records(out / "models.jsonl"):
        assert round(m["pgd_acc"] * m["n_properties"]) <= m["n_properties"] - len(misclassified[m["model"]])
        assert len(m["history"]) >= 6
        assert {"heldout_clean_acc", "heldout_ibp_acc", "loss", "lr"} <= m["history"][-1].keys()


@pytest.mark.slow
def test_smoke_writes_every_plot(smoke_run):
    out, _ = smoke_run
    for stem in ("verified_acc_vs_sparsity", "pareto", "training", "cactus_builtin"):
        for ext in ("pdf", "png"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)


@pytest.mark.slow
def test_smoke_benchmark_and_records(smoke_run):
    out, _ = smoke_run
    bench = out / "benchmark"
    rows = (bench / "instances.csv").read_text().splitlines()
    assert rows and all(len(r.split(",")) == 3 for r in rows)
    models = read_records(out / "models.jsonl")
    assert {m["method"] for m in models} == METHODS
    dense_params = next(m["params"] for m in models if m["method"] == "dense")
    for m in models:
        assert (bench / "onnx" / f"{m['model']}.onnx").is_file()
        assert m["nonzero_params"] <= m["params"] <= dense_params
        if m["sparsity"] > 0:  # counted in the exported file: structured models are smaller, not masked
            assert m["nonzero_params"] < dense_params * (1 - m["sparsity"] / 2)
    records = read_records(out / "records.jsonl")
    assert len(records) == len(rows)
    for r in records:
        assert r["status"] in {"sat", "unsat", "timeout", "unknown", "error"}
        assert r["status"] != "error", r
        assert r["model"] and r["method"] in METHODS
        if r["status"] == "sat":
            assert r["cex_checked"] is True


@pytest.mark.slow
def test_rerun_resumes_and_report_rebuilds(smoke_run):
    out, _ = smoke_run
    before = (out / "records.jsonl").read_text()
    again = vsbench("run", "--suite", "smoke", "--profile", "quick", "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "records.jsonl").read_text() == before
    table = (out / "tables" / "summary.csv").read_text()
    (out / "tables" / "summary.csv").unlink()
    rep = vsbench("report", out)
    assert rep.returncode == 0, rep.stderr
    assert (out / "tables" / "summary.csv").read_text() == table
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["profile"] == "quick"


@pytest.mark.slow
def test_moved_run_folder_resumes_without_verifying(smoke_run, tmp_path):
    """`mv A B` and the same command on B: identical table, not one instance verified again."""
    out, _ = smoke_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    before = (moved / "records.jsonl").read_text()
    again = vsbench("run", "--suite", "smoke", "--profile", "quick", "--out", moved, "--workers", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (moved / "records.jsonl").read_text() == before
    assert (moved / "tables" / "summary.csv").read_text() == (out / "tables" / "summary.csv").read_text()
    table = pd.read_csv(moved / "tables" / "summary.csv")
    assert (table["verified acc"] <= table["PGD acc"]).all() and (table["verifier"] == "builtin").all()
