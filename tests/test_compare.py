"""`vsbench compare`: a paired regression gate over record files built directly (data, not mocks)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vsbench.report.compare import compare
from vsbench.store import write_records

ROOT = Path(__file__).resolve().parent.parent
N = 500


def make_run(folder: Path, verified: dict[tuple[str, int], np.ndarray], eps: float = 0.3,
             images: list[int] | None = None) -> Path:
    """A run folder: one model per (method, seed) whose ``verified[(method, seed)]`` (a bool per image)
    marks the images proven robust (``unsat``); the others get a ``sat`` record."""
    images = images if images is not None else list(range(1000, 1000 + N))
    models, records = [], []
    for (method, seed), mask in verified.items():
        name = f"cnn_{method}_s0.9_seed{seed}"
        models.append({"model": name, "arch": "cnn", "method": method, "sparsity": 0.9, "seed": seed,
                       "clean_acc": 0.95, "pgd_acc": 0.9, "n_properties": len(images), "nonzero_params": 100,
                       "params": 1000, "flops": 100, "train_s": 10.0})
        for i, ok in zip(images, mask):
            records.append({"onnx": f"{folder}/onnx/{name}.onnx", "vnnlib": f"{folder}/vnnlib/prop_{i}_eps{eps}.vnnlib",
                            "verifier": "builtin", "status": "unsat" if ok else "sat", "time_s": 0.5,
                            "model": name, "property": i})
    write_records(folder / "models.jsonl", models)
    write_records(folder / "records.jsonl", records)
    (folder / "benchmark").mkdir(parents=True, exist_ok=True)
    (folder / "benchmark" / "properties.json").write_text(json.dumps({"eps": eps, "indices": images}))
    return folder


def outcomes(p: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(N) < p


def flip(mask: np.ndarray, lose: int, gain: int = 0, seed: int = 0) -> np.ndarray:
    """``mask`` with ``lose`` of its verified images unverified and ``gain`` others verified."""
    rng, out = np.random.default_rng(seed), mask.copy()
    out[rng.choice(np.flatnonzero(mask), lose, replace=False)] = False
    out[rng.choice(np.flatnonzero(~mask), gain, replace=False)] = True
    return out


def test_seeded_drop_fails_and_noise_passes(tmp_path):
    dense, vs = outcomes(0.85, 0), outcomes(0.80, 1)
    base = make_run(tmp_path / "base", {("dense", 0): dense, ("verisparse", 0): vs})
    # dense: 6 images flip each way (noise, net 0); verisparse: 40 verified images lost (8 points)
    noisy = flip(dense, 6, 6, seed=1)
    cand = make_run(tmp_path / "cand", {("dense", 0): noisy, ("verisparse", 0): flip(vs, 40)})
    df = compare(base, cand).set_index("method")
    assert not df.loc["dense", "worse"] and df.loc["dense", "why"].startswith("pass")
    assert df.loc["dense", "base only"] + df.loc["dense", "cand only"] >= 6
    row = df.loc["verisparse"]
    assert row["worse"] and row["why"].startswith("FAIL")
    assert row["Δ verified"] == pytest.approx(-8.0)
    assert row["Δ lo"] < -8.0 < row["Δ hi"] < 0
    assert (row["base only"], row["cand only"], row["N pairs"]) == (40, 0, N)


def test_drop_beyond_tolerance_but_not_significant_passes(tmp_path):
    # 4 points down (65 images lost, 45 gained) is beyond 2 points, but McNemar p = 0.07
    base_mask = outcomes(0.7, 3)
    cand_mask = flip(base_mask, 65, 45)
    base = make_run(tmp_path / "base", {("dense", 0): base_mask})
    cand = make_run(tmp_path / "cand", {("dense", 0): cand_mask})
    row = compare(base, cand).iloc[0]
    assert row["Δ verified"] == pytest.approx(-4.0)
    assert row["p"] > 0.05 and not row["worse"] and "not significant" in row["why"]


def test_seeds_are_paired_and_their_spread_widens_the_tolerance(tmp_path):
    masks = {("dense", s): outcomes(p, s) for s, p in enumerate((0.9, 0.7, 0.8))}
    base = make_run(tmp_path / "base", masks)
    cand = make_run(tmp_path / "cand", {k: flip(m, 25, seed=7) for k, m in masks.items()})  # -5 points each
    row = compare(base, cand).iloc[0]
    assert row["seeds"] == 3 and row["N pairs"] == 3 * N
    assert row["seed spread base"] > 5  # about 8 points: allowed drop = 2 x spread > 5
    assert row["p"] < 1e-6 and not row["worse"]


def test_new_method_is_paired_with_the_best_baseline(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): outcomes(0.6, 0), ("verisparse", 0): outcomes(0.9, 1)})
    cand = make_run(tmp_path / "cand", {("my-idea", 0): outcomes(0.9, 1)})
    row = compare(base, cand).iloc[0]
    assert row["baseline"] == "best baseline (verisparse)"
    assert row["Δ verified"] == 0 and not row["worse"]


def test_different_image_set_is_an_error(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): outcomes(0.8, 0)})
    other = make_run(tmp_path / "other", {("dense", 0): outcomes(0.8, 0)}, images=list(range(N)))
    with pytest.raises(ValueError, match="different test images"):
        compare(base, other)


def test_compare_cli_exit_codes(tmp_path):
    mask = outcomes(0.85, 0)
    base = make_run(tmp_path / "base", {("dense", 0): mask})
    worse = make_run(tmp_path / "worse", {("dense", 0): flip(mask, 50)})
    other = make_run(tmp_path / "other", {("dense", 0): mask}, eps=0.1)
    run = lambda a, b: subprocess.run([sys.executable, "-m", "vsbench.cli", "compare", a, b],  # noqa: E731
                                      capture_output=True, text=True, cwd=ROOT)
    same = run(base, base)
    assert same.returncode == 0 and "pass" in same.stdout
    bad = run(base, worse)
    assert bad.returncode == 1 and "worse than baseline" in bad.stderr and "FAIL" in bad.stdout
    err = run(base, other)
    assert err.returncode == 2 and err.stderr.startswith("error:") and len(err.stderr.strip().splitlines()) == 1


def test_runs_with_different_seeds_are_paired_in_seed_order(tmp_path):
    base = make_run(tmp_path / "base", {("dense", 0): outcomes(0.8, 0)})
    cand = make_run(tmp_path / "cand", {("dense", 1): flip(outcomes(0.8, 0), 5, 5)})
    row = compare(base, cand).iloc[0]
    assert (row["seeds"], row["N pairs"], row["base only"], row["cand only"]) == (1, N, 5, 5)
    assert not row["worse"]


def test_against_pairs_every_method_of_one_run_with_the_reference(tmp_path):
    vs = outcomes(0.8, 0)
    run = make_run(tmp_path / "zoo", {("verisparse", 0): vs, ("snip", 0): flip(vs, 60),
                                      ("lottery", 0): flip(vs, 3, 3, seed=2)})
    models = [json.loads(line) for line in (run / "models.jsonl").read_text().splitlines()]
    dense = {**models[0], "model": "cnn_dense_s0_seed0", "method": "dense", "sparsity": 0.0}
    write_records(run / "models.jsonl", models + [dense])  # a dense model: no VeriSparse at its sparsity
    df = compare(run, run, against="verisparse").set_index("method")
    assert sorted(df.index) == ["lottery", "snip"]  # neither the reference nor dense is compared with itself
    assert set(df["baseline"]) == {"verisparse"}
    assert df.loc["snip", "worse"] and (df.loc["snip", "base only"], df.loc["snip", "cand only"]) == (60, 0)
    assert not df.loc["lottery", "worse"] and df.loc["lottery", "base only"] == 3
    with pytest.raises(ValueError, match="no method 'hydra'"):
        compare(run, run, against="hydra")
