"""Run the built-in verifier over VNN-COMP 2021 benchmarks and print a table per benchmark.

    python benchmarks/verify_vnncomp.py verivital cifar10_resnet [--every 4] [--timeout 60]
        [--nets resnet_2b] [--workers 1] [--threads 1] [--benchmarks DIR] [--csv out.csv]

Benchmarks are the folders ``DIR/vnncomp2021-<name>`` (``DIR``: ``--benchmarks``, else
``$VSBENCH_BENCHMARKS``, else /work/shared/benchmarks), their instances the rows of
``reference_verdicts.csv``; ``--every K`` takes every K-th instance (evenly over the list), ``--nets``
only those networks (file stems). The instances' files are copied to a temporary folder first (tools
may write caches beside their inputs). Each instance runs in a fresh process (``--workers`` at once,
``--threads`` torch threads each; 2 or more threads: one runs clause MILPs beside BaB), so its peak
memory is that process's maximum resident set size.

Wrong = a decided verdict that contradicts the reference (``unknown`` references are never wrong);
``new`` = instances the reference marks ``unknown`` (no 2021 tool solved them) decided here. Times
are per solved instance; ``peak_MB`` is the largest over the benchmark's instances.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks"))


def _verify(job):
    import resource

    import torch

    from vsbench.spec.api import Instance
    from vsbench.verify.builtin import BuiltinVerifier

    onnx, vnnlib, timeout, threads = job
    torch.set_num_threads(threads)
    v = BuiltinVerifier().verify(Instance(Path(onnx), Path(vnnlib), timeout), timeout)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return v.status, v.time_s, v.log, peak_mb


def _instances(folder: Path, every: int, nets: list[str] | None) -> list[dict]:
    rows = list(csv.DictReader((folder / "reference_verdicts.csv").open()))
    if nets is not None:
        rows = [r for r in rows if Path(r["onnx"]).stem in nets]
    return rows[::every]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="benchmark names, e.g. mnistfc verivital cifar10_resnet")
    ap.add_argument("--benchmarks", type=Path, default=ROOT)
    ap.add_argument("--nets", nargs="*", default=None, help="network file stems; default all")
    ap.add_argument("--every", type=int, default=1, help="every K-th instance")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per instance")
    ap.add_argument("--csv", type=Path, default=None, help="write per-instance results here")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="vsbench-vnncomp-") as tmp:
        todo = []
        for name in args.names:
            src = args.benchmarks / f"vnncomp2021-{name}"
            if not (src / "reference_verdicts.csv").exists():
                ap.error(f"{src}: no reference_verdicts.csv")
            for r in _instances(src, args.every, args.nets):
                for key in ("onnx", "vnnlib"):
                    dst = Path(tmp) / name / r[key]
                    if not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src / r[key], dst)
                todo.append((name, r))
        jobs = [(str(Path(tmp) / name / r["onnx"]), str(Path(tmp) / name / r["vnnlib"]), args.timeout, args.threads)
                for name, r in todo]
        with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
            for (name, r), (status, time_s, log, peak) in zip(todo, pool.map(_verify, jobs)):
                ref = r["verdict"]
                wrong = status in ("sat", "unsat") and ref in ("sat", "unsat") and status != ref
                results.append({"benchmark": name, "onnx": r["onnx"], "vnnlib": r["vnnlib"], "status": status,
                                "ref": ref, "time_s": round(time_s, 2), "peak_mb": round(peak), "wrong": wrong,
                                "log": log})
                print(f"{name} {r['onnx']} {r['vnnlib']} {status} (ref {ref}) {time_s:.1f}s {peak:.0f}MB"
                      f"{'  WRONG' if wrong else ''}", flush=True)
    if args.csv and results:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(results[0]))
            w.writeheader()
            w.writerows(results)

    print(f"\n{'benchmark':16} {'n':>3} {'solved':>6} {'sat':>4} {'unsat':>5} {'timeout':>7} {'other':>5} "
          f"{'median_s':>8} {'mean_s':>7} {'peak_MB':>7} {'wrong':>5} {'new':>4}")
    for name in args.names:
        rs = [r for r in results if r["benchmark"] == name]
        solved = [r for r in rs if r["status"] in ("sat", "unsat")]
        count = {s: sum(r["status"] == s for r in rs) for s in ("sat", "unsat", "timeout")}
        times = [r["time_s"] for r in solved] or [float("nan")]
        print(f"{name:16} {len(rs):>3} {len(solved):>6} {count['sat']:>4} {count['unsat']:>5} "
              f"{count['timeout']:>7} {len(rs) - len(solved) - count['timeout']:>5} "
              f"{statistics.median(times):>8.2f} {statistics.mean(times):>7.2f} "
              f"{max((r['peak_mb'] for r in rs), default=0):>7} {sum(r['wrong'] for r in rs):>5} "
              f"{sum(r['ref'] == 'unknown' for r in solved):>4}")


if __name__ == "__main__":
    main()
