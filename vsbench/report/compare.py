"""Paired regression gate: does a candidate run verify fewer images than a baseline run?

Both runs must have drawn the same test images at the same eps (``benchmark/properties.json``);
otherwise there is nothing to pair and :func:`compare` raises. Each row is one (arch, method,
sparsity, verifier) of the candidate, paired image by image (and seed by seed, over the seeds both
runs have; runs without a common seed pair their seeds in sorted order) with the same row of the
baseline. A candidate method the baseline lacks (a new
sparsifier) is paired with the baseline's best method at the same arch and sparsity. With
``against=METHOD`` every candidate row is paired with the baseline's METHOD instead, so one run's
methods can be gated against one reference (``vsbench compare RUN RUN --against verisparse``); the
rows without the reference at their sparsity (dense) and, when both folders are the same run, the
reference's own rows are skipped.

A row *fails* only when both hold:
- the candidate's verified accuracy is lower by more than the allowed drop, ``max(tol, 2 x the
  baseline's seed spread)`` (the spread is the population standard deviation over seeds);
- the drop is significant: the exact McNemar test on the discordant images, Holm-corrected for the
  number of rows, gives p < 0.05.
The difference's 95 % interval is Bonett & Price's paired interval (:mod:`vsbench.report.stats`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from vsbench.report.stats import holm, mcnemar_exact, paired_difference
from vsbench.report.tables import load_frames, per_model

ROW = ["arch", "method", "sparsity", "verifier"]
ALPHA = 0.05


def image_set(run_dir: Path) -> tuple[float, list[int]]:
    """``(eps, sorted test-image indices)`` the run drew for verification."""
    path = Path(run_dir) / "benchmark" / "properties.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not a `vsbench run` folder with an exported benchmark)")
    info = json.loads(path.read_text())
    return float(info["eps"]), sorted(int(i) for i in info["indices"])


def _property(record: dict) -> int:
    """The test-image index of a record (``property``; older records: from the VNN-LIB file name)."""
    if record.get("property") is not None:
        return int(record["property"])
    found = re.search(r"prop_(\d+)_", Path(record["vnnlib"]).name)
    if not found:
        raise ValueError(f"{record['vnnlib']}: cannot tell which test image this property is")
    return int(found.group(1))


def outcomes(run_dir: Path) -> pd.DataFrame:
    """One row per (model, verifier, test image): ``verified`` (an ``unsat`` verdict). An image
    without a record (misclassified) is not verified; the latest verdict per slot counts."""
    records, models = load_frames(run_dir)
    if models.empty:
        raise ValueError(f"{run_dir}: no models.jsonl (not a `vsbench run` folder)")
    _, indices = image_set(run_dir)
    latest = records.to_dict("records") if len(records) else []  # one verdict per slot already
    unsat = {(r["model"], r["verifier"], _property(r)) for r in latest if r["status"] == "unsat"}
    verifiers = sorted({r["verifier"] for r in latest}) or ["builtin"]
    rows = [{"model": m["model"], "arch": m["arch"], "method": m["method"], "sparsity": m["sparsity"],
             "seed": m["seed"], "verifier": v, "image": i, "verified": (m["model"], v, i) in unsat}
            for m in models.to_dict("records") for v in verifiers for i in indices]
    return pd.DataFrame(rows)


def _row_stats(run_dir: Path) -> pd.DataFrame:
    """Per (arch, method, sparsity) means of the model-level numbers the table prints beside the test."""
    records, models = load_frames(run_dir)
    df = per_model(records, models)
    return df.groupby(["arch", "method", "sparsity"])[["clean_acc", "train_s", "verify_s_total"]].mean()


def compare(base_dir: Path, cand_dir: Path, tol: float = 0.02, against: str | None = None) -> pd.DataFrame:
    """One row per candidate row: paired counts, difference with its interval, p-values, ``worse``
    and ``why``. Accuracies and differences in %, ``tol`` as a fraction (finite, >= 0); ``against``
    pairs every row with that baseline method."""
    if not (0 <= tol < float("inf")):
        raise ValueError(f"--tol {100 * tol:g}: the tolerance must be a finite number of points >= 0")
    base_set, cand_set = image_set(base_dir), image_set(cand_dir)
    if base_set != cand_set:
        raise ValueError(f"{cand_dir}: drew different test images or eps than {base_dir} "
                         f"(eps {cand_set[0]:g} vs {base_set[0]:g}, {len(cand_set[1])} vs {len(base_set[1])} "
                         "images): a paired comparison needs the same properties")
    base, cand = outcomes(base_dir), outcomes(cand_dir)
    if against is not None and against not in set(base["method"]):
        raise ValueError(f"{base_dir}: has no method {against!r} to compare against "
                         f"(it has {', '.join(sorted(set(base['method'])))})")
    same_run = Path(base_dir).resolve() == Path(cand_dir).resolve()
    base_stats, cand_stats = _row_stats(base_dir), _row_stats(cand_dir)
    rows = []
    for key, c in cand.groupby(ROW, sort=False):
        arch, method, sparsity, verifier = key
        b, base_method = _baseline_rows(base, arch, against or method, sparsity, verifier)
        if b is None or (against and (base_method != against or (same_run and method == against))):
            continue  # nothing to pair with, no reference at this sparsity, or the reference paired with itself
        seed_of = _seed_pairs(sorted(set(b["seed"])), sorted(set(c["seed"])))
        pairs = b.merge(c.assign(seed=c["seed"].map(seed_of)).dropna(subset=["seed"]), on=["seed", "image"],
                        suffixes=("_b", "_c"))
        base_only = int((pairs["verified_b"] & ~pairs["verified_c"]).sum())
        cand_only = int((~pairs["verified_b"] & pairs["verified_c"]).sum())
        diff, lo, hi = paired_difference(base_only, cand_only, len(pairs))
        per_seed_b = b.groupby("seed")["verified"].mean()
        per_seed_c = c.groupby("seed")["verified"].mean()
        allowed = max(tol, 2 * float(per_seed_b.std(ddof=0)))
        bs, cs = base_stats.loc[(arch, base_method, sparsity)], cand_stats.loc[(arch, method, sparsity)]
        named = base_method in (method, against)
        rows.append({
            "arch": arch, "method": method, "sparsity": sparsity, "verifier": verifier,
            "baseline": base_method if named else f"best baseline ({base_method})",
            "seeds": len(seed_of), "N pairs": len(pairs),
            "verified base %": 100 * pairs["verified_b"].mean(), "verified cand %": 100 * pairs["verified_c"].mean(),
            "Δ verified": 100 * diff, "Δ lo": 100 * lo, "Δ hi": 100 * hi,
            "base only": base_only, "cand only": cand_only, "p": mcnemar_exact(base_only, cand_only),
            "seed spread base": 100 * float(per_seed_b.std(ddof=0)),
            "seed spread cand": 100 * float(per_seed_c.std(ddof=0)),
            "allowed drop": 100 * allowed,
            "clean base %": 100 * bs["clean_acc"], "clean cand %": 100 * cs["clean_acc"],
            "train s base": bs["train_s"], "train s cand": cs["train_s"],
            "verify s base": bs["verify_s_total"], "verify s cand": cs["verify_s_total"],
        })
    if not rows:
        raise ValueError(f"{cand_dir}: no row shares an architecture, sparsity and verifier with {base_dir}")
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p") + 1, "p Holm", holm(out["p"].tolist()))
    out["worse"] = (out["Δ verified"] < -out["allowed drop"]) & (out["p Holm"] < ALPHA)
    out["why"] = [_why(r) for r in out.to_dict("records")]
    return out


def _seed_pairs(base: list[int], cand: list[int]) -> dict[int, int]:
    """Candidate seed -> the baseline seed it is paired with: the same seed where both runs have it,
    else (e.g. a run with seed 1 against one with seed 0) the seeds in sorted order."""
    common = [s for s in cand if s in base]
    return {s: s for s in common} if common else dict(zip(cand, base))


def _baseline_rows(base: pd.DataFrame, arch: str, method: str, sparsity: float, verifier: str):
    """``(baseline outcomes, its method)`` to pair with a candidate row, or ``(None, None)``."""
    same = base[(base.arch == arch) & (base.sparsity == sparsity) & (base.verifier == verifier)]
    if same.empty:
        return None, None
    if method not in set(same["method"]):
        method = same.groupby("method")["verified"].mean().idxmax()
    return same[same["method"] == method], method


def _why(r: dict) -> str:
    """Why a row passed or failed, in words."""
    drop = f"Δ {r['Δ verified']:+.1f} pts [{r['Δ lo']:+.1f}, {r['Δ hi']:+.1f}]"
    p = f"McNemar p={r['p']:.3g}, Holm p={r['p Holm']:.3g}"
    if r["worse"]:
        return f"FAIL: {drop} drops more than {r['allowed drop']:.1f} pts and is significant ({p} < {ALPHA})"
    if r["Δ verified"] >= -r["allowed drop"]:
        return f"pass: {drop} within the allowed drop of {r['allowed drop']:.1f} pts"
    return f"pass: {drop} beyond {r['allowed drop']:.1f} pts but not significant ({p} ≥ {ALPHA})"
