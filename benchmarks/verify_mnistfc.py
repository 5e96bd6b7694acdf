"""Run the built-in verifier over the VNN-COMP 2021 mnistfc benchmark and print a table per net.

    python benchmarks/verify_mnistfc.py --timeout 60 --nets mnist-net_256x2 [--workers 1] [--threads 2] [--limit N] [--csv out.csv]

In-process (no Ray): ``--workers`` processes, ``--threads`` torch threads each, one instance at a time
each. With 2 or more threads one of them runs clause MILPs beside BaB (the built-in verifier's
portfolio): on a 2-core machine, ``--workers 1 --threads 2`` gives each instance both cores, as
alpha-beta-CROWN has them; ``--workers 2 --threads 1`` runs two instances at once, BaB only.
Wrong = a decided verdict that contradicts reference_verdicts.csv (``unknown`` references are never
wrong); ``new`` = instances the reference marks ``unknown`` (no 2021 tool solved them) decided here.
Times are per solved instance.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEFAULT = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-mnistfc"


def _verify(job):
    import torch

    from vsbench.spec.api import Instance
    from vsbench.verify.builtin import BuiltinVerifier

    onnx, vnnlib, timeout, threads = job
    torch.set_num_threads(threads)
    v = BuiltinVerifier().verify(Instance(onnx, vnnlib, timeout), timeout)
    return v.status, v.time_s, v.margin, v.log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", type=Path, default=DEFAULT)
    ap.add_argument("--nets", nargs="*", default=None, help="net names (without .onnx); default all")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--limit", type=int, default=None, help="instances per net")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (2+: MILP thread beside BaB)")
    ap.add_argument("--csv", type=Path, default=None, help="write per-instance results here")
    args = ap.parse_args()

    ref_path = args.benchmarks / "reference_verdicts.csv"
    ref = {}
    if ref_path.exists():
        ref = {(r["onnx"], r["vnnlib"]): r["verdict"] for r in csv.DictReader(ref_path.open())}
    rows = [r for r in csv.reader((args.benchmarks / "mnistfc_instances.csv").open()) if r]
    by_net: dict[str, list] = {}
    for onnx, vnnlib, _ in rows:
        if args.nets is None or Path(onnx).stem in args.nets:
            by_net.setdefault(onnx, []).append(vnnlib)
    todo = [(onnx, vnnlib) for onnx, props in by_net.items() for vnnlib in props[: args.limit]]
    jobs = [(args.benchmarks / onnx, args.benchmarks / vnnlib, args.timeout, args.threads) for onnx, vnnlib in todo]

    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        for (onnx, vnnlib), (status, time_s, margin, log) in zip(todo, pool.map(_verify, jobs)):
            expected = ref.get((onnx, vnnlib), "unknown")
            wrong = status in ("sat", "unsat") and expected in ("sat", "unsat") and status != expected
            results.append(dict(net=onnx, prop=vnnlib, status=status, ref=expected, time_s=round(time_s, 2),
                                wrong=wrong, margin=margin, log=log))
            print(f"{onnx} {vnnlib} {status} (ref {expected}) {time_s:.1f}s{'  WRONG' if wrong else ''}", flush=True)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(results[0]))
            w.writeheader()
            w.writerows(results)

    print(f"\n{'net':18} {'n':>3} {'solved':>6} {'sat':>4} {'unsat':>5} {'timeout':>7} {'other':>5} "
          f"{'median_s':>8} {'mean_s':>7} {'wrong':>5} {'new':>4}")
    for onnx in by_net:
        rs = [r for r in results if r["net"] == onnx]
        solved = [r for r in rs if r["status"] in ("sat", "unsat")]
        count = lambda s: sum(r["status"] == s for r in rs)  # noqa: E731
        times = [r["time_s"] for r in solved] or [float("nan")]
        print(f"{Path(onnx).stem:18} {len(rs):>3} {len(solved):>6} {count('sat'):>4} {count('unsat'):>5} "
              f"{count('timeout'):>7} {len(rs) - len(solved) - count('timeout'):>5} "
              f"{statistics.median(times):>8.2f} {statistics.mean(times):>7.2f} {sum(r['wrong'] for r in rs):>5} "
              f"{sum(r['ref'] == 'unknown' for r in solved):>4}")


if __name__ == "__main__":
    main()
