"""A run's verdicts in VNN-COMP's own formats, from ``records.jsonl`` alone.

Per verifier, under ``OUT/<verifier>/``: ``results.csv`` as the competition's scripts append it (no
header; ``category,onnx,vnnlib,prepare_s,result,run_s``, paths relative to the benchmark folder),
one ``<category>/<net>_<prop>.counterexample`` per confirmed ``sat`` (``((X_0 v) ... (Y_0 v))`` with
the outputs onnxruntime computes, what the official scoring replays), and ``cactus.csv``: the solved
instances by run time with the accumulated time (a cactus plot's data).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from vsbench.store import latest_verdicts, read_records

SOLVED = ("sat", "unsat")


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def _folder_name(verifier: str) -> str:
    """A folder name for ``verifier`` (``vnncomp:/a/b`` -> ``vnncomp_a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", verifier).strip("_") or "verifier"


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root) if root else path


def _benchmark_root(records: list[dict]) -> str:
    """The folder holding the ``onnx`` and ``vnnlib`` files of ``records`` (their common parent)."""
    paths = [os.path.dirname(os.path.abspath(r[k])) for r in records for k in ("onnx", "vnnlib")]
    return os.path.commonpath(paths) if paths else ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_vnncomp(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the VNN-COMP outputs of ``run_dir``'s records; returns {verifier: its output folder}.

    Raises ``FileNotFoundError`` without records, ``ValueError`` naming the model of a ``sat`` that can
    no longer be run (its counterexample file needs the outputs).
    """
    from vsbench.onnx_io import run_onnx
    from vsbench.verify.external import witness_text

    run_dir = Path(run_dir)
    records = latest_verdicts(read_records(run_dir / "records.jsonl"))
    if not records:
        raise FileNotFoundError(f"{run_dir}: no verdicts in records.jsonl (not a vsbench run folder)")
    out = Path(out_dir) if out_dir else run_dir / "vnncomp"
    written = {}
    for verifier in dict.fromkeys(r["verifier"] for r in records):
        rows = [r for r in records if r["verifier"] == verifier]
        root, folder = _benchmark_root(rows), out / _folder_name(verifier)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for r in rows:
            category = r.get("category") or Path(root).name
            writer.writerow([category, _relative(r["onnx"], root), _relative(r["vnnlib"], root),
                             f"{float(r.get('prepare_s') or 0.0):.4f}", r["status"], f"{float(r['time_s']):.4f}"])
            if r["status"] == "sat" and r.get("cex_checked") and r.get("cex") is not None:
                if not Path(r["onnx"]).is_file():
                    raise ValueError(f"{r['onnx']}: model of a sat is missing; its counterexample needs its outputs")
                x = np.asarray(r["cex"], dtype=np.float64)
                ce = folder / category / f"{_stem(r['onnx'])}_{_stem(r['vnnlib'])}.counterexample"
                _write(ce, witness_text(x, run_onnx(r["onnx"], x)) + "\n")
        _write(folder / "results.csv", buf.getvalue())
        solved = sorted(float(r["time_s"]) for r in rows if r["status"] in SOLVED)
        lines = ["solved,time_s,accumulated_s"]
        lines += [f"{n},{t:.4f},{a:.4f}" for n, (t, a) in enumerate(zip(solved, np.cumsum(solved)), 1)]
        _write(folder / "cactus.csv", "\n".join(lines) + "\n")
        written[verifier] = folder
    return written
